"""Training: a short run learns (loss falls, held-out macro-F1 clearly beats chance), and the
full PFA+CMAF training step runs with the progressive contrastive loss active."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from kensa_pipeline.data.formats import load_dataset, split_indices
from kensa_pipeline.models.kensa import ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.tokenizer import load_tokenizer
from kensa_pipeline.train import TrainConfig, evaluate_model, load_images, train_model


def _setup(small_data: Path, tokenizer_path: Path, mode: str):  # type: ignore[no-untyped-def]
    ds = load_dataset(small_data)
    splits = split_indices(ds, 0)
    tok = load_tokenizer(tokenizer_path)
    spec = ModelSpec(
        vision=replace(vision_preset("tiny"), layers=1),
        text=text_preset("tiny", vocab_size=tok.get_vocab_size()),
        labels=ds.names,
        mode=mode,
    )
    return ds, splits, tok, spec, load_images(ds, spec)


def test_short_training_run_learns(small_data: Path, tokenizer_path: Path) -> None:
    # The note branch learns fastest; this checks the loop, loss, weighting and early stopping
    # bookkeeping learn something real in a few seconds of CPU.
    ds, splits, tok, spec, images = _setup(small_data, tokenizer_path, "text")
    cfg = TrainConfig(
        seed=0, epochs=20, min_epochs=20, patience=20, batch_size=16, warmup_epochs=1, augment=False
    )
    model, info = train_model(spec, images, ds, splits, tok, cfg)
    hist = info["history"]
    assert hist[-1]["train_ce"] < 0.8 * hist[0]["train_ce"], hist
    m = evaluate_model(model, images, ds, splits["test"], tok)
    # chance macro-F1 for 5 classes is about 0.2
    assert m["macro_f1"] > 0.4, m


def test_full_pfa_cmaf_step_runs(small_data: Path, tokenizer_path: Path) -> None:
    ds, splits, tok, spec, images = _setup(small_data, tokenizer_path, "cmaf")
    cfg = TrainConfig(seed=0, epochs=2, min_epochs=2, warmup_epochs=1, pfa_weight=0.2)
    model, info = train_model(spec, images, ds, splits, tok, cfg)
    for h in info["history"]:
        assert math.isfinite(h["train_ce"]) and h["train_pfa"] > 0.0
    m = evaluate_model(model, images, ds, splits["test"], tok, empty_notes=True)
    assert m["n"] == len(splits["test"])
