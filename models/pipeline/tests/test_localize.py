"""Pointing game geometry and the CAM map of the head."""

from __future__ import annotations

import numpy as np
import torch

from kensa_pipeline.localize import pointing_game, region_cells, summarize
from kensa_pipeline.models.cmaf import CmafHead


def test_region_cells_and_pointing_game() -> None:
    cells = region_cells([(10.0, 10.0, 3.0)], 7, 128, 128)  # top-left cell only
    assert cells.sum() == 1 and cells[0, 0]
    cells = region_cells([(64.0, 64.0, 20.0)], 7, 128, 128)
    assert cells[3, 3] and cells.sum() == 9
    hit = np.zeros((7, 7), np.float32)
    hit[0, 0] = 1.0
    miss = np.full((7, 7), 1 / 49, np.float32)
    miss[6, 6] = 0.5
    pg = pointing_game(
        np.stack([hit, miss]), [[(10, 10, 3)], [(10, 10, 3)]], [(128, 128)] * 2, ["void", "void"]
    )
    assert pg["void"]["n"] == 2 and pg["void"]["hit"] == 0.5
    assert summarize(pg, ("void", "residue"))["n"] == 2


def test_cam_map_points_at_the_evidence() -> None:
    torch.manual_seed(0)
    head = CmafHead(
        16, 8, 3, (2, 2), dim=8, heads=2, mode="image", normal_index=0, attention_map="cam"
    )
    patch = torch.zeros(1, 4, 16)
    patch[0, 2] = 3.0  # one patch stands out
    with torch.no_grad():
        f = head.forward_features(
            patch, patch.mean(1), torch.zeros(1, 2, 8), torch.ones(1, 2, dtype=torch.long)
        )
    cam = f["attention"][0]
    assert torch.all(cam >= 0) and abs(float(cam.sum()) - 1) < 1e-5
    assert f["attention"].shape == (1, 2, 2)
    # the CAM is the linear patch classifier's evidence: its peak is the odd patch or uniform
    assert int(cam.flatten().argmax()) == 2 or float(cam.max() - cam.min()) < 1e-6
