from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kensa_pipeline.preprocess import preprocess_file


def test_gray8(tmp_path: Path) -> None:
    a = np.arange(12 * 10, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(a, mode="L").save(tmp_path / "g.png")
    x = preprocess_file(tmp_path / "g.png", 10, 12, 1, [0.5], [0.25])
    assert x.shape == (1, 10, 12) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (a / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_gray16(tmp_path: Path) -> None:
    a = (np.arange(8 * 6, dtype=np.uint16) * 1000).reshape(6, 8)
    Image.fromarray(a, mode="I;16").save(tmp_path / "g16.png")
    x = preprocess_file(tmp_path / "g16.png", 6, 8, 1, [0.0], [1.0])
    np.testing.assert_allclose(x[0], a / 65535.0, atol=1e-6)


def test_rgb_to_gray_and_gray_to_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, np.full((5, 7), 9, np.uint8)]), mode="RGBA").save(
        tmp_path / "ca.png"
    )
    f = rgb.astype(np.float32) / np.float32(255)
    gray = (
        np.float32(0.299) * f[..., 0]
        + np.float32(0.587) * f[..., 1]
        + np.float32(0.114) * f[..., 2]
    )
    for name in ("c.png", "ca.png"):
        x = preprocess_file(tmp_path / name, 5, 7, 1, [0.0], [1.0])
        np.testing.assert_allclose(x[0], gray, atol=1e-6)
    g = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    x3 = preprocess_file(tmp_path / "g.png", 5, 7, 3, [0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    for c, (m, s) in enumerate([(0.1, 1.0), (0.2, 2.0), (0.3, 4.0)]):
        np.testing.assert_allclose(x3[c], (g / 255.0 - m) / s, atol=1e-6)


def test_resize_is_pillow_bilinear_on_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (97, 150), dtype=np.uint8)
    Image.fromarray(a, mode="L").save(tmp_path / "r.png")
    x = preprocess_file(tmp_path / "r.png", 112, 112, 1, [0.0], [1.0])
    ref = Image.fromarray(a.astype(np.float32) / np.float32(255), mode="F").resize(
        (112, 112), Image.Resampling.BILINEAR
    )
    np.testing.assert_array_equal(x[0], np.asarray(ref, dtype=np.float32))


def test_large_jpegs_are_decoded_at_reduced_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (640, 480), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "frame.jpg")
    x = preprocess_file(tmp_path / "frame.jpg", 112, 112, 1, [0.0], [1.0])
    with Image.open(tmp_path / "frame.jpg") as img:
        img.draft("L", (112, 112))
        assert img.size == (120, 160), "480 // 112 = 4: a quarter in both directions"
        quarter = np.asarray(img, dtype=np.float32) / np.float32(255)
    ref = Image.fromarray(quarter).resize((112, 112), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(x[0], np.asarray(ref, dtype=np.float32))
    with (tmp_path / "frame.jpg").open("rb") as file:
        np.testing.assert_array_equal(preprocess_file(file, 112, 112, 1, [0.0], [1.0]), x)
