"""Reference fixtures for the Rust service (``<model folder>/fixtures/``).

* ``preprocess/``: small images in several formats/bit depths/odd sizes and
  ``expected.json`` -> raw little-endian float32 tensors from :mod:`kensa_pipeline.preprocess`.
* ``tokens.json``: notes and their ids / attention masks (truncated at max_tokens).
* ``samples/`` + ``samples.jsonl``: held-out samples with onnxruntime probabilities and
  attention maps (batch of 1, reference preprocessing).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kensa_pipeline.data.formats import Sample
from kensa_pipeline.export import OnnxModel
from kensa_pipeline.preprocess import preprocess_file
from kensa_pipeline.tokenizer import encode_one, load_tokenizer

TOKEN_CASES = [
    "",
    "ok",
    "lot L2417-03 strip 12 unit R3C07 via 2-4; dia 61.2µm, depth 34.8µm, offset 1.3µm; "
    "remark: possible void",
    "DIA 66.0UM depth 41.9um OFFSET 9.4um",
    "remark: Hole looks BIG — re-inspect (Ø ≈ 70 µm) ✓",
    "12345.678 0.001 -3.5e2 100%",
    "   spaces   and\ttabs\nnewline  ",
    "lot L2433-12 strip 19 unit R8C11 via 4-4; dia 66.0um, depth 41.8um, offset 9.4um; "
    "remark: hole looks big; operator review requested twice because the drill wear log "
    "shows a spike on spindle 3 and the previous strip had two oversize calls in a row",
    "lot L2433-12 strip 19 unit R8C11 via 4-4; dia 66.0um, depth 41.8um, offset 9.4um; "
    "aoi call: DIA_HI DEPTH_HI OFS_HI GRAY; remark: hole looks big; operator review requested "
    "twice because the drill wear log shows a spike on spindle 3, the previous strip had two "
    "oversize calls in a row and the strip before that one was re-drilled after a power dip "
    "on line 3 at 02:14 (ticket 88123-B, see shift log 2417/2418)",
]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _test_pattern(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradient + rings + noise in [0, 1], shape [h, w]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(yy - h * 0.4, xx - w * 0.6)
    x = 0.5 + 0.25 * np.sin(r / 3.0) + 0.2 * (xx / w - 0.5) + 0.05 * rng.standard_normal((h, w))
    return np.clip(x, 0, 1)


def _frame_pattern(h: int, w: int) -> np.ndarray:
    """A camera-frame-sized pattern in [0, 1]: rings scaled with the frame, a gradient, no noise
    (noise would make the committed JPEGs megabytes)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(yy - h * 0.4, xx - w * 0.6)
    return np.clip(0.5 + 0.25 * np.sin(r / (0.02 * w)) + 0.2 * (xx / w - 0.5), 0, 1)


# Station frame sizes: reduced-scale JPEG decoding (down to 1/8) must match Pillow.
FRAME_SIZES = [(640, 640), (2448, 2048), (4096, 3072)]


def write_frame_fixtures(d: Path) -> None:
    """Gray JPEGs at the station frame sizes, and one colour JPEG that is decoded scaled."""
    for w, h in FRAME_SIZES:
        gray = (_frame_pattern(h, w) * 255).round().astype(np.uint8)
        Image.fromarray(gray).save(d / f"frame_{w}x{h}.jpg", quality=85)
    rgb = np.stack([_frame_pattern(480, 640) ** k for k in (1, 2, 3)], -1)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(d / "frame_rgb_640x480.jpg")


