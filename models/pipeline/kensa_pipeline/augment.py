"""TDA: task-specific data augmentation for AOI images and machine notes.

Image side (on the preprocessed, normalized [B, C, H, W] batch; everything label-preserving
for top-view AOI crops): random flips and 90-degree rotations, small rotations (+-6 deg) and
shifts (+-4 px, reflection padding, mimics misalignment), brightness/contrast jitter
(illumination and gain drift), occasional defocus blur and sensor noise.

Note side: the whole note dropped (p_drop_note; teaches the model to fall back to the image
and keeps the fused model usable when the operator wrote nothing), single fields dropped,
measurement order shuffled, measurements jittered by a small relative amount (+-1.5%, gauge
noise), and the unit spelling swapped (µm / um).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_NUM = re.compile(r"(?<![A-Za-z])(\d+\.\d+)")


def augment_images(x: Tensor, gen: torch.Generator, strength: float = 1.0) -> Tensor:
    """Random label-preserving transforms of a normalized image batch."""
    b = x.shape[0]
    out = x.clone()
    # flips and 90-degree rotations (per sample)
    for i in range(b):
        r = torch.rand(3, generator=gen)
        xi = out[i]
        if r[0] < 0.5:
            xi = xi.flip(-1)
        if r[1] < 0.5:
            xi = xi.flip(-2)
        k = int(r[2] * 4) % 4
        if k and xi.shape[-1] == xi.shape[-2]:
            xi = torch.rot90(xi, k, dims=(-2, -1))
        out[i] = xi
    # small rotation + shift (affine grid, reflection padding)
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(6) * strength
    h, w = x.shape[-2:]
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * 4.0 * strength
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin, shift[:, 0] * 2 / w
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # contrast / brightness (normalized units)
    c = 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.15 * strength
    br = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.25 * strength
    out = out * c + br
    # defocus blur on ~30% of samples
    sel = torch.rand(b, generator=gen) < 0.3 * strength
    if sel.any():
        sigma = 0.4 + 0.6 * float(torch.rand(1, generator=gen))
        t = torch.arange(-2, 3, dtype=torch.float32)
        k1 = torch.exp(-(t**2) / (2 * sigma**2))
        k1 = k1 / k1.sum()
        ch = out.shape[1]
        kx = k1.view(1, 1, 1, 5).repeat(ch, 1, 1, 1)
        ky = k1.view(1, 1, 5, 1).repeat(ch, 1, 1, 1)
        blurred = F.conv2d(F.pad(out[sel], (2, 2, 0, 0), mode="reflect"), kx, groups=ch)
        blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), ky, groups=ch)
        out[sel] = blurred
    # sensor noise
    sig = torch.rand(b, 1, 1, 1, generator=gen) * 0.08 * strength
    out = out + sig * torch.randn(out.shape, generator=gen)
    return out


def augment_note(note: str, rng: np.random.Generator, p_drop_note: float = 0.15) -> str:
    """Perturb one note (see module docstring)."""
    if not note:
        return note
    if rng.random() < p_drop_note:
        return ""
    parts = [p for p in note.split("; ") if p]
    kept = [p for p in parts if rng.random() >= 0.12]
    parts = kept if kept else parts[:1]
    out = []
    for p in parts:
        if "," in p and rng.random() < 0.3:
            fields = p.split(", ")
            rng.shuffle(fields)
            p = ", ".join(fields)
        out.append(p)
    s = "; ".join(out)

    def jitter(m: re.Match[str]) -> str:
        v = float(m.group(1))
        if rng.random() < 0.5:
            v *= 1 + rng.uniform(-0.015, 0.015)
        return f"{v:.1f}"

    s = _NUM.sub(jitter, s)
    if rng.random() < 0.3:
        s = s.replace("µm", "um") if "µm" in s else s.replace("um", "µm")
    return s
