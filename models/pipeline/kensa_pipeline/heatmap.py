"""Heat-map pictures for the model card: the original image with both maps over it.

One fixed colour scale for every picture: a cell's colour is its share of the map times the
number of cells (1 = what a uniform map gives every cell), clipped at ``SCALE_MAX``; so a
diffuse map stays dark and only a focused one turns hot. The true defect region (generator)
is drawn as white circles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kensa_pipeline.data.formats import Dataset

SCALE_MAX = 8.0
UPSCALE = 3


def _colormap(v: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 (black -> red -> yellow -> white)."""
    r = np.clip(v * 3, 0, 1)
    g = np.clip(v * 3 - 1, 0, 1)
    b = np.clip(v * 3 - 2, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: Path, amap: np.ndarray, region: Any, title: str) -> Image.Image:
    with Image.open(image) as im:
        gray = im.convert("L")
    w, h = gray.size[0] * UPSCALE, gray.size[1] * UPSCALE
    base = np.asarray(gray.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    n = amap.size
    rel = np.asarray(amap, dtype=np.float32) * n / SCALE_MAX
    up = Image.fromarray(np.clip(rel, 0, 1).astype(np.float32), mode="F").resize(
        (w, h), Image.Resampling.BILINEAR
    )
    heat = _colormap(np.asarray(up))
    mix = (0.55 * base[..., None] * 255 + 0.45 * heat).clip(0, 255).astype(np.uint8)
    out = Image.fromarray(mix, mode="RGB")
    d = ImageDraw.Draw(out)
    for x, y, r in region or []:
        x, y, r = x * UPSCALE, y * UPSCALE, r * UPSCALE
        d.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255), width=2)
    d.rectangle([0, 0, w, 14], fill=(0, 0, 0))
    d.text((3, 1), title, fill=(255, 255, 255))
    return out


def legend(width: int) -> Image.Image:
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (12, 1))
    im = Image.new("RGB", (width, 28), (0, 0, 0))
    im.paste(Image.fromarray(_colormap(ramp), mode="RGB"), (0, 0))
    d = ImageDraw.Draw(im)
    d.text((2, 14), "0", fill=(255, 255, 255))
    d.text((width // 2 - 30, 14), f"x uniform (max {SCALE_MAX:g})", fill=(255, 255, 255))
    return im


def save_overlays(
    folder: Path,
    ds: Dataset,
    idx: np.ndarray,
    outputs: dict[str, np.ndarray],
    shipped: str,
    out_dir: Path,
    classes: tuple[str, ...] = ("void", "residue"),
) -> list[str]:
    """For one test sample of each class in ``classes`` (the most confident right one), a
    PNG with the CAM and the CMAF map side by side. Returns the written paths (relative to
    ``folder``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ds.names
    logits = outputs["logits"]
    written = []
    for cls in classes:
        ci = names.index(cls)
        best, best_p = None, -1.0
        for k, i in enumerate(idx):
            s = ds.samples[int(i)]
            if s.label != cls or not s.region:
                continue
            z = logits[k] - logits[k].max()
            p = np.exp(z) / np.exp(z).sum()
            if int(p.argmax()) == ci and p[ci] > best_p:
                best, best_p = k, float(p[ci])
        if best is None:
            continue
        s = ds.samples[int(idx[best])]
        panels = []
        maps = [("attention_cam", "CAM"), ("attention_cmaf", "CMAF attention")]
        if "attention_anomaly" in outputs:
            maps.append(("attention_anomaly", "anomaly"))
        for key, title in maps:
            tag = " (shipped)" if key.endswith(shipped) else ""
            panels.append(
                overlay(s.image, outputs[key][best], s.region, f"{cls} p={best_p:.2f} {title}{tag}")
            )
        w = sum(p.width for p in panels) + 6
        h = panels[0].height + 30
        pic = Image.new("RGB", (w, h), (0, 0, 0))
        x = 0
        for p in panels:
            pic.paste(p, (x, 0))
            x += p.width + 6
        pic.paste(legend(w), (0, panels[0].height + 2))
        path = out_dir / f"heatmap_{cls}.png"
        pic.save(path, optimize=True)
        written.append(str(path.relative_to(folder)))
    return written
