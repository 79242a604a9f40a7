"""The full classifier: vision encoder + text encoder + PFA/CMAF head, with save/load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kensa_pipeline.models.cmaf import CmafHead
from kensa_pipeline.models.text import TextConfig, TextEncoder
from kensa_pipeline.models.vision import VisionConfig, VisionEncoder


@dataclass
class ModelSpec:
    """Everything needed to rebuild a :class:`KensaModel` (stored next to the weights)."""

    vision: VisionConfig
    text: TextConfig
    labels: list[str]
    normal_label: str = "normal"
    head_dim: int = 128
    head_heads: int = 4
    mode: str = "cmaf"
    dropout: float = 0.1
    image_mean: list[float] = field(default_factory=lambda: [0.5])
    image_std: list[float] = field(default_factory=lambda: [0.25])
    max_tokens: int = 64

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["text"] = TextConfig(**d["text"])
        return ModelSpec(**d)


class KensaModel(nn.Module):
    """Image + note defect classifier (see :mod:`kensa_pipeline.models.cmaf`)."""

    def __init__(
        self, spec: ModelSpec, vision: VisionEncoder | None = None, seed: int | None = None
    ) -> None:
        """``seed`` seeds each component separately, so variants that share a component
        (e.g. image-only and CMAF share vision + projection + classifier) start identical."""
        super().__init__()
        self.spec = spec
        if seed is not None:
            torch.manual_seed(seed)
        self.vision = vision if vision is not None else VisionEncoder(spec.vision)
        if seed is not None:
            torch.manual_seed(seed + 1)
        self.text = TextEncoder(spec.text)
        if seed is not None:
            torch.manual_seed(seed + 2)
        g = spec.vision.grid
        self.head = CmafHead(
            vision_width=spec.vision.width,
            text_width=spec.text.width,
            num_classes=len(spec.labels),
            grid=(g, g),
            dim=spec.head_dim,
            heads=spec.head_heads,
            mode=spec.mode,
            dropout=spec.dropout,
        )

    def forward_features(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> dict[str, Tensor]:
        patch_tokens, pooled = self.vision(pixel_values)
        if self.spec.mode == "image":
            # The text encoder does not influence an image-only head; skip its cost.
            b = input_ids.shape[0]
            token_states = pooled.new_zeros(b, input_ids.shape[1], self.spec.text.width)
        else:
            token_states = self.text(input_ids, attention_mask)
        return self.head.forward_features(patch_tokens, pooled, token_states, attention_mask)

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        f = self.forward_features(pixel_values, input_ids, attention_mask)
        return f["logits"], f["attention"]

    def save(self, path: str | Path) -> None:
        """Write ``model.pt`` (state dict) and ``spec.json`` into directory ``path``."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), p / "model.pt")
        (p / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=2))

    @staticmethod
    def load(path: str | Path) -> KensaModel:
        p = Path(path)
        spec = ModelSpec.from_dict(json.loads((p / "spec.json").read_text()))
        model = KensaModel(spec)
        model.load_state_dict(torch.load(p / "model.pt", map_location="cpu", weights_only=True))
        model.eval()
        return model
