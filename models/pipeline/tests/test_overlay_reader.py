"""The overlay-font reader: its training targets invert the service's DB post-processing, its
graphs keep PP-OCR's interfaces (what ``src/ocr`` and rapidocr feed and expect), and the
exported graphs answer what the trained networks answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kensa_pipeline import overlay_reader as reader
from kensa_pipeline.overlay import overlay_lines

TINY = reader.TrainConfig(
    recogniser_steps=3, recogniser_batch=2, detector_steps=3, detector_batch=2, detector_side=64
)


@pytest.mark.parametrize("size", [(230.0, 20.0), (120.0, 14.0), (40.0, 40.0), (300.0, 31.0)])
def test_the_shrunk_box_unclips_back_to_the_line(size: tuple[float, float]) -> None:
    width, height = size
    d = reader.shrink_distance(width, height)
    core_w, core_h = width - 2 * d, height - 2 * d
    assert core_w > 0 and core_h > 0
    # DB's unclip: grow by area * ratio / perimeter on every side.
    grown = core_w * core_h * reader.UNCLIP_RATIO / (2 * (core_w + core_h))
    assert grown == pytest.approx(d, abs=1e-6)


def test_every_overlay_character_has_a_class_and_the_space_is_last() -> None:
    lines = overlay_lines("L2438-12", "R2C03", 53.61, 48.6, 0.1, ["DEPTH_HI", "GRAY"])
    for line in lines:
        classes = reader.encode(line)
        assert len(classes) == len(line)
        assert all(1 <= c <= len(reader.CHARSET) + 1 for c in classes)
    assert reader.encode(" ") == [len(reader.CHARSET) + 1]


def test_frame_targets_mark_every_printed_line_and_some_frames_stay_blank() -> None:
    rng = np.random.default_rng(5)
    marked = []
    for _ in range(12):
        frame, target, printed = reader.render_frame(rng, 160, 128)
        assert frame.size == (160, 128) and target.shape == (128, 160)
        for line in printed:
            left, top, right, bottom = line.box
            assert target[top:bottom, left:right].any(), "a target inside every printed line"
        assert set(np.unique(target)) <= {0.0, 1.0}
        marked.append(float(target.mean()))
    assert min(marked) == 0.0, "frames without text teach the detector to stay quiet"
    assert 0.0 < max(marked) < 0.5


def test_line_tensor_pads_to_the_widest_line_and_at_least_320() -> None:
    rng = np.random.default_rng(1)
    crops, texts = reader.line_crops(rng, 2)
    assert len(crops) == len(texts) == 2
    batch = reader.line_tensor(crops)
    assert batch.shape[:3] == (2, 3, reader.LINE_HEIGHT)
    assert batch.shape[3] >= reader.MIN_LINE_WIDTH and batch.shape[3] % 4 == 0
    assert float(batch.abs().max()) <= 1.0


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_exported_graphs_keep_pp_ocr_interfaces_and_match_torch(tmp_path: Path) -> None:
    recogniser, rec_log = reader.train_recogniser(TINY)
    detector, det_log = reader.train_detector(TINY)
    assert rec_log and det_log
    det_path, rec_path = reader.export(detector, recogniser, tmp_path)

    character = {p.key: p.value for p in onnx.load(str(rec_path)).metadata_props}["character"]
    assert character.splitlines() == list(reader.CHARSET)

    frames = np.random.default_rng(0).uniform(-1, 1, (2, 3, 96, 160)).astype(np.float32)
    maps = _session(det_path).run(None, {"x": frames})[0]
    assert maps.shape == (2, 1, 96, 160)
    with torch.no_grad():
        want = torch.sigmoid(detector(torch.from_numpy(frames))).numpy()
    assert np.abs(maps - want).max() < 1e-4

    lines = np.random.default_rng(1).uniform(-1, 1, (3, 3, 48, 344)).astype(np.float32)
    scores = _session(rec_path).run(None, {"x": lines})[0]
    assert scores.shape == (3, 344 // 4, len(reader.CHARSET) + 2)
    assert np.allclose(scores.sum(axis=2), 1.0, atol=1e-4)
    with torch.no_grad():
        want = torch.softmax(recogniser(torch.from_numpy(lines)), dim=2).numpy()
    assert np.abs(scores - want).max() < 1e-4


def test_train_writes_both_graphs_and_its_record(tmp_path: Path) -> None:
    record = reader.train(tmp_path, TINY)
    assert set(record["files"]) == {"detector.onnx", "recogniser.onnx"}
    written = json.loads((tmp_path / "training.json").read_text())
    assert written["config"]["recogniser_steps"] == TINY.recogniser_steps
    assert written["charset"] == reader.CHARSET
