"""k-fold cross-validation with frozen pretrained towers: ``python -m kensa_pipeline cv``.

Folds are group-aware and stratified (no group on both sides) when the dataset has groups,
or with ``random=True`` plain stratified folds that ignore groups (for comparison only).
In each fold the other folds are split again, group-aware, into train and validation (one
fifth); validation drives early stopping, the temperature and the operating point; the
held-out fold is scored. Variants: ``probe`` (logistic regression on pooled features),
image-only, and the fused PFA+CMAF model with its notes emptied (and with its notes, when
the data has any); with ``cfg.finetune_blocks`` also the image-only model whose tower's last
blocks and head conv train with the head (same folds, same splits; see
:mod:`kensa_pipeline.train_heads`). With ``anomaly_bank`` > 0 also, on the mid-level tower
(``efficientnet-lite0-mid``), the probe on the pooled features plus the anomaly summary and
the image-only head with the anomaly module (:mod:`kensa_pipeline.anomaly`; bank built per
fold from the training split's normals only). Figures: mean ± sd over folds.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kensa_pipeline.anomaly import anomaly_data
from kensa_pipeline.data.formats import Dataset, grouped_stratified_folds, load_dataset
from kensa_pipeline.decision import build_decision, held_out_report
from kensa_pipeline.evaluate import compute_metrics
from kensa_pipeline.features import extract_features, extract_maps
from kensa_pipeline.frozen import towers_for
from kensa_pipeline.models.kensa import ModelSpec
from kensa_pipeline.train_heads import fit_probe, head_outputs, probe_logits, train_head


def _plain_folds(ds: Dataset, k: int, seed: int, rows: np.ndarray) -> list[np.ndarray]:
    y = ds.targets()
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in range(len(ds.labels)):
        idx = rows[y[rows] == c].copy()
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f), dtype=np.int64) for f in folds]


def run_cv(
    data: Path,
    normal: str,
    classes: list[str] | None,
    group_rule: str | None,
    folds: int,
    seed: int,
    random: bool,
    cfg: Any,
    target_missed: float,
    cache: Path,
    out: Path | None = None,
    log: Any = sys.stderr,
    image_size: int = 224,
    with_fused: bool = True,
    anomaly_bank: int = 0,
) -> dict[str, Any]:
    from kensa_pipeline.demo import PRETRAINED_MAX_TOKENS
    from kensa_pipeline.models.efficientnet import LITE_MEAN, LITE_STD, MID_WIDTH, tuned_start
    from kensa_pipeline.models.text import minilm_tokenizer_path, text_preset
    from kensa_pipeline.models.vision import vision_preset
    from kensa_pipeline.train import fusion_config, fusion_init

    t_start = time.time()
    ds = load_dataset(data, normal, classes=classes, group_rule=group_rule)
    spec = ModelSpec(
        vision=vision_preset("efficientnet-lite0", image_size=image_size),
        text=text_preset("minilm-l6"),
        labels=ds.names,
        normal_label=ds.labels[ds.normal_index].name,
        image_mean=[LITE_MEAN],
        image_std=[LITE_STD],
        max_tokens=PRETRAINED_MAX_TOKENS,
    )
    towers = towers_for(spec, cache)
    image: dict[str, Any] = {"height": image_size, "width": image_size, "channels": 1}
    image |= {"mean": spec.image_mean, "std": spec.image_std}
    feats = extract_features(
        ds,
        towers,
        image,
        minilm_tokenizer_path(),
        spec.max_tokens,
        cache / "features",
        threads=torch.get_num_threads(),
    )
    mid_spec = None
    mid_feats = None
    if anomaly_bank > 0:
        # The mid-level tower (efficientnet-lite0-mid): its own exported graph and features.
        mid_spec = replace(
            spec,
            vision=vision_preset("efficientnet-lite0-mid", image_size=image_size),
            anomaly_bank=anomaly_bank,
        )
        mid_feats = extract_features(
            ds,
            towers_for(replace(mid_spec, anomaly_bank=0), cache),
            image,
            minilm_tokenizer_path(),
            spec.max_tokens,
            cache / "features",
            threads=torch.get_num_threads(),
        )
    maps = None
    if cfg.finetune_blocks > 0:
        maps = extract_maps(ds, image, tuned_start(cfg.finetune_blocks), cache / "features")
    y = ds.targets()
    names, ni = ds.names, ds.normal_index
    has_notes = any(s.note for s in ds.samples)
    grouped = not random and any(s.group for s in ds.samples)
    all_rows = np.arange(len(ds.samples))
    fold_rows = (
        grouped_stratified_folds(ds, folds, seed)
        if grouped
        else _plain_folds(ds, folds, seed, all_rows)
    )
    results: dict[str, list[dict[str, Any]]] = {}

    def add(
        name: str, logits_te: np.ndarray, te: np.ndarray, val_logits: np.ndarray, va: np.ndarray
    ) -> None:
        m = compute_metrics(y[te], logits_te.argmax(1), names, ni)
        dec = build_decision(val_logits, y[va], ni, target_missed, "val")
        m["decision"] = held_out_report(dec, logits_te, y[te], ni)
        m["decision"]["pass_threshold"] = dec["pass_threshold"]
        m["decision"]["fail_threshold"] = dec["fail_threshold"]
        results.setdefault(name, []).append(m)

    for k in range(folds):
        te = fold_rows[k]
        rest = np.setdiff1d(all_rows, te)
        inner = (
            grouped_stratified_folds(ds, 5, seed + 100 + k, rest)
            if grouped
            else _plain_folds(ds, 5, seed + 100 + k, rest)
        )
        va = inner[0]
        tr = np.setdiff1d(rest, va)
        splits = {"train": tr, "val": va, "test": te}
        if grouped:
            g = ds.groups()
            assert not ({g[i] for i in te} & {g[i] for i in rest}), "a group on both sides"
        pooled = feats.pooled.numpy()
        fit = fit_probe(pooled, y, len(names), tr)
        add(
            "probe (logistic regression, pooled)",
            probe_logits(pooled[te], fit),
            te,
            probe_logits(pooled[va], fit),
            va,
        )
        img, _ = train_head(
            replace(spec, mode="image"), feats, y, splits, replace(cfg, pfa_weight=0.0)
        )
        add(
            "image-only",
            head_outputs(img, feats, te)["logits"],
            te,
            head_outputs(img, feats, va)["logits"],
            va,
        )
        if maps is not None:
            ft, _ = train_head(
                replace(spec, mode="image"),
                feats,
                y,
                splits,
                replace(cfg, pfa_weight=0.0),
                maps=maps,
            )
            add(
                finetuned_name(cfg.finetune_blocks),
                head_outputs(ft, feats, te, maps=maps)["logits"],
                te,
                head_outputs(ft, feats, va, maps=maps)["logits"],
                va,
            )
        if mid_spec is not None and mid_feats is not None:
            trn = tr[y[tr] == ni]
            ad = anomaly_data(
                mid_feats.patch, ds.groups(), trn, tr, MID_WIDTH, anomaly_bank, seed + k
            )
            px = np.concatenate([pooled, ad.summary.numpy()], axis=1)
            fit = fit_probe(px, y, len(names), tr)
            add(
                "probe + anomaly summary",
                probe_logits(px[te], fit),
                te,
                probe_logits(px[va], fit),
                va,
            )
            am, _ = train_head(
                replace(mid_spec, mode="image"),
                mid_feats,
                y,
                splits,
                replace(cfg, pfa_weight=0.0),
                anomaly=ad,
            )
            add(
                ANOMALY_VARIANT,
                head_outputs(am, mid_feats, te, anomaly=ad)["logits"],
                te,
                head_outputs(am, mid_feats, va, anomaly=ad)["logits"],
                va,
            )
        if not with_fused:
            _log_fold(log, k, folds, te, va, tr, results)
            continue
        txt, _ = train_head(
            replace(spec, mode="text"), feats, y, splits, replace(cfg, pfa_weight=0.0)
        )
        fcfg = fusion_config(cfg, pfa=True)
        fused, _ = train_head(
            replace(spec, mode="cmaf"), feats, y, splits, fcfg, init=fusion_init(img, txt, "cmaf")
        )
        add(
            "PFA+CMAF, notes emptied",
            head_outputs(fused, feats, te, empty_notes=True)["logits"],
            te,
            head_outputs(fused, feats, va, empty_notes=True)["logits"],
            va,
        )
        if has_notes:
            add(
                "PFA+CMAF",
                head_outputs(fused, feats, te)["logits"],
                te,
                head_outputs(fused, feats, va)["logits"],
                va,
            )
        _log_fold(log, k, folds, te, va, tr, results)
    summary = {
        "data": str(data),
        "folds": folds,
        "grouped": grouped,
        "n": len(ds.samples),
        "groups": len(set(ds.groups())),
        "target_missed_defect_rate": target_missed,
        "image_size": image_size,
        "config": asdict(cfg),
        "seconds": round(time.time() - t_start),
        "variants": {n: _aggregate(v) for n, v in results.items()},
        "per_fold": results,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "cv.json").write_text(json.dumps(summary, indent=2))
        (out / "cv.md").write_text(cv_markdown(summary) + "\n")
    return summary


def _log_fold(
    log: Any,
    k: int,
    folds: int,
    te: np.ndarray,
    va: np.ndarray,
    tr: np.ndarray,
    results: dict[str, list[dict[str, Any]]],
) -> None:
    if log is not None:
        line = ", ".join(f"{n} {v[-1]['macro_f1']:.3f}" for n, v in results.items())
        print(
            f"fold {k + 1}/{folds} (test {len(te)}, val {len(va)}, train {len(tr)}): {line}",
            file=log,
            flush=True,
        )


ANOMALY_VARIANT = "image-only + anomaly (mid-level kNN bank)"


def finetuned_name(blocks: int) -> str:
    what = "last block" if blocks == 1 else f"last {blocks} blocks"
    return f"image-only, fine-tuned ({what} + head conv)"


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def ms(vals: list[float]) -> list[float]:
        a = np.array(vals, dtype=np.float64)
        return [float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0]

    out = {
        k: ms([r[k] for r in rows])
        for k in ("accuracy", "macro_f1", "missed_defect_rate", "false_alarm_rate")
    }
    for k in (
        "missed_defect_rate",
        "false_alarm_rate",
        "review_rate",
        "good_flagged_rate",
        "ece_before",
        "ece_after",
    ):
        out[f"op_{k}"] = ms([r["decision"][k] for r in rows])
    return out


def cv_markdown(summary: dict[str, Any]) -> str:
    head = (
        "| variant | macro-F1 | accuracy | missed defect (arg-max) | false alarm (arg-max) "
        "| missed defect (op. point) | good failed or reviewed (op. point) | review rate (op. point) "
        "| ECE before | ECE after |"
    )
    lines = [head, "|" + "---|" * 10]

    def f(v: list[float]) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    for name, a in summary["variants"].items():
        lines.append(
            f"| {name} | **{f(a['macro_f1'])}** | {f(a['accuracy'])} | {f(a['missed_defect_rate'])} "
            f"| {f(a['false_alarm_rate'])} | {f(a['op_missed_defect_rate'])} | {f(a['op_good_flagged_rate'])} "
            f"| {f(a['op_review_rate'])} | {f(a['op_ece_before'])} | {f(a['op_ece_after'])} |"
        )
    return "\n".join(lines)
