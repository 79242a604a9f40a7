"""CMAF: cross-modality attention fusion, plus the classifier (the exported ``head``).

Head inputs are exactly the encoder outputs (``patch_tokens``, ``pooled``, ``token_states``,
``attention_mask``) so the service can run vision/text/head as three graphs.

Blocks, in order:

1. **PFA projection** (:class:`~kensa_pipeline.models.pfa.PfaProjection`) of image tokens,
   pooled image vector and note tokens into the shared space (width Dp).
2. **Text -> image cross-attention**: every note token queries the image patches. Its
   attention weights [B, heads, T, N] give the attention map: averaged over heads and over the
   valid note tokens it is a distribution over patches (sums to 1), reshaped to [B, Hp, Wp].
   The attended patch content is added to the note tokens (residual + LayerNorm) and
   mean-pooled over valid tokens -> ``t2i`` vector.
3. **Image -> text cross-attention**: every patch queries the note tokens (padding masked
   out); residual + LayerNorm, mean over patches -> ``i2t`` vector.
4. **Gate**: g = sigmoid(MLP([img, note, has_content])) in (0, 1), times ``has_content``
   (0 when the note has no token besides [CLS]/[SEP]). It scales the fused vector, so the
   model can turn down an uninformative note and ignores an empty one completely.
5. **Fusion + classifier**: ``feats = img + g * W [t2i, i2t, note]`` (a gated residual on the
   image vector), MLP -> logits [B, C]. With an empty note g = 0 and the head computes
   exactly what the image-only head computes, so an empty note falls back to the image path.

Ablation modes reuse the same head: ``image`` (classifier on the image vector only), ``text``
(note vector only), ``concat`` ([img, note] concatenated, no cross-attention) and ``cmaf``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kensa_pipeline.anomaly import AnomalyScore
from kensa_pipeline.models.pfa import PfaProjection, masked_mean
from kensa_pipeline.models.text import MASK_NEG

FUSION_MODES = ("image", "text", "concat", "cmaf")
ATTENTION_MAPS = ("cmaf", "cam", "anomaly")


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``context`` tokens; returns the weights."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, query: Tensor, context: Tensor, context_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        b, tq, d = query.shape
        tk = context.shape[1]
        hd = d // self.heads
        q = self.q_proj(query).view(b, tq, self.heads, hd).transpose(1, 2)
        k = self.k_proj(context).view(b, tk, self.heads, hd).transpose(1, 2)
        v = self.v_proj(context).view(b, tk, self.heads, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
        if context_bias is not None:
            scores = scores + context_bias
        weights = torch.softmax(scores, dim=-1)  # [B, H, Tq, Tk]
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, tq, d)
        return self.out_proj(out), weights


class CmafHead(nn.Module):
    """PFA projections + CMAF + classifier: the graph exported as ``head.onnx``."""

    normal_onehot: Tensor

    def __init__(
        self,
        vision_width: int,
        text_width: int,
        num_classes: int,
        grid: tuple[int, int],
        dim: int = 128,
        heads: int = 4,
        mode: str = "cmaf",
        dropout: float = 0.1,
        normal_index: int = 0,
        attention_map: str = "cmaf",
        anomaly_bank: int = 0,
        anomaly_dim: int = 0,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"mode must be one of {FUSION_MODES}")
        if attention_map not in ATTENTION_MAPS:
            raise ValueError(f"attention_map must be one of {ATTENTION_MAPS}")
        if attention_map == "anomaly" and anomaly_bank < 1:
            raise ValueError('attention_map "anomaly" needs an anomaly bank')
        self.mode = mode
        self.grid = grid
        self.normal_index = normal_index
        self.attention_map = attention_map
        # Linear patch classifier for the class activation map (trained by an auxiliary loss
        # on its mean over patches; being linear, its per-patch scores are an exact CAM).
        self.cam = nn.Linear(dim, num_classes)
        onehot = torch.zeros(num_classes)
        onehot[normal_index] = 1.0
        self.register_buffer("normal_onehot", onehot, persistent=False)
        self.proj = PfaProjection(vision_width, text_width, dim)
        self.t2i = CrossAttention(dim, heads)
        self.t2i_norm = nn.LayerNorm(dim)
        self.i2t = CrossAttention(dim, heads)
        self.i2t_norm = nn.LayerNorm(dim)
        self.gate = nn.Sequential(nn.Linear(2 * dim + 1, dim), nn.GELU(), nn.Linear(dim, 1))
        n_in = {"image": 1, "text": 1, "concat": 2, "cmaf": 1}[mode] * dim
        self.classifier = nn.Sequential(
            nn.LayerNorm(n_in),
            nn.Dropout(dropout),
            nn.Linear(n_in, dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim, num_classes),
        )
        # CMAF fusion residual: [t2i, i2t, note] -> one vector added (gated) to the image vector.
        # It starts at zero, so a fusion model started from an image-only model computes
        # exactly that model until the note contribution is learned.
        self.fuse = nn.Linear(3 * dim, dim)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)
        # Anomaly score against a bank of normal mid-level patches (kensa_pipeline.anomaly),
        # added to the image vector; off (None) unless the spec asks for a bank.
        self.anomaly: AnomalyScore | None = (
            AnomalyScore(anomaly_bank, anomaly_dim, dim) if anomaly_bank > 0 else None
        )

    def forward_features(
        self,
        patch_tokens: Tensor,
        pooled: Tensor,
        token_states: Tensor,
        attention_mask: Tensor,
        anomaly: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """All intermediate values (used by training for the PFA loss and diagnostics).

        ``anomaly``: precomputed (summary, per-patch distances) of the anomaly module
        (training: a training normal's own group left out of the bank, see
        kensa_pipeline.anomaly); None computes them against the bank (export, service)."""
        b, n, _ = patch_tokens.shape
        img_vec = self.proj.image(pooled)  # [B, Dp]
        out: dict[str, Tensor] = {}
        if self.anomaly is not None:
            summary, dist = anomaly if anomaly is not None else self.anomaly(patch_tokens)
            img_vec = img_vec + self.anomaly.vector(summary)
            out["anomaly_summary"] = summary
            out["anomaly_map"] = self.anomaly.heat_map(dist).reshape(b, *self.grid)
        out["img_vec"] = img_vec
        img_tok = self.proj.image(patch_tokens)  # [B, N, Dp]
        cam_scores = self.cam(img_tok)  # [B, N, C]: per-patch logits of the linear classifier
        out["cam_logits"] = cam_scores.mean(dim=1)
        if self.mode == "image":
            feats = img_vec
            attn = torch.full((b, n), 1.0 / n, dtype=pooled.dtype, device=pooled.device)
        else:
            mask_f = attention_mask.to(token_states.dtype)  # [B, T]
            txt_tok = self.proj.text(token_states)  # [B, T, Dp]
            txt_vec = masked_mean(txt_tok, attention_mask)  # [B, Dp]
            out["txt_vec"] = txt_vec
            # A note is "empty" when it has nothing besides [CLS] and [SEP].
            has_content = (mask_f.sum(dim=1, keepdim=True) > 2.5).to(token_states.dtype)
            out["has_content"] = has_content
            if self.mode == "text":
                feats = txt_vec
                attn = torch.full((b, n), 1.0 / n, dtype=pooled.dtype, device=pooled.device)
            elif self.mode == "concat":
                feats = torch.cat([img_vec, txt_vec], dim=-1)
                attn = torch.full((b, n), 1.0 / n, dtype=pooled.dtype, device=pooled.device)
            else:
                # (2) note tokens query the image patches.
                t2i_out, w = self.t2i(txt_tok, img_tok)  # w: [B, H, T, N]
                t2i_vec = masked_mean(self.t2i_norm(txt_tok + t2i_out), attention_mask)
                w_tok = w.mean(dim=1)  # [B, T, N] (average over heads)
                attn = (w_tok * mask_f.unsqueeze(-1)).sum(dim=1) / mask_f.sum(
                    dim=1, keepdim=True
                ).clamp(min=1.0)
                # (3) image patches query the note tokens; padding keys masked out.
                bias = (1.0 - mask_f)[:, None, None, :] * MASK_NEG
                i2t_out, _ = self.i2t(img_tok, txt_tok, bias)
                i2t_vec = self.i2t_norm(img_tok + i2t_out).mean(dim=1)
                # (4) gate: learned, and forced to 0 for an empty note.
                g = torch.sigmoid(self.gate(torch.cat([img_vec, txt_vec, has_content], dim=-1)))
                g = g * has_content
                out["gate"] = g
                fused = self.fuse(torch.cat([t2i_vec, i2t_vec, txt_vec], dim=-1))
                feats = img_vec + g * fused
        out["features"] = feats
        logits = self.classifier(feats)
        out["logits"] = logits
        cmaf_map = attn.reshape(b, self.grid[0], self.grid[1])
        cam_map = self.class_activation_map(cam_scores, logits).reshape(b, *self.grid)
        out["attention_cmaf"] = cmaf_map
        out["attention_cam"] = cam_map
        if self.attention_map == "anomaly":
            out["attention"] = out["anomaly_map"]
        else:
            out["attention"] = cam_map if self.attention_map == "cam" else cmaf_map
        return out

    def class_activation_map(self, cam_scores: Tensor, logits: Tensor) -> Tensor:
        """Where the evidence for the most likely defect class lies: per patch n,
        relu(s[n, c] - s[n, normal]) with c the defect class of highest logit (the class a
        fail would name, also for a unit that passes), normalised to sum to 1 (uniform when
        no patch carries evidence). ``cam_scores`` [B, N, C], ``logits`` [B, C] -> [B, N]."""
        c = logits.shape[1]
        is_normal = self.normal_onehot.to(logits.dtype)
        masked = logits - is_normal * 1e9
        top = torch.nn.functional.one_hot(masked.argmax(dim=1), c).to(cam_scores.dtype)
        sel = (top - is_normal).unsqueeze(1)  # [B, 1, C]: +1 defect class, -1 normal
        m = torch.relu((cam_scores * sel).sum(dim=-1))  # [B, N]
        eps = 1e-6
        n = m.shape[1]
        return (m + eps / n) / (m.sum(dim=1, keepdim=True) + eps)

    def forward(
        self, patch_tokens: Tensor, pooled: Tensor, token_states: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        f = self.forward_features(patch_tokens, pooled, token_states, attention_mask)
        return f["logits"], f["attention"]
