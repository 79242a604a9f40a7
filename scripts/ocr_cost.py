"""CPU time of the OCR graphs per frame against the demo model's per unit, in ONNX Runtime
with one thread each (the graphs' share of OCR's cost), for both readers: PP-OCRv4 (the
wheel's) and the overlay-font reader (models/ocr-overlay).

    .venv/bin/python scripts/ocr_cost.py   # after scripts/setup-ocr.sh
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_ms(job: Callable[[], object], runs: int = 30) -> float:
    job()
    started = time.process_time()
    for _ in range(runs):
        job()
    return (time.process_time() - started) / runs * 1000


def main() -> None:
    readers = {
        "PP-OCRv4": (
            session(ROOT / ".ocr/ch_PP-OCRv4_det_infer.onnx"),
            session(ROOT / ".ocr/ch_PP-OCRv4_rec_infer.onnx"),
        ),
        "overlay reader": (
            session(ROOT / "models/ocr-overlay/detector.onnx"),
            session(ROOT / "models/ocr-overlay/recogniser.onnx"),
        ),
    }
    demo = ROOT / "models/demo"
    vision, text, head = (
        session(demo / f"{g}.onnx") for g in ("vision", "text", "head")
    )
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    # Two overlay lines of 174x18 and 227x19 px (the fixtures'): the recogniser pads both to
    # the wider one's 48 px-high width.
    lines = rng.random((2, 3, 48, int(48 * 227 / 19)), dtype=np.float32)
    for reader, (det, rec) in readers.items():
        for name, (w, h) in {
            "320x240 frame": (320, 256),
            "384x384 frame": (384, 384),
        }.items():
            frame = rng.random((1, 3, h, w), dtype=np.float32)

            def detect(f: np.ndarray = frame, d: ort.InferenceSession = det) -> None:
                d.run(None, {"x": f})

            def recognise(r: ort.InferenceSession = rec) -> None:
                r.run(None, {"x": lines})

            out[f"{reader}, {name}"] = {
                "detect_ms": cpu_ms(detect),
                "recognise_2_lines_ms": cpu_ms(recognise),
            }
    ids = np.ones((1, 40), np.int64)
    pixels = rng.random((1, 1, 224, 224), dtype=np.float32)

    def model() -> None:
        v = vision.run(None, {"pixel_values": pixels})
        t = text.run(None, {"input_ids": ids, "attention_mask": ids})
        feed = {
            "patch_tokens": v[0],
            "pooled": v[1],
            "token_states": t[0],
            "attention_mask": ids,
        }
        head.run(None, feed)

    out["demo model, batch of 1"] = {"ms": cpu_ms(model)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
