"""Training: a short run learns (loss falls, held-out macro-F1 clearly beats chance), the
full PFA+CMAF training step runs with the progressive contrastive loss active, and stage 2
starts from (and keeps) the stage-1 encoders."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kensa_pipeline.data.formats import load_dataset, split_indices
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.tokenizer import load_tokenizer
from kensa_pipeline.train import (
    TrainConfig,
    evaluate_model,
    fusion_config,
    fusion_init,
    load_images,
    predict,
    train_model,
)


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


def test_fusion_starts_as_the_image_only_model(small_data: Path, tokenizer_path: Path) -> None:
    # Stage 2 starts a CMAF model from the stage-1 models; before any fusion training it must
    # give the image-only model's logits whatever the note says (the note residual is zero).
    ds, splits, tok, image_spec, images = _setup(small_data, tokenizer_path, "image")
    text_spec = replace(image_spec, mode="text")
    cfg = TrainConfig(seed=0, epochs=1, min_epochs=1, warmup_epochs=1)
    image_model, _ = train_model(image_spec, images, ds, splits, tok, cfg)
    text_model, _ = train_model(text_spec, images, ds, splits, tok, cfg)
    cmaf_spec = replace(image_spec, mode="cmaf")
    fused = KensaModel(cmaf_spec, seed=3)
    fused.load_state_dict(fusion_init(image_model, text_model, "cmaf"), strict=False)
    fused.eval()
    idx = splits["test"][:6]
    notes = [ds.samples[int(i)].note for i in idx]
    got = predict(fused, images[idx], notes, tok)
    want = predict(image_model, images[idx], notes, tok)
    assert np.abs(got - want).max() < 1e-5
    # ...and the frozen stage-2 run leaves both encoders exactly as stage 1 trained them.
    init = fusion_init(image_model, text_model, "cmaf")
    trained, _ = train_model(
        cmaf_spec, images, ds, splits, tok, fusion_config(cfg, pfa=True), init=init
    )
    for name, value in trained.state_dict().items():
        if name.startswith(("vision.", "text.")):
            assert torch.equal(value, init[name]), name


def test_balanced_sampler_trains(small_data: Path, tokenizer_path: Path) -> None:
    ds, splits, tok, spec, images = _setup(small_data, tokenizer_path, "text")
    cfg = TrainConfig(
        seed=0,
        epochs=12,
        min_epochs=12,
        batch_size=16,
        warmup_epochs=1,
        augment=False,
        balance="sampler",
    )
    model, info = train_model(spec, images, ds, splits, tok, cfg)
    assert info["history"][-1]["train_ce"] < 0.8 * info["history"][0]["train_ce"]
    assert evaluate_model(model, images, ds, splits["test"], tok)["macro_f1"] > 0.4


def test_train_command_runs_both_stages_and_exports(small_data: Path, tmp_path: Path) -> None:
    # `train --mode cmaf` trains the stage-1 models first and reports them next to the fused
    # model; `export` then writes a valid model folder carrying the fused model's metrics.
    from kensa_pipeline.cli import build_parser
    from kensa_pipeline.manifest import validate_folder

    def run_command(argv: list[str]) -> int:
        # The parsed command itself, without main()'s thread setup (torch allows that once).
        a = build_parser().parse_args(argv)
        return int(a.func(a))

    run, model = tmp_path / "run", tmp_path / "model"
    args = ["train", "--data", str(small_data), "--out", str(run), "--mode", "cmaf"]
    args += ["--epochs", "2", "--min-epochs", "1", "--fusion-epochs", "2"]
    assert run_command(args) == 0
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["model"] == "PFA+CMAF"
    assert [r["variant"] for r in summary["rows"]] == [
        "image-only",
        "text-only",
        "PFA+CMAF",
        "PFA+CMAF, notes emptied",
    ]
    assert run_command(["export", "--run", str(run), "--out", str(model)]) == 0
    manifest = validate_folder(model)
    assert manifest["metrics"]["macro_f1"] == summary["rows"][2]["macro_f1"]
