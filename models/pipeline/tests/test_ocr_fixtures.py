"""The Python side of the OCR parity: the fixture frames are reproducible from their recipe and
the reference (rapidocr) still reads on them, with each reader's graphs, what
``tests/fixtures/ocr/expected.json`` (PP-OCRv4) and ``expected-overlay.json`` (the
overlay-font reader in ``models/ocr-overlay``) record; the Rust side (``tests/ocr.rs``) must
read the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kensa_pipeline.ocr_fixtures import CASES, READERS, reference_read, render_case
from kensa_pipeline.overlay import OverlayStyle, background, draw_overlay, overlay_lines

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "ocr"


def expected(reader: str = "pp-ocrv4") -> dict:
    return json.loads((FIXTURES / READERS[reader][1]).read_text())


def test_fixture_frames_are_reproducible() -> None:
    for case in CASES:
        committed = np.asarray(Image.open(FIXTURES / f"{case.name}.png"))
        assert np.array_equal(np.asarray(render_case(case)), committed), case.name


@pytest.mark.parametrize("reader", sorted(READERS))
def test_fixtures_cover_several_lines_and_a_frame_without_text(reader: str) -> None:
    counts = [len(c["lines"]) for c in expected(reader)["cases"]]
    assert 0 in counts
    assert max(counts) >= 2


@pytest.mark.parametrize("reader", sorted(READERS))
def test_reference_reads_what_the_fixtures_record(reader: str) -> None:
    for case in expected(reader)["cases"]:
        lines = reference_read(Image.open(FIXTURES / case["image"]), reader)
        assert [line["text"] for line in lines] == [line["text"] for line in case["lines"]]
        for got, want in zip(lines, case["lines"], strict=True):
            assert np.allclose(got["box"], want["box"], atol=1.0), case["image"]
            assert abs(got["confidence"] - want["confidence"]) < 1e-3


def test_reference_reads_the_printed_digits() -> None:
    # The reader drops the font's narrow spaces; the characters themselves come back.
    for case in expected()["cases"]:
        read = "".join(line["text"] for line in case["lines"])
        printed = "".join(case["printed"]).replace(" ", "")
        assert read.replace(" ", "") == printed, case["image"]


def test_overlay_reader_reads_the_printed_lines_spaces_included() -> None:
    from kensa_pipeline.ocr_eval import edit_distance

    for case in expected("overlay")["cases"]:
        read = "\n".join(line["text"] for line in case["lines"])
        printed = "\n".join(case["printed"])
        # The degraded frame (15 px, noise sigma 6, blur 0.6) costs it two characters of 52.
        allowed = 2 if case["image"] == "degraded.png" else 0
        assert edit_distance(printed, read) <= allowed, (case["image"], read)


def test_overlay_lines_carry_the_unit_and_its_measurements() -> None:
    lines = overlay_lines("L2438-12", "R2C03", 53.61, 48.6, 0.1, ["DEPTH_HI"])
    assert lines == ["LOT L2438-12 U R2C03", "D53.6 H48.6 OFS0.1 DEPTH_HI"]


def test_overlay_prints_in_the_chosen_corner() -> None:
    frame = background(200, 120, seed=0, level=0.0)
    top = np.asarray(draw_overlay(frame, ["LOT 1"], OverlayStyle(font_size=12)))
    bottom = np.asarray(
        draw_overlay(frame, ["LOT 1"], OverlayStyle(font_size=12, corner="bottom-left"))
    )
    assert top[:30].max() > 200 and top[60:].max() < 100
    assert bottom[-30:].max() > 200 and bottom[:60].max() < 100


def test_manifest_ocr_section_is_checked() -> None:
    from kensa_pipeline.manifest import validate_ocr

    validate_ocr({"detector": "d.onnx", "recogniser": "r.onnx", "join": "when-empty"})
    validate_ocr(
        {"detector": "d", "recogniser": "r", "region": {"x": 0, "y": 0, "width": 9, "height": 9}}
    )
    for bad in (
        {"detector": "d"},
        {"detector": "d", "recogniser": "r", "join": "x"},
        {"detector": "d", "recogniser": "r", "region": {"x": 0}},
        {"detector": "d", "recogniser": "r", "colour": 1},
    ):
        with pytest.raises(ValueError):
            validate_ocr(bad)


def test_character_error_rate_counts_edits_with_and_without_spaces() -> None:
    from kensa_pipeline.ocr_eval import cer, edit_distance

    assert edit_distance("kitten", "sitting") == 3
    assert cer(["LOT L1 U R2", "D5.0"], "LOTL1UR2\nD5.0") == (3, 16, 0, 12)
