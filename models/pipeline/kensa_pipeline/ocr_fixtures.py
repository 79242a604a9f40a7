"""OCR parity fixtures for the service's reader (``tests/fixtures/ocr``).

Small frames with an AOI-style overlay (:mod:`kensa_pipeline.overlay`) and what the Python
reference, ``rapidocr_onnxruntime.RapidOCR`` 1.4.4 (no angle classifier), reads on them with
each reader's graphs: per line the text, its confidence and its four corners. Readers:
``pp-ocrv4`` (PP-OCRv4 from the wheel, ``expected.json``) and ``overlay`` (the overlay-font
reader of :mod:`kensa_pipeline.overlay_reader` in ``models/ocr-overlay``,
``expected-overlay.json``). The Rust test ``tests/ocr.rs`` reads the same images with
``src/ocr`` and must find the same texts and boxes within 2 px.

    python -m kensa_pipeline.ocr_fixtures --out tests/fixtures/ocr [--reader overlay]
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kensa_pipeline.overlay import OverlayStyle, background, draw_overlay

# The reference's settings, which the service's defaults mirror (src/ocr/mod.rs):
# detection at the image's own scale up to 960 px on the longer side, sides rounded to 32.
REFERENCE_SETTINGS: dict[str, Any] = {"det_limit_type": "max", "det_limit_side_len": 960}


@dataclass(frozen=True)
class Case:
    """One fixture frame: size, overlay lines (none: a frame without text) and their style."""

    name: str
    width: int
    height: int
    lines: tuple[str, ...]
    style: OverlayStyle
    seed: int


CASES = [
    Case(
        "two_lines",
        320,
        240,
        ("LOT L2438-12 U R2C03", "D53.6 H48.6 OFS0.1 DEPTH_HI"),
        OverlayStyle(font_size=16),
        1,
    ),
    Case(
        "bottom_band",
        384,
        256,
        ("LOT L2417-03 U R3C07", "D61.2 H34.8 OFS1.3 NONE"),
        OverlayStyle(font_size=18, corner="bottom-left", text_level=20, band_level=230),
        2,
    ),
    Case(
        "degraded",
        320,
        320,
        ("LOT L2433-12 U R8C11", "D66.0 H41.8 OFS9.4 DIA_HI OFS_HI"),
        OverlayStyle(font_size=15, noise_sigma=6.0, blur_radius=0.6),
        3,
    ),
    Case("no_text", 224, 224, (), OverlayStyle(), 4),
]


def render_case(case: Case) -> Image.Image:
    """The frame of ``case``, deterministic from its seed."""
    image = background(case.width, case.height, case.seed)
    if not case.lines:
        return image
    return draw_overlay(image, list(case.lines), case.style, seed=case.seed)


ROOT = Path(__file__).resolve().parents[3]
# Each reader's graphs (None: the wheel's own PP-OCRv4) and the file its fixtures go to.
READERS: dict[str, tuple[tuple[Path, Path] | None, str]] = {
    "pp-ocrv4": (None, "expected.json"),
    "overlay": (
        (ROOT / "models/ocr-overlay/detector.onnx", ROOT / "models/ocr-overlay/recogniser.onnx"),
        "expected-overlay.json",
    ),
}


@functools.cache
def _engine(reader: str) -> Any:
    """The reference with ``reader``'s graphs, opened once (opening costs more than a read)."""
    from rapidocr_onnxruntime import RapidOCR

    graphs, _ = READERS[reader]
    if graphs is None:
        return RapidOCR(**REFERENCE_SETTINGS)
    det, rec = graphs
    return RapidOCR(det_model_path=str(det), rec_model_path=str(rec), **REFERENCE_SETTINGS)


def reference_read(image: Image.Image, reader: str = "pp-ocrv4") -> list[dict[str, Any]]:
    """What rapidocr reads on ``image`` with ``reader``'s graphs: per line text, confidence
    and box (4 corners)."""
    engine = _engine(reader)
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    result, _ = engine(bgr, use_cls=False)
    lines: list[dict[str, Any]] = []
    for box, text, confidence in result or []:
        lines.append(
            {
                "text": str(text),
                "confidence": float(confidence),
                "box": [[float(x), float(y)] for x, y in box],
            }
        )
    return lines


def write_fixtures(out: Path, reader: str = "pp-ocrv4") -> Path:
    """Writes every case's PNG and what ``reader`` reads on it into ``out``; returns the JSON
    path."""
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in CASES:
        image = render_case(case)
        file = f"{case.name}.png"
        image.save(out / file, optimize=False)
        cases.append(
            {
                "image": file,
                "printed": list(case.lines),
                "lines": reference_read(Image.open(out / file), reader),
            }
        )
    graphs, name = READERS[reader]
    path = out / name
    document: dict[str, Any] = {
        "reference": "rapidocr_onnxruntime==1.4.4",
        "graphs": "PP-OCRv4 (the wheel's)"
        if graphs is None
        else [str(g.relative_to(ROOT)) for g in graphs],
        "settings": REFERENCE_SETTINGS,
        "cases": cases,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def main() -> None:
    """Command line: write the fixtures into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reader", choices=sorted(READERS), default="pp-ocrv4")
    args = parser.parse_args()
    print(write_fixtures(args.out, args.reader))


if __name__ == "__main__":
    main()
