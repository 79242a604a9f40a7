"""AOI-style text overlays burnt into inspection frames.

Many AOI machines print the unit id, the measured values and their call codes into every saved
frame. :func:`overlay_lines` writes such text for one unit and :func:`draw_overlay` prints it in
Pillow's built-in font (no font file to ship), optionally degraded (noise, blur) the way saved
frames are. The service reads it back with its OCR stage (``src/ocr``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


@dataclass(frozen=True)
class OverlayStyle:
    """How an overlay is printed: font size in pixels, corner, text and band grey levels."""

    font_size: int = 16
    corner: str = "top-left"  # top-left | bottom-left
    text_level: int = 255
    band_level: int | None = None  # a solid band behind the text; None: printed on the image
    margin: int = 6
    noise_sigma: float = 0.0  # Gaussian noise added after printing (grey levels)
    blur_radius: float = 0.0  # Gaussian blur after printing (pixels)


def overlay_lines(
    lot: str, position: str, dia: float, depth: float, offset: float, calls: list[str]
) -> list[str]:
    """The two overlay lines of one unit: its identity, then its measurements and calls."""
    return [
        f"LOT {lot} U {position}",
        f"D{dia:.1f} H{depth:.1f} OFS{offset:.1f} {' '.join(calls)}",
    ]


def draw_overlay(
    image: Image.Image, lines: list[str], style: OverlayStyle, seed: int = 0
) -> Image.Image:
    """A grey copy of ``image`` with ``lines`` printed in one corner, then degraded."""
    out = image.convert("L")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=style.font_size)
    step = int(style.font_size * 1.4)
    top = style.margin
    if style.corner == "bottom-left":
        top = out.height - style.margin - step * len(lines)
    for k, line in enumerate(lines):
        xy = (style.margin, top + k * step)
        if style.band_level is not None:
            left, upper, right, lower = draw.textbbox(xy, line, font=font)
            draw.rectangle((left - 3, upper - 3, right + 3, lower + 3), fill=int(style.band_level))
        draw.text(xy, line, fill=int(style.text_level), font=font)
    if style.blur_radius > 0:
        out = out.filter(ImageFilter.GaussianBlur(style.blur_radius))
    if style.noise_sigma > 0:
        rng = np.random.default_rng(seed)
        pixels = np.asarray(out, dtype=np.float64)
        noisy = pixels + rng.normal(0.0, style.noise_sigma, pixels.shape)
        out = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return out


def background(width: int, height: int, seed: int, level: float = 120.0) -> Image.Image:
    """A textured grey substrate of ``width`` x ``height`` to print on (seeded)."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(level, 10.0, (height, width))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
