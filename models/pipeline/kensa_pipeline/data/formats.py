"""Dataset formats (everything ``train``, ``evaluate`` and ``cv`` read).

**Notes dataset**: a folder with the images and one table, ``data.jsonl`` or ``data.csv``.
Image paths are relative to that folder (absolute paths are taken as they are).

* ``data.jsonl``: one JSON object per line, keys ``image`` (required), ``label`` (required),
  ``note`` (optional, default empty), ``split`` (optional: ``train`` | ``val`` | ``test``;
  used when every row has one), ``group`` (optional: rows with the same group are shots of
  one physical part and are never put on both sides of a split), ``region`` (optional:
  where the defect is, a list of discs ``[x, y, r]`` in the image's pixels, for the
  pointing game). Blank lines are skipped.
* ``data.csv``: UTF-8, a header row naming the columns, the same column names as the JSONL
  keys (``image`` and ``label`` required; ``region`` is not read from CSV).

**Classes are declared**, never inferred from the rows, so a misspelt label is an error:
``labels.json`` in the folder (``[{"name", "display_name", "is_normal"}]`` in logits order)
or the command's ``--classes a,b,c`` (the ``--normal`` one is the normal class). A class-per-
folder dataset declares its classes by its folders; ``--classes`` then checks them.

**Class-per-folder** datasets (no notes): ``root/<class>/*.{png,jpg,jpeg,bmp,tif,tiff}``;
every note is empty. ``group_rule="mt-runs"`` groups the magnetic-tile frames into tiles.

Every problem with a row (missing or unreadable image, empty or undeclared label, bad JSON,
missing column) raises :class:`DatasetError` naming the file and the row.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be read, with the file and row at fault in the message."""


@dataclass(frozen=True)
class Sample:
    image: Path
    note: str
    label: str
    split: str | None = None
    group: str | None = None
    region: tuple[tuple[float, float, float], ...] | None = None


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

    def groups(self) -> list[str]:
        """Group of every sample (a sample without one is its own group)."""
        return [s.group if s.group else f"#{i}" for i, s in enumerate(self.samples)]


def declared_labels(names: list[str], normal: str) -> list[LabelInfo]:
    """Labels from a declared class list (normal first, then the given order)."""
    names = [n.strip() for n in names if n.strip()]
    if len(set(names)) != len(names):
        raise DatasetError(f"classes {names} name a class twice")
    if normal not in names:
        raise DatasetError(f"normal class {normal!r} is not among the classes {names}")
    ordered = [normal] + [n for n in names if n != normal]
    return [LabelInfo(n, n.replace("_", " ").capitalize(), n == normal) for n in ordered]


