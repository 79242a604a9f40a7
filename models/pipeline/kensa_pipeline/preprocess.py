"""Reference image preprocessing (the contract the Rust service reimplements).

1. Decode; float32 in [0, 1]: 8-bit samples / 255, 16-bit samples / 65535. Alpha dropped,
   palette expanded to RGB. A JPEG at least twice the model's size in both directions is
   decoded at reduced scale by libjpeg (``Image.draft``: 1/2, 1/4 or 1/8 in the inverse DCT,
   the largest that keeps both sides at least the model's), as the service decodes it.
2. ``gray`` (1 channel): RGB -> 0.299 R + 0.587 G + 0.114 B in float32; gray stays as is.
   ``rgb`` (3 channels): gray is replicated to 3 channels.
3. Each channel resized to (height, width), stretched, with Pillow's antialiased BILINEAR
   convolution on float32 ("F" images).
4. (x - mean[c]) / std[c]; NCHW float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_unit(img: Image.Image) -> np.ndarray:
    """Decoded samples as float32 [H, W, C] in [0, 1], C = 1 (gray) or 3 (RGB)."""
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        mode = img.mode
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        mode = "RGB"
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float32) / np.float32(65535.0)
        return arr[:, :, None]
    if mode == "I":
        # Pillow opens some 16-bit gray files as 32-bit "I"; their samples are 0..65535.
        arr = np.asarray(img).astype(np.float32) / np.float32(65535.0)
        return arr[:, :, None]
    if mode in ("L", "LA"):
        arr = np.asarray(img.getchannel(0)).astype(np.float32) / np.float32(255.0)
        return arr[:, :, None]
    if mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(img).astype(np.float32)[:, :, :3] / np.float32(255.0)
        return arr
    raise ValueError(f"unsupported image mode {mode!r}")


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert [H, W, 1|3] to the model's channel count (step 2)."""
    if channels == 1:
        if x.shape[2] == 1:
            return x
        r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
        gray = np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b
        return gray.astype(np.float32)[:, :, None]
    if channels == 3:
        return x if x.shape[2] == 3 else np.repeat(x, 3, axis=2)
    raise ValueError("channels must be 1 or 3")


def resize_channel(ch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow antialiased bilinear resize of one float32 channel (step 3)."""
    im = Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32), mode="F")
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def preprocess_image(
    img: Image.Image,
    height: int,
    width: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """One decoded image -> normalized float32 tensor [C, H, W]."""
    x = to_channels(decode_unit(img), channels)
    out = np.empty((channels, height, width), dtype=np.float32)
    for c in range(channels):
        r = resize_channel(x[:, :, c], height, width)
        out[c] = (r - np.float32(mean[c])) / np.float32(std[c])
    return out


def preprocess_file(
    path: str | Path | BinaryIO,
    height: int,
    width: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Image file (a path or an open binary file) -> normalized float32 tensor [C, H, W] (the
    service's exact reference)."""
    with Image.open(path) as img:
        img.draft(img.mode, (width, height))
        img.load()
        return preprocess_image(img, height, width, channels, mean, std)
