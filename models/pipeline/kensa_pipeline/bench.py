"""Model folders with random weights for the service's benchmarks (e.g. vit-b16 + minilm)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from kensa_pipeline import __version__
from kensa_pipeline.data.formats import load_dataset
from kensa_pipeline.data.generator import CLASSES, DISPLAY, GenConfig, generate
from kensa_pipeline.export import export_model_folder, git_commit, parity
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.tokenizer import save_tokenizer, train_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def export_random(
    vision: str, text: str, out: Path, seed: int = 0, command: str = "", check: bool = True
) -> Path:
    """Export ``vision``/``text`` presets with seeded random weights into ``out``."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "d", GenConfig(seed=seed, scale=0.1))
        ds = load_dataset(Path(tmp) / "d")
        tok = train_tokenizer([s.note for s in ds.samples])
        save_tokenizer(tok, Path(tmp) / "tokenizer.json")
        vcfg = vision_preset(vision)
        tcfg = text_preset(text)
        if text == "tiny":
            tcfg = text_preset(text, vocab_size=tok.get_vocab_size())
        rgb = vcfg.channels == 3
        spec = ModelSpec(
            vision=vcfg,
            text=tcfg,
            labels=list(CLASSES),
            head_dim=256 if rgb else 128,
            head_heads=8 if rgb else 4,
            image_mean=CLIP_MEAN if rgb else [0.5],
            image_std=CLIP_STD if rgb else [0.25],
            max_tokens=64,
        )
        model = KensaModel(spec).eval()
        export_model_folder(
            model,
            Path(tmp) / "tokenizer.json",
            out,
            name=f"kensa-random-{vision}-{text}",
            description=f"RANDOM WEIGHTS ({vision} + {text}) for benchmarks only.",
            labels=[
                {"name": c, "display_name": DISPLAY[c], "is_normal": c == "normal"} for c in CLASSES
            ],
            metrics={},
            provenance={
                "dataset": "none (random weights)",
                "seed": seed,
                "git_commit": git_commit(),
                "command": command,
                "pipeline_version": __version__,
            },
        )
        if check:
            res = parity(model, out, batch_sizes=(1, 2))
            worst = max(res.values())
            if worst > 1e-3:
                raise RuntimeError(f"parity check failed: {res}")
            print(f"parity (max abs diff): {res}")
    return out