def _labels_file(root: Path) -> list[LabelInfo]:
    f = root / "labels.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
        labels = [
            LabelInfo(str(d["name"]), str(d["display_name"]), bool(d["is_normal"])) for d in raw
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{f}: not a list of {{name, display_name, is_normal}}: {e}") from e
    if sum(lab.is_normal for lab in labels) != 1:
        raise DatasetError(f"{f}: exactly one class must have is_normal = true")
    return labels


def _check_image(path: Path, where: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{where}: image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - reads the header
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{where}: image {path} cannot be read: {e}") from e


def _region(value: Any, where: str) -> tuple[tuple[float, float, float], ...] | None:
    if value is None or value == "":
        return None
    try:
        discs = tuple((float(d[0]), float(d[1]), float(d[2])) for d in value)
    except (TypeError, ValueError, IndexError) as e:
        raise DatasetError(f"{where}: region must be a list of [x, y, r] discs") from e
    return discs


def load_notes_dataset(
    root: str | Path,
    normal: str = "normal",
    classes: list[str] | None = None,
    check_images: bool = True,
) -> Dataset:
    """Load a folder in the notes format (data.jsonl or data.csv)."""
    root = Path(root)
    rows: list[tuple[str, dict[str, Any]]] = []
    if (root / "data.jsonl").exists():
        table = root / "data.jsonl"
        with table.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{table} line {n}: not valid JSON: {e.msg}") from e
                if not isinstance(obj, dict):
                    raise DatasetError(f"{table} line {n}: expected a JSON object")
                rows.append((f"{table} line {n}", obj))
    elif (root / "data.csv").exists():
        table = root / "data.csv"
        with table.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            for col in ("image", "label"):
                if col not in cols:
                    raise DatasetError(f"{table}: header has no {col!r} column (has {cols})")
            for n, r in enumerate(reader, start=2):
                rows.append((f"{table} line {n}", {k: v for k, v in r.items() if k is not None}))
    else:
        raise DatasetError(f"{root} has neither data.jsonl nor data.csv")
    if classes:
        labels = declared_labels(classes, normal)
        if (root / "labels.json").exists():
            file_names = [lab.name for lab in _labels_file(root)]
            if sorted(file_names) != sorted(lab.name for lab in labels):
                raise DatasetError(
                    f"--classes {classes} differ from {root / 'labels.json'} {file_names}"
                )
    elif (root / "labels.json").exists():
        labels = _labels_file(root)
    else:
        raise DatasetError(
            f"{root}: declare the classes, in labels.json or with --classes (a label that is "
            "not declared is then an error, not a new class)"
        )
    known = {lab.name for lab in labels}
    samples = []
    for where, r in rows:
        image = r.get("image")
        if not image or not isinstance(image, str):
            raise DatasetError(f"{where}: no image path")
        label = r.get("label")
        if label is None or not str(label).strip():
            raise DatasetError(f"{where}: empty label (image {image})")
        label = str(label).strip()
        if label not in known:
            raise DatasetError(
                f"{where}: label {label!r} is not a declared class {sorted(known)} (image {image})"
            )
        split = r.get("split") or None
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{where}: split {split!r} is not one of {SPLITS}")
        path = Path(image) if Path(image).is_absolute() else root / image
        if check_images:
            _check_image(path, where)
        note = r.get("note") or ""
        group = r.get("group")
        samples.append(
            Sample(
                path,
                str(note),
                label,
                split,
                str(group) if group not in (None, "") else None,
                _region(r.get("region"), where),
            )
        )
    if not samples:
        raise DatasetError(f"{root}: the dataset has no rows")
    return Dataset(root, samples, labels)


_MT_NAME = re.compile(r"exp(\d+)_num_(\d+)\.\w+$")


def mt_run_groups(files: list[Path]) -> list[str]:
    """Magnetic-tile tiles: within one class, frames sorted by frame number M
    (``expN_num_M.jpg``) belong to one tile while the lighting N rises; a new tile starts
    where N does not rise or M jumps by more than 1000. Returns a group id per file."""
    parsed = []
    for f in files:
        m = _MT_NAME.search(f.name)
        if m is None:
            raise DatasetError(f"{f}: name does not match expN_num_M (group rule mt-runs)")
        parsed.append((f.parent.name, int(m.group(2)), int(m.group(1)), f))
    out: dict[Path, str] = {}
    for cls in sorted({p[0] for p in parsed}):
        frames = sorted(p for p in parsed if p[0] == cls)
        tile = 0
        prev: tuple[int, int] | None = None
        for _, m_num, n_light, f in frames:
            if prev is None or n_light <= prev[1] or m_num - prev[0] > 1000:
                tile += 1
            prev = (m_num, n_light)
            out[f] = f"{cls}/tile{tile:03d}"
    return [out[f] for f in files]


def load_folder_dataset(
    root: str | Path,
    normal: str,
    classes: list[str] | None = None,
    group_rule: str | None = None,
    check_images: bool = True,
) -> Dataset:
    """Load ``root/<class>/<image>`` (no notes: every note is empty)."""
    root = Path(root)
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [d.name for d in dirs]
    if classes:
        declared = [c.strip() for c in classes]
        extra = sorted(set(found) - set(declared))
        missing = sorted(set(declared) - set(found))
        if extra or missing:
            raise DatasetError(
                f"{root}: class folders {found} do not match --classes {declared} "
                f"(undeclared: {extra}, without a folder: {missing})"
            )
        labels = declared_labels(declared, normal)
    else:
        labels = declared_labels(found, normal) if found else []
    files: list[Path] = []
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                if check_images:
                    _check_image(f, f"{d}")
                files.append(f)
    if not files:
        raise DatasetError(f"{root}: no images in class folders")
    if group_rule is None:
        groups: list[str | None] = [None] * len(files)
    elif group_rule == "mt-runs":
        groups = list(mt_run_groups(files))
    else:
        raise DatasetError(f"unknown group rule {group_rule!r} (known: mt-runs)")
    samples = [Sample(f, "", f.parent.name, None, g) for f, g in zip(files, groups, strict=True)]
    return Dataset(root, samples, labels)


def load_dataset(
    root: str | Path,
    normal: str = "normal",
    classes: list[str] | None = None,
    group_rule: str | None = None,
    check_images: bool = True,
) -> Dataset:
    """Notes format if the folder has data.jsonl/data.csv, class-per-folder otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if (root / "data.jsonl").exists() or (root / "data.csv").exists():
        if group_rule is not None:
            raise DatasetError(
                "--group-rule applies to class-per-folder datasets; use a group column"
            )
        return load_notes_dataset(root, normal, classes, check_images)
    return load_folder_dataset(root, normal, classes, group_rule, check_images)


def _group_table(
    ds: Dataset, rows: np.ndarray
) -> tuple[list[str], dict[str, list[int]], dict[str, int]]:
    """Groups among ``rows``: ordered names, their member rows, their (majority) class."""
    groups = ds.groups()
    y = ds.targets()
    members: dict[str, list[int]] = {}
    for i in rows:
        members.setdefault(groups[int(i)], []).append(int(i))
    names = sorted(members)
    label = {g: int(np.bincount(y[members[g]]).argmax()) for g in names}
    return names, members, label


def grouped_stratified_folds(
    ds: Dataset, k: int, seed: int, rows: np.ndarray | None = None
) -> list[np.ndarray]:
    """``k`` disjoint folds of ``rows`` (default all), no group in two folds, each class's
    groups dealt so that every fold gets about the same number of that class's samples."""
    rows = np.arange(len(ds.samples)) if rows is None else rows
    names, members, label = _group_table(ds, rows)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    n_classes = len(ds.labels)
    for c in range(n_classes):
        gs = [g for g in names if label[g] == c]
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(members[g]))  # stable: big groups first, random ties
        load = np.zeros(k)
        for g in gs:
            f = int(np.argmin(load + rng.random(k) * 1e-3))
            folds[f] += members[g]
            load[f] += len(members[g])
    return [np.array(sorted(f), dtype=np.int64) for f in folds]


def split_indices(
    ds: Dataset,
    seed: int,
    val_frac: float = 0.15,
    test_frac: float = 0.2,
    grouped: bool | None = None,
) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices.

    Uses the ``split`` field when every row has one. Group-aware when the dataset has groups
    (or ``grouped=True``): whole groups go to one side, dealt per class."""
    if all(s.split for s in ds.samples):
        return {
            k: np.array([i for i, s in enumerate(ds.samples) if s.split == k], dtype=np.int64)
            for k in SPLITS
        }
    if grouped is None:
        grouped = any(s.group for s in ds.samples)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    if grouped:
        names, members, label = _group_table(ds, np.arange(len(ds.samples)))
        for c in range(len(ds.labels)):
            gs = [g for g in names if label[g] == c]
            rng.shuffle(gs)
            n = sum(len(members[g]) for g in gs)
            acc = 0
            for g in gs:
                share = acc / max(1, n)
                side = (
                    "test"
                    if share < test_frac
                    else ("val" if share < test_frac + val_frac else "train")
                )
                parts[side] += members[g]
                acc += len(members[g])
        return {k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()}
    y = ds.targets()
    for c in range(len(ds.labels)):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * test_frac)))
        n_val = max(1, int(round(len(idx) * val_frac)))
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test : n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val :].tolist()
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()}
