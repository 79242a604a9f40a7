"""Metrics (accuracy, macro-F1, per-class F1, confusion, missed-defect and false-alarm rates),
Markdown tables and the demo model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kensa_pipeline.data.formats import load_dataset, split_indices
from kensa_pipeline.data.generator import GenConfig


def compute_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, names: list[str], normal_index: int
) -> dict[str, Any]:
    """All metrics as plain JSON-able values. Confusion rows = true, columns = predicted."""
    c = len(names)
    cm = np.zeros((c, c), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[int(t), int(p)] += 1
    f1 = {}
    for k, n in enumerate(names):
        tp = cm[k, k]
        fp = cm[:, k].sum() - tp
        fn = cm[k, :].sum() - tp
        f1[n] = float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else 0.0
    defect = y_true != normal_index
    normal = ~defect
    missed = float(np.mean(y_pred[defect] == normal_index)) if defect.any() else 0.0
    false_alarm = float(np.mean(y_pred[normal] != normal_index)) if normal.any() else 0.0
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(list(f1.values()))),
        "per_class_f1": f1,
        "missed_defect_rate": missed,
        "false_alarm_rate": false_alarm,
        "confusion_matrix": cm.tolist(),
    }


def markdown_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Rows: {"variant": str, **metrics} -> Markdown table."""
    head = ["variant", "accuracy", "macro-F1"] + [f"F1 {n}" for n in names]
    head += ["missed defect", "false alarm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], f"{r['accuracy']:.3f}", f"**{r['macro_f1']:.3f}**"]
        cells += [f"{r['per_class_f1'][n]:.3f}" for n in names]
        cells += [f"{r['missed_defect_rate']:.3f}", f"{r['false_alarm_rate']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_markdown(cm: list[list[int]], names: list[str]) -> str:
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for n, row in zip(names, cm, strict=True):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def evaluate_folder(
    model: Path, data: Path, normal: str = "normal", empty_notes: bool = False, split: str = "all"
) -> dict[str, Any]:
    """Evaluate an exported model folder with onnxruntime on a dataset (all samples, or the
    seeded test split with ``split='test'``)."""
    from kensa_pipeline.export import OnnxModel
    from kensa_pipeline.preprocess import preprocess_file

    om = OnnxModel(model)
    man = om.manifest
    names = [lab["name"] for lab in man["labels"]]
    ds = load_dataset(data, normal)
    idx = split_indices(ds, 0)[split] if split != "all" else np.arange(len(ds.samples))
    im = man["image"]
    y_true, y_pred = [], []
    for i in idx:
        s = ds.samples[int(i)]
        x = preprocess_file(
            s.image, im["height"], im["width"], im["channels"], im["mean"], im["std"]
        )
        ids, mask = om.encode(["" if empty_notes else s.note])
        logits, _ = om.run(x[None], ids, mask)
        y_true.append(names.index(s.label))
        y_pred.append(int(logits[0].argmax()))
    normal_index = next(i for i, lab in enumerate(man["labels"]) if lab["is_normal"])
    return compute_metrics(np.array(y_true), np.array(y_pred), names, normal_index)


def model_card(
    result: dict[str, Any],
    metrics: dict[str, Any],
    gen: GenConfig,
    seconds: float,
    threads: int,
) -> str:
    """MODEL_CARD.md text for the demo model."""
    names = list(metrics.get("per_class_f1", {}).keys())
    seed, scale = gen.seed, gen.scale
    par = result.get("parity", {})
    return f"""# kensa-demo model card

**What it is.** A tiny image + note defect classifier for AOI lines, built by the kensa model
pipeline (`models/pipeline`). Vision: ViT `tiny` preset (112x112 gray, conv stem down to a 7x7
patch grid, width 128, 4 layers, mean pooling). Text: BERT-style `tiny` preset (width 128, 2 layers) over the
WordPiece `tokenizer.json`. Head: PFA projections + CMAF (cross-attention both directions +
learned note gate) + MLP classifier. Method after Hsu et al., *Progressive Alignment with
VLM-LLM Feature to Augment Defect Classification for the ASE Dataset* (arXiv 2404.05183).

**Intended use.** Demos and the Rust service's integration tests. It was trained only on
synthetic data (below) and must not be used to disposition real product.

**Training data.** `kensa_pipeline.data.generator`, seed {seed}, scale {scale}
({int(round(455 * scale))} samples, ASE proportions 225:92:44:50:44 per 455): drilled vias on a
substrate, 5 classes (normal, void, oversize, offset, residue), notes with lot/strip/unit,
measurements (dia/depth/offset in µm), machine call codes and a remark;
{gen.p_empty:.0%} of notes empty, {gen.p_wrong:.0%} wrong (another unit's note). Stratified
split 65% train / 15% validation (early stopping on macro-F1) / 20% held-out test.

**Training.** Two stages. Stage 1 trains the image-only and the text-only model from scratch
(no pretrained weights can be downloaded here); their encoders stand in for the paper's
pretrained VLM image tower and language model. Stage 2 trains each fusion head (concat,
CMAF, PFA+CMAF) over those encoders, frozen, starting from their projections; the CMAF head
also starts from the image-only classifier, so that with an empty note it is the image-only
model.

**Regenerate.** `scripts/make-demo-model.sh`: generation, all five variants, export and
fixtures took {seconds / 60:.1f} min with {threads} torch thread{"" if threads == 1 else "s"} on a 2-core machine.

## Ablations (held-out test split, same seed and training budget)

{result.get("ablation_markdown", "")}

"missed defect" = share of defect samples classified as normal; "false alarm" = share of
normal samples classified as a defect. "full PFA+CMAF, notes emptied" is the shipped model
evaluated with every note replaced by the empty string.

## Shipped model on the test split

{confusion_markdown(metrics["confusion_matrix"], names) if names else ""}

## Export parity (onnxruntime vs PyTorch, max abs diff)

{json.dumps(par, indent=2)}

## Limitations

* Synthetic data only; real via images, real notes and real defect types will differ.
* A wrong note can flip the decision (see the misleading-remark and wrong-note rates of the
  generator). With an empty note the model falls back to the image path (the gate is forced
  to 0), which cannot tell residue from a dust film.
* Tiny encoders trained from scratch on ~{int(round(455 * scale * 0.65))} images; the
  test split is small, so the figures carry a few points of sampling noise. The gap to
  image-only depends on the training budget: the image encoder's best epoch comes near the
  end of its budget, and longer training lifts image-only more than the fused model.
"""


def save_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
