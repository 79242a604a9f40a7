"""Dataset formats: declared classes, clear row errors, groups and group-aware splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kensa_pipeline.data.formats import (
    DatasetError,
    grouped_stratified_folds,
    load_dataset,
    mt_run_groups,
    split_indices,
)

LABELS = [
    {"name": "ok", "display_name": "OK", "is_normal": True},
    {"name": "crack", "display_name": "Crack", "is_normal": False},
]


def _make(root: Path, rows: list[dict[str, object]], labels: bool = True) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for r in rows:
        p = root / str(r["image"])
        if not p.exists() and "missing" not in str(r["image"]):
            Image.new("L", (12, 9), 80).save(p)
    with (root / "data.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if labels:
        (root / "labels.json").write_text(json.dumps(LABELS))
    return root


def _rows(n: int = 20, groups: bool = False) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        k = i // 2 if groups else i  # a part's shots share its label
        r: dict[str, object] = {
            "image": f"img/{i}.png",
            "note": f"n{i}",
            "label": "crack" if k % 4 == 0 else "ok",
        }
        if groups:
            r["group"] = f"part{i // 2}"
        out.append(r)
    return out


def test_loads_and_keeps_declared_order(tmp_path: Path) -> None:
    ds = load_dataset(_make(tmp_path, _rows()))
    assert ds.names == ["ok", "crack"] and len(ds.samples) == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": ""}, "line 3: empty label"),
        ({"label": "crak"}, "line 3: label 'crak' is not a declared class"),
        ({"image": "img/missing.png"}, "line 3: image"),
    ],
)
def test_bad_row_names_file_and_line(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    rows = _rows()
    rows[2] = {**rows[2], **change}
    _make(tmp_path, rows)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(tmp_path)
    assert "data.jsonl" in str(e.value)


def test_unreadable_image_and_bad_json(tmp_path: Path) -> None:
    _make(tmp_path, _rows())
    (tmp_path / "img/5.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"line 6: image .*5.png cannot be read"):
        load_dataset(tmp_path)
    (tmp_path / "img/5.png").unlink()
    Image.new("L", (4, 4)).save(tmp_path / "img/5.png")
    with (tmp_path / "data.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(DatasetError, match="line 21: not valid JSON"):
        load_dataset(tmp_path)


def test_classes_must_be_declared(tmp_path: Path) -> None:
    _make(tmp_path, _rows(), labels=False)
    with pytest.raises(DatasetError, match="declare the classes"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, normal="ok", classes=["crack", "ok"])
    assert ds.names == ["ok", "crack"]
    with pytest.raises(DatasetError, match="'crack' is not a declared class"):
        load_dataset(tmp_path, normal="ok", classes=["ok", "scratch"])


def test_csv_with_header_and_relative_paths(tmp_path: Path) -> None:
    _make(tmp_path, _rows())
    (tmp_path / "data.jsonl").unlink()
    lines = ["image,label,note,group"] + [
        f"img/{i}.png,{'crack' if i % 4 == 0 else 'ok'},n {i},g{i // 2}" for i in range(20)
    ]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path)
    assert ds.samples[3].note == "n 3" and ds.samples[3].group == "g1"
    (tmp_path / "data.csv").write_text("path,label\nimg/0.png,ok\n")
    with pytest.raises(DatasetError, match="no 'image' column"):
        load_dataset(tmp_path)


def test_group_aware_split_and_folds(tmp_path: Path) -> None:
    rows = _rows(80, groups=True)
    ds = load_dataset(_make(tmp_path, rows))
    g = ds.groups()
    sp = split_indices(ds, 0)
    sides = {k: {g[i] for i in v} for k, v in sp.items()}
    assert not (sides["train"] & sides["test"]) and not (sides["val"] & sides["test"])
    assert not (sides["train"] & sides["val"])
    assert sorted(np.concatenate(list(sp.values())).tolist()) == list(range(80))
    folds = grouped_stratified_folds(ds, 4, 0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(80))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not ({g[i] for i in folds[a]} & {g[i] for i in folds[b]})
    y = ds.targets()
    assert all((y[f] == 1).sum() >= 4 for f in folds)  # every fold has defects


def test_magnetic_tile_runs() -> None:
    # Runs of rising lighting N by frame number M; a new tile where N does not rise or M
    # jumps by more than 1000 (the magnetic-tile README's rule).
    names = [
        "exp0_num_743",
        "exp1_num_824",
        "exp2_num_834",
        "exp1_num_855",
        "exp2_num_887",
        "exp4_num_889",
        "exp3_num_913",
        "exp4_num_933",
        "exp5_num_937",
        "exp5_num_2964",
    ]
    files = [Path("free") / f"{n}.jpg" for n in names] + [Path("crack/exp1_num_900.jpg")]
    groups = mt_run_groups(files)
    assert groups[:3] == ["free/tile001"] * 3
    assert groups[3:6] == ["free/tile002"] * 3
    assert groups[6:9] == ["free/tile003"] * 3
    assert groups[9] == "free/tile004"  # M jumped by more than 1000
    assert groups[10] == "crack/tile001"
    with pytest.raises(DatasetError, match="expN_num_M"):
        mt_run_groups([Path("free/img1.jpg")])


def test_folder_dataset_classes_checked(tmp_path: Path) -> None:
    for c in ("free", "crack"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("L", (20, 10), 100).save(tmp_path / c / f"exp{i + 1}_num_{i + 10}.jpg")
    ds = load_dataset(tmp_path, normal="free", group_rule="mt-runs")
    assert ds.names == ["free", "crack"] and len(set(ds.groups())) == 2
    with pytest.raises(DatasetError, match="undeclared"):
        load_dataset(tmp_path, normal="free", classes=["free", "crak"])


def test_cli_bad_row_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kensa_pipeline.cli import build_parser

    rows = _rows()
    rows[4] = {**rows[4], "label": "crak"}
    _make(tmp_path / "d", rows)
    from kensa_pipeline.data.formats import DatasetError as DE

    a = build_parser().parse_args(
        ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--normal", "ok"]
    )
    with pytest.raises(DE, match="line 5"):
        a.func(a)
    # main() turns it into one line on stderr and exit status 2
    import kensa_pipeline.cli as cli

    assert (
        cli.main(
            ["--threads", "1", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 5" in err and "Traceback" not in err
