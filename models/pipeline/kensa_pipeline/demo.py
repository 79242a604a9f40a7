"""Builds the shipped demo model folder (``models/demo``) end to end.

generate synthetic data -> train tokenizer -> train the ablation variants -> export the full
PFA+CMAF model -> fixtures -> model card; written to a temp folder, then moved into place.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kensa_pipeline import __version__
from kensa_pipeline.data.formats import load_dataset, split_indices
from kensa_pipeline.data.generator import GenConfig, generate
from kensa_pipeline.export import export_model_folder, git_commit, parity
from kensa_pipeline.fixtures import write_fixtures
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

# Notes of the synthetic data run to ~55 BERT tokens; 96 leaves room for long remarks.
PRETRAINED_MAX_TOKENS = 96

DESCRIPTION = (
    "Demo AOI defect classifier (pretrained EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 "
    "note tower, both frozen; PFA + CMAF head) trained on the synthetic ASE-like via dataset. "
    "For integration tests and demos, not for production."
)
TINY_DESCRIPTION = (
    "Tiny test-fixture model (tiny ViT + tiny BERT from scratch, PFA + CMAF) on synthetic "
    "ASE-like vias. For fast tests only."
)


def replace_folder(tmp: Path, dst: Path) -> None:
    """Move ``tmp`` to ``dst`` replacing any old content (rename-based, near atomic)."""
    dst = dst.resolve()
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    tmp.chmod(0o755)
    tmp.rename(dst)
    if old.exists():
        shutil.rmtree(old)


def build_demo(
    out: Path,
    data_dir: Path,
    seed: int = 0,
    scale: float = 3.0,
    untrained: bool = False,
    train_kwargs: dict[str, Any] | None = None,
    command: str | None = None,
    tiny: bool = False,
    cache: Path = Path(".cache"),
    target_missed: float = 0.01,
    anomaly_bank: int = 0,
) -> dict[str, Any]:
    """Build a model folder: the pretrained demo (default) or the tiny test fixture.
    ``anomaly_bank`` > 0: the ``efficientnet-lite0-mid`` tower and heads with an anomaly
    bank of that many normal patches (kensa_pipeline.anomaly)."""
    if tiny or untrained:
        return build_tiny(out, data_dir, seed, scale, untrained, train_kwargs, command)
    from kensa_pipeline.evaluate import evaluate_folder, model_card
    from kensa_pipeline.features import extract_features
    from kensa_pipeline.frozen import (
        LOCALIZED,
        attach_towers,
        pretrained_provenance,
        run_frozen,
        towers_for,
    )
    from kensa_pipeline.heatmap import save_overlays
    from kensa_pipeline.models.efficientnet import LITE_MEAN, LITE_STD
    from kensa_pipeline.models.text import minilm_tokenizer_path
    from kensa_pipeline.train import VARIANTS, TrainConfig

    t0 = time.time()
    torch.manual_seed(seed)
    gen = GenConfig(seed=seed, scale=scale)
    if not (data_dir / "data.jsonl").exists():
        generate(data_dir, gen)
    ds = load_dataset(data_dir)
    splits = split_indices(ds, seed)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.resolve().parent))
    work = Path(tempfile.mkdtemp(prefix="kensa-demo-work-"))
    save_tokenizer(load_tokenizer(minilm_tokenizer_path()), work / "tokenizer.json")
    labels = [
        {"name": lab.name, "display_name": lab.display_name, "is_normal": lab.is_normal}
        for lab in ds.labels
    ]
    spec = ModelSpec(
        vision=vision_preset("efficientnet-lite0-mid" if anomaly_bank else "efficientnet-lite0"),
        text=text_preset("minilm-l6"),
        labels=ds.names,
        normal_label=ds.labels[ds.normal_index].name,
        image_mean=[LITE_MEAN],
        image_std=[LITE_STD],
        max_tokens=PRETRAINED_MAX_TOKENS,
        anomaly_bank=anomaly_bank,
    )
    towers = towers_for(replace(spec, anomaly_bank=0), cache)
    feats = extract_features(
        ds,
        towers,
        {
            "height": 224,
            "width": 224,
            "channels": 1,
            "mean": spec.image_mean,
            "std": spec.image_std,
        },
        work / "tokenizer.json",
        spec.max_tokens,
        cache_dir=cache / "features",
        threads=torch.get_num_threads(),
    )
    cfg = TrainConfig(seed=seed, **(train_kwargs or {}))
    res = run_frozen(ds, splits, spec, cfg, feats, VARIANTS, target_missed, work / "runs")
    model = res["model"]
    loc = {k: v["localized"]["hit"] for k, v in res["pointing"].items()}
    # the map that localizes best in the pointing game (ties: CAM, then CMAF, then anomaly)
    order = ["attention_cam", "attention_cmaf", "attention_anomaly"]
    best_key = max(
        (k for k in order if k in loc),
        key=lambda k: (loc[k], -order.index(k)),
        default="attention_cam",
    )
    best_map = best_key.removeprefix("attention_")
    model.spec = replace(model.spec, attention_map=best_map)
    model.head.attention_map = best_map
    attach_towers(model)
    provenance = {
        "dataset": f"synthetic-ase-vias (kensa_pipeline.data.generator, seed={seed}, scale={scale})",
        "seed": seed,
        "git_commit": git_commit(),
        "command": command or " ".join(sys.argv),
        "pipeline_version": __version__,
        "pretrained": pretrained_provenance(spec),
    }
    metrics = dict(res["metrics"])
    metrics["decision_test"] = res["held_out"]
    export_model_folder(
        model,
        work / "tokenizer.json",
        tmp,
        name="kensa-demo",
        description=DESCRIPTION,
        labels=labels,
        metrics=metrics,
        provenance=provenance,
        towers=towers,
        decision=res["decision"],
        validation_distribution=res["validation_distribution"],
    )
    result: dict[str, Any] = {
        "ablations": res["table"],
        "ablation_markdown": res["markdown"],
        "decision": res["decision"],
        "held_out": res["held_out"],
        "held_out_empty_notes": res["held_out_empty_notes"],
        "pointing": res["pointing"],
        "attention_map": best_map,
        "localized_classes": list(LOCALIZED),
    }
    result["parity"] = parity(model, tmp)
    te = splits["test"]
    shipped = evaluate_folder(tmp, data_dir, split="test", indices=te)
    shipped_empty = evaluate_folder(tmp, data_dir, split="test", indices=te, empty_notes=True)
    result["shipped"] = {"full": shipped, "notes_emptied": shipped_empty}
    write_fixtures(tmp, [ds.samples[i] for i in te])
    (tmp / "fixtures" / "parity.json").write_text(json.dumps(result["parity"], indent=2) + "\n")
    result["overlays"] = save_overlays(tmp, ds, te, res["test_outputs"], best_map, tmp / "card")
    result["seconds"] = time.time() - t0
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    result["folder_bytes"] = size
    (tmp / "MODEL_CARD.md").write_text(
        model_card(result, res["metrics"], gen, result["seconds"], torch.get_num_threads())
    )
    replace_folder(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return result


def build_tiny(
    out: Path,
    data_dir: Path,
    seed: int = 0,
    scale: float = 3.0,
    untrained: bool = False,
    train_kwargs: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """The tiny from-scratch model (test fixture): the pipeline of model v1."""
    t0 = time.time()
    torch.manual_seed(seed)
    gen = GenConfig(seed=seed, scale=scale)
    if not (data_dir / "data.jsonl").exists():
        generate(data_dir, gen)
    ds = load_dataset(data_dir)
    splits = split_indices(ds, seed)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.resolve().parent))
    work = Path(tempfile.mkdtemp(prefix="kensa-demo-work-"))
    tok = train_tokenizer([ds.samples[i].note for i in splits["train"]])
    save_tokenizer(tok, work / "tokenizer.json")
    labels = [
        {"name": lab.name, "display_name": lab.display_name, "is_normal": lab.is_normal}
        for lab in ds.labels
    ]
    spec = ModelSpec(
        vision=vision_preset("tiny"),
        text=text_preset("tiny", vocab_size=tok.get_vocab_size()),
        labels=ds.names,
        normal_label=ds.labels[ds.normal_index].name,
    )
    result: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    if untrained:
        model = KensaModel(spec).eval()
    else:
        from kensa_pipeline.train import TrainConfig, run_ablations

        cfg = TrainConfig(seed=seed, **(train_kwargs or {}))
        abl = run_ablations(ds, splits, spec, work / "tokenizer.json", cfg, work / "runs")
        model = abl["model"]
        metrics = abl["metrics"]
        result["ablations"] = abl["table"]
    export_model_folder(
        model,
        work / "tokenizer.json",
        tmp,
        name="kensa-tiny",
        description=TINY_DESCRIPTION
        + (" UNTRAINED (random weights) contract preview." if untrained else ""),
        labels=labels,
        metrics=metrics,
        provenance={
            "dataset": f"synthetic-ase-vias (kensa_pipeline.data.generator, seed={seed}, scale={scale})",
            "seed": seed,
            "git_commit": git_commit(),
            "command": command or " ".join(sys.argv),
            "pipeline_version": __version__,
        },
    )
    result["parity"] = parity(model, tmp)
    write_fixtures(tmp, [ds.samples[i] for i in splits["test"]])
    (tmp / "fixtures" / "parity.json").write_text(json.dumps(result["parity"], indent=2) + "\n")
    result["seconds"] = time.time() - t0
    replace_folder(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return result
