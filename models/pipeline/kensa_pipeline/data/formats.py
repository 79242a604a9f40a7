"""Dataset formats.

*Notes dataset* (the pipeline's one format): a folder with images and ``data.jsonl``, one
JSON object per line: ``{"image": "relative/path.png", "note": "...", "label": "void"}``
(optional ``"split": "train" | "val" | "test"``). An optional ``labels.json`` lists
``[{"name", "display_name", "is_normal"}]`` in logits order; otherwise labels are sorted with
the normal one (``--normal``, default "normal") first. ``data.csv`` with columns
image,note,label is accepted too.

*Class-per-folder* datasets (no notes): ``root/<class>/*.{png,jpg,bmp,tif}``; every note is
empty. Used for the real magnetic-tile images.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    image: Path
    note: str
    label: str
    split: str | None = None


@dataclass
class LabelInfo:
    name: str
    display_name: str
    is_normal: bool


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    labels: list[LabelInfo]

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def normal_index(self) -> int:
        return next(i for i, lab in enumerate(self.labels) if lab.is_normal)

    def targets(self) -> np.ndarray:
        idx = {n: i for i, n in enumerate(self.names)}
        return np.array([idx[s.label] for s in self.samples], dtype=np.int64)


def _labels_from(names: set[str], normal: str) -> list[LabelInfo]:
    if normal not in names:
        raise ValueError(f"normal label {normal!r} not among labels {sorted(names)}")
    ordered = [normal] + sorted(n for n in names if n != normal)
    return [LabelInfo(n, n.replace("_", " ").capitalize(), n == normal) for n in ordered]


def load_notes_dataset(root: str | Path, normal: str = "normal") -> Dataset:
    """Load a folder in the notes format (data.jsonl or data.csv)."""
    root = Path(root)
    rows: list[dict[str, str]] = []
    if (root / "data.jsonl").exists():
        with (root / "data.jsonl").open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif (root / "data.csv").exists():
        with (root / "data.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise FileNotFoundError(f"{root} has neither data.jsonl nor data.csv")
    samples = [
        Sample(root / r["image"], r.get("note") or "", r["label"], r.get("split")) for r in rows
    ]
    if (root / "labels.json").exists():
        labels = [LabelInfo(**d) for d in json.loads((root / "labels.json").read_text())]
    else:
        labels = _labels_from({s.label for s in samples}, normal)
    return Dataset(root, samples, labels)


def load_folder_dataset(root: str | Path, normal: str) -> Dataset:
    """Load ``root/<class>/<image>`` (no notes: every note is empty)."""
    root = Path(root)
    samples = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                samples.append(Sample(f, "", d.name))
    return Dataset(root, samples, _labels_from({s.label for s in samples}, normal))


def load_dataset(root: str | Path, normal: str = "normal") -> Dataset:
    """Notes format if the folder has data.jsonl/data.csv, class-per-folder otherwise."""
    root = Path(root)
    if (root / "data.jsonl").exists() or (root / "data.csv").exists():
        return load_notes_dataset(root, normal)
    return load_folder_dataset(root, normal)


def split_indices(
    ds: Dataset, seed: int, val_frac: float = 0.15, test_frac: float = 0.2
) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices (uses the ``split`` field when every row has one)."""
    if all(s.split for s in ds.samples):
        return {
            k: np.array([i for i, s in enumerate(ds.samples) if s.split == k], dtype=np.int64)
            for k in ("train", "val", "test")
        }
    rng = np.random.default_rng(seed)
    y = ds.targets()
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(len(ds.labels)):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * test_frac)))
        n_val = max(1, int(round(len(idx) * val_frac)))
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test : n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val :].tolist()
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()}