def write_preprocess_fixtures(out: Path, image_cfg: dict[str, Any]) -> None:
    d = out / "preprocess"
    d.mkdir(parents=True, exist_ok=True)
    g8 = (_test_pattern(97, 150, 1) * 255).round().astype(np.uint8)
    Image.fromarray(g8, mode="L").save(d / "gray8_150x97.png")
    g16 = (_test_pattern(200, 64, 2) * 65535).round().astype(np.uint16)
    Image.fromarray(g16, mode="I;16").save(d / "gray16_64x200.png")
    rgb = np.stack(
        [_test_pattern(77, 131, 3), _test_pattern(77, 131, 4), _test_pattern(77, 131, 5)], -1
    )
    rgb8 = (rgb * 255).round().astype(np.uint8)
    Image.fromarray(rgb8, mode="RGB").save(d / "rgb8_131x77.png")
    rgba = np.concatenate([rgb8[:60, :90], np.full((60, 90, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(d / "rgba8_90x60.png")
    Image.fromarray((_test_pattern(150, 97, 6) * 255).round().astype(np.uint8), mode="L").save(
        d / "gray_97x150.jpg", quality=90
    )
    Image.fromarray(rgb8[:, :120], mode="RGB").save(d / "rgb_120x77.bmp")
    Image.fromarray((_test_pattern(131, 77, 7) * 255).round().astype(np.uint8), mode="L").save(
        d / "gray8_77x131.tif"
    )
    write_frame_fixtures(d)
    entries = []
    for f in sorted(d.iterdir()):
        if f.suffix in (".json", ".f32"):
            continue
        x = preprocess_file(
            f,
            image_cfg["height"],
            image_cfg["width"],
            image_cfg["channels"],
            image_cfg["mean"],
            image_cfg["std"],
        )[None]
        name = f.stem + ".f32"
        x.astype("<f4").tofile(d / name)
        entries.append({"file": f.name, "shape": list(x.shape), "tensor": name})
    (d / "expected.json").write_text(json.dumps(entries, indent=2) + "\n")


def write_token_fixtures(out: Path, tokenizer_path: Path, max_tokens: int) -> None:
    tok = load_tokenizer(tokenizer_path)
    cases = []
    for note in TOKEN_CASES:
        ids = encode_one(tok, note, max_tokens)
        cases.append({"note": note, "ids": ids, "attention_mask": [1] * len(ids)})
    (out / "tokens.json").write_text(
        json.dumps({"max_tokens": max_tokens, "cases": cases}, indent=2, ensure_ascii=False) + "\n"
    )


def write_sample_fixtures(
    out: Path, folder: Path, candidates: list[Sample], per_class: int = 2
) -> list[dict[str, Any]]:
    """Pick ``per_class`` held-out samples per class (confidently right ones first)."""
    om = OnnxModel(folder)
    man = om.manifest
    names = [lab["name"] for lab in man["labels"]]
    im = man["image"]
    scored: dict[str, list[tuple[float, Sample, np.ndarray, np.ndarray]]] = {n: [] for n in names}
    for s in candidates:
        if len(scored[s.label]) >= 12:
            continue
        x = preprocess_file(
            s.image, im["height"], im["width"], im["channels"], im["mean"], im["std"]
        )
        ids, mask = om.encode([s.note])
        logits, attn = om.run(x[None], ids, mask)
        p = _softmax(logits.astype(np.float64))[0]
        right = names[int(p.argmax())] == s.label
        # Prefer correct + confident (>= 0.6), with a non-empty note; then the rest.
        score = (2.0 if right and p.max() >= 0.6 else (1.0 if right else 0.0)) + float(p.max())
        score += 0.5 if s.note else 0.0
        scored[s.label].append((score, s, p, attn[0]))
    d = out / "samples"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in names:
        best = sorted(scored[n], key=lambda t: -t[0])[:per_class]
        for k, (_, s, p, a) in enumerate(best):
            name = f"samples/{n}_{k}{s.image.suffix}"
            shutil.copyfile(s.image, out / name)
            rows.append(
                {
                    "image": name,
                    "note": s.note,
                    "label": s.label,
                    "probabilities": p.astype(np.float32).astype(np.float64).tolist(),
                    "attention": a.astype(np.float32).astype(np.float64).tolist(),
                }
            )
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows


def write_fixtures(folder: Path, candidates: list[Sample]) -> None:
    """All fixtures into ``folder/fixtures`` for a finished model folder."""
    man = json.loads((folder / "manifest.json").read_text())
    out = folder / "fixtures"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_preprocess_fixtures(out, man["image"])
    write_token_fixtures(out, folder / "tokenizer.json", int(man["text"]["max_tokens"]))
    write_sample_fixtures(out, folder, candidates)
