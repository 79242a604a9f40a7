"""Does the heat map point at the defect? The pointing game on samples with a known region.

A map is a grid of g x g cells laid over the whole original image (the service stretches
the image to the model's input, so cell (i, j) covers rows [i H/g, (i+1) H/g) and columns
[j W/g, (j+1) W/g) of the original). The defect region is a union of discs [x, y, r] in
original pixels (from the synthetic generator).

* **hit**: the map's peak cell overlaps the region (the pointing game at the map's own
  resolution: a 7x7 map cannot point finer than one cell).
* **mass**: the share of the map's mass in the cells that overlap the region.
* **chance**: the share of cells that overlap the region (what a uniform or random map
  scores on both), reported beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Disc = tuple[float, float, float]


def region_cells(region: Sequence[Disc], grid: int, height: int, width: int) -> np.ndarray:
    """Boolean [grid, grid]: cells whose rectangle intersects any disc of the region."""
    out = np.zeros((grid, grid), dtype=bool)
    ch, cw = height / grid, width / grid
    for i in range(grid):
        y0, y1 = i * ch, (i + 1) * ch
        for j in range(grid):
            x0, x1 = j * cw, (j + 1) * cw
            for x, y, r in region:
                # distance from the disc centre to the rectangle
                dx = max(x0 - x, 0.0, x - x1)
                dy = max(y0 - y, 0.0, y - y1)
                if dx * dx + dy * dy <= r * r:
                    out[i, j] = True
                    break
    return out


def pointing_game(
    maps: np.ndarray,
    regions: Sequence[Sequence[Disc]],
    sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Per class and overall: hit rate, mean mass inside, chance level.

    ``maps`` [N, g, g]; ``regions``/``sizes`` ((height, width) of each original image) and
    ``labels`` per sample. Samples without a region are skipped."""
    g = maps.shape[1]
    per: dict[str, dict[str, list[float]]] = {}
    for m, reg, (h, w), lab in zip(maps, regions, sizes, labels, strict=True):
        if not reg:
            continue
        cells = region_cells(reg, g, h, w)
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        d = per.setdefault(lab, {"hit": [], "mass": [], "chance": []})
        d["hit"].append(float(cells[peak]))
        d["mass"].append(float(m[cells].sum() / max(m.sum(), 1e-12)))
        d["chance"].append(float(cells.mean()))
    out: dict[str, Any] = {}
    for lab, d in sorted(per.items()):
        out[lab] = {"n": len(d["hit"]), **{k: float(np.mean(v)) for k, v in d.items()}}
    return out


def summarize(pg: dict[str, Any], classes: Sequence[str]) -> dict[str, float]:
    """Pooled hit / mass / chance over ``classes`` (sample-weighted)."""
    n = sum(pg[c]["n"] for c in classes if c in pg)
    if n == 0:
        return {"n": 0, "hit": 0.0, "mass": 0.0, "chance": 0.0}
    res: dict[str, float] = {"n": n}
    for k in ("hit", "mass", "chance"):
        res[k] = sum(pg[c][k] * pg[c]["n"] for c in classes if c in pg) / n
    return res
