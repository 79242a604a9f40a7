from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kensa_pipeline.data.formats import load_dataset, split_indices
from kensa_pipeline.data.generator import ASE_COUNTS, GenConfig, class_counts, generate


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    h.update((d / "data.jsonl").read_bytes())
    for f in sorted((d / "images").iterdir()):
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", GenConfig(seed=3, scale=0.06)).parent
    b = generate(tmp_path / "b", GenConfig(seed=3, scale=0.06)).parent
    c = generate(tmp_path / "c", GenConfig(seed=4, scale=0.06)).parent
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_ase_proportions() -> None:
    assert (
        class_counts(1.0)
        == ASE_COUNTS
        == {
            "normal": 225,
            "void": 92,
            "oversize": 44,
            "offset": 50,
            "residue": 44,
        }
    )
    assert sum(class_counts(2.0).values()) == 910


def test_format_and_notes(small_data: Path) -> None:
    ds = load_dataset(small_data)
    assert ds.names[0] == "normal" and ds.labels[0].is_normal
    assert sum(lab.is_normal for lab in ds.labels) == 1
    counts = {n: sum(s.label == n for s in ds.samples) for n in ds.names}
    assert counts == class_counts(0.5)
    rows = [json.loads(x) for x in (small_data / "data.jsonl").read_text().splitlines()]
    assert all(
        {"image", "note", "label"} <= set(r) <= {"image", "note", "label", "region"} for r in rows
    )
    # every localized defect knows where it is: discs [x, y, r] inside the 128 px image
    for r, s in zip(rows, ds.samples, strict=True):
        assert ("region" in r) == (r["label"] != "normal")
        for x, y, rad in s.region or ():
            assert -20 < x < 148 and -20 < y < 148 and 0 < rad < 40
    notes = [s.note for s in ds.samples]
    assert any(n == "" for n in notes), "some notes must be empty"
    full = [n for n in notes if n]
    assert all("dia" in n and "depth" in n and "offset" in n for n in full)
    assert all(s.image.exists() for s in ds.samples)
    from PIL import Image

    with Image.open(ds.samples[0].image) as im:
        assert im.mode == "L" and im.size == (128, 128)


def test_split_is_stratified_and_disjoint(small_data: Path) -> None:
    ds = load_dataset(small_data)
    sp = split_indices(ds, 0)
    all_idx = sorted(sum((v.tolist() for v in sp.values()), []))
    assert all_idx == list(range(len(ds.samples)))
    y = ds.targets()
    for part in sp.values():
        assert set(y[part].tolist()) == set(range(len(ds.names)))


def test_folder_dataset(tmp_path: Path) -> None:
    from PIL import Image

    from kensa_pipeline.data.formats import load_folder_dataset

    for c in ("free", "crack"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("L", (20, 10), 100).save(tmp_path / c / f"{i}.jpg")
    ds = load_folder_dataset(tmp_path, normal="free")
    assert ds.names == ["free", "crack"]
    assert len(ds.samples) == 4 and all(s.note == "" for s in ds.samples)


def test_overlay_share_prints_the_units_own_numbers(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    plain = generate(tmp_path / "plain", GenConfig(seed=3, scale=0.03)).parent
    burnt = generate(tmp_path / "burnt", GenConfig(seed=3, scale=0.03, overlay_share=1.0)).parent
    plain_rows = [json.loads(x) for x in (plain / "data.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (burnt / "data.jsonl").read_text().splitlines()]
    assert all("overlay" not in r for r in plain_rows)
    for row, before in zip(rows, plain_rows, strict=True):
        assert row["label"] == before["label"]
        assert row["note"] == before["note"]  # the note's draws are unchanged
        lot = row["overlay"][0].split()[1]
        if row["note"]:
            assert lot in row["note"] or "lot" in row["note"]
        frame = np.asarray(Image.open(burnt / row["image"]))
        assert frame.shape == (384, 384)
    half = generate(tmp_path / "half", GenConfig(seed=3, scale=0.1, overlay_share=0.5)).parent
    half_rows = [json.loads(x) for x in (half / "data.jsonl").read_text().splitlines()]
    share = sum("overlay" in r for r in half_rows) / len(half_rows)
    assert 0.2 < share < 0.8
