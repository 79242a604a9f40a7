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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TEXT_PRESETS: dict[str, TextConfig] = {
    "tiny": TextConfig(),
    # all-MiniLM-L6 shape: 6 layers, width 384, 12 heads, 1536 MLP, BERT vocab, 512 positions.
    "minilm": TextConfig(
        vocab_size=30522, max_positions=512, width=384, layers=6, heads=12, mlp_dim=1536
    ),
}


def text_preset(name: str, **overrides: Any) -> TextConfig:
    """Return a named preset (``tiny`` or ``minilm``), optionally with field overrides."""
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
