"""Anomaly score against a memory bank of normal patches (PatchCore-style), for the head.

With the ``efficientnet-lite0-mid`` tower every patch token starts with 112 stage-5 channels
(stride 16, 3x3-averaged; :func:`kensa_pipeline.models.efficientnet.mid_tokens`). Mid-level
features describe local texture; small defects (blowholes, cracks) that vanish in the global
mean of the last map stand out as patches far from every patch of a normal unit.

* **Bank**: the mid-level patches of the *training* split's normal samples, divided by one
  scale (their mean norm), subsampled by a greedy k-center coreset (Sener & Savarese 2018;
  PatchCore, Roth et al. 2022) computed on a random 64-d projection, to ``size`` patches.
  It becomes a constant of ``head.onnx`` (``size`` x 112 float32: 1.8 MB for 4096).
* **Per-patch distance**: Euclidean distance to the nearest bank patch (the heat map).
* **Summary** (``3 + 112`` values): max, mean of the 3 largest and mean of the per-patch
  distances, and the mean mid-level feature of the 5 most distant patches (what the anomaly
  looks like, for the defect class). The head standardises it with the training rows'
  mean/std and adds a linear map of it to the image vector (:class:`AnomalyScore`).
* **Leave-own-group-out**: a training normal's own patches are in the bank, so its distances
  would be ~0, a distribution never seen on new units. For training rows the distances are
  computed with the bank patches of the sample's own group (its tile / part) masked out
  (:func:`anomaly_data`); rows whose group contributed nothing (validation, test) are scored
  against the whole bank, exactly what the exported head computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

STATS = 3  # max, mean of the top 3, mean over patches
TOP_PATCHES = 5


def greedy_coreset(x: Tensor, size: int, seed: int = 0, proj_dim: int = 64) -> Tensor:
    """Indices of ``size`` rows of ``x`` [M, d] chosen by greedy k-center selection (each
    step adds the row farthest from those chosen), on a seeded random projection to
    ``proj_dim`` dims. All rows when ``size >= M``."""
    m = x.shape[0]
    if size >= m:
        return torch.arange(m)
    gen = torch.Generator().manual_seed(seed)
    proj = x @ (torch.randn(x.shape[1], proj_dim, generator=gen) / proj_dim**0.5)
    first = int(torch.randint(m, (1,), generator=gen))
    sel = [first]
    d = ((proj - proj[first]) ** 2).sum(1)
    for _ in range(size - 1):
        i = int(d.argmax())
        sel.append(i)
        d = torch.minimum(d, ((proj - proj[i]) ** 2).sum(1))
    return torch.tensor(sel, dtype=torch.int64)


def nearest_distance(
    q: Tensor,
    bank: Tensor,
    q_group: Tensor | None = None,
    bank_group: Tensor | None = None,
    chunk: int = 4096,
) -> Tensor:
    """Euclidean distance of every row of ``q`` [Q, d] to its nearest row of ``bank``
    [M, d]; with groups, bank rows of the query's own group are excluded."""
    bb = (bank * bank).sum(1)
    out = []
    for s in range(0, q.shape[0], chunk):
        qq = q[s : s + chunk]
        d2 = (qq * qq).sum(1, keepdim=True) + bb[None] - 2.0 * qq @ bank.T
        if q_group is not None and bank_group is not None:
            d2 = d2.masked_fill(q_group[s : s + chunk, None] == bank_group[None], float("inf"))
        out.append(d2.min(dim=1).values.clamp(min=0).sqrt())
    return torch.cat(out)


def summarize(dist: Tensor, mid: Tensor) -> Tensor:
    """Per-sample summary of per-patch distances ``dist`` [B, N] and (scaled) mid-level
    patches ``mid`` [B, N, d]: [max, mean of top 3, mean, mean feature of the top 5] ->
    [B, 3 + d]."""
    k3 = min(3, dist.shape[1])
    k5 = min(TOP_PATCHES, dist.shape[1])
    top, idx = torch.topk(dist, k5, dim=1)
    feats = torch.gather(mid, 1, idx.unsqueeze(-1).expand(-1, -1, mid.shape[2])).mean(dim=1)
    stats = torch.stack([top[:, 0], top[:, :k3].mean(dim=1), dist.mean(dim=1)], dim=1)
    return torch.cat([stats, feats], dim=1)


class AnomalyScore(nn.Module):
    """The head's anomaly module: bank, scale and input standardisation are buffers (saved
    with the head, constants of ``head.onnx``), filled by :meth:`load` before training."""

    bank: Tensor
    scale: Tensor
    in_mean: Tensor
    in_std: Tensor
    patch_ref: Tensor

    def __init__(self, bank_size: int, mid_dim: int, dim: int) -> None:
        super().__init__()
        self.mid_dim = mid_dim
        self.register_buffer("bank", torch.zeros(bank_size, mid_dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("in_mean", torch.zeros(STATS + mid_dim))
        self.register_buffer("in_std", torch.ones(STATS + mid_dim))
        self.register_buffer("patch_ref", torch.zeros(()))
        self.proj = nn.Linear(STATS + mid_dim, dim)

    def load(self, data: AnomalyData) -> None:
        if tuple(data.bank.shape) != tuple(self.bank.shape):
            raise ValueError(f"bank {tuple(data.bank.shape)} != {tuple(self.bank.shape)}")
        self.bank.copy_(data.bank)
        self.scale.fill_(data.scale)
        self.in_mean.copy_(data.in_mean)
        self.in_std.copy_(data.in_std)
        self.patch_ref.fill_(data.patch_ref)

    def mid(self, patch_tokens: Tensor) -> Tensor:
        return patch_tokens[:, :, : self.mid_dim] / self.scale

    def forward(self, patch_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Patch tokens [B, N, D] -> (summary [B, 3 + d], per-patch distances [B, N])."""
        mid = self.mid(patch_tokens)
        b, n, d = mid.shape
        dist = nearest_distance(mid.reshape(b * n, d), self.bank, chunk=1 << 30).reshape(b, n)
        return summarize(dist, mid), dist

    def vector(self, summary: Tensor) -> Tensor:
        """What is added to the image vector: a linear map of the standardised summary."""
        return self.proj((summary - self.in_mean) / self.in_std)  # type: ignore[no-any-return]

    def heat_map(self, dist: Tensor) -> Tensor:
        """relu(distance - patch_ref) normalised to sum 1 (uniform when no patch is farther
        from the bank than ``patch_ref``, the training normals' 99th percentile)."""
        m = torch.relu(dist - self.patch_ref)
        eps = 1e-6
        return (m + eps / m.shape[1]) / (m.sum(dim=1, keepdim=True) + eps)


@dataclass
class AnomalyData:
    """A bank and the training inputs of :class:`AnomalyScore` for one training split."""

    bank: Tensor  # [M, d], scaled
    scale: float
    in_mean: Tensor  # [3 + d]
    in_std: Tensor
    patch_ref: float
    summary: Tensor  # [N_all, 3 + d]: every sample, own group left out for bank members
    dist: Tensor  # [N_all, P]


def anomaly_data(
    patch: Tensor,
    groups: list[str],
    bank_rows: np.ndarray,
    train_rows: np.ndarray,
    mid_dim: int,
    size: int = 4096,
    seed: int = 0,
) -> AnomalyData:
    """Bank from the mid-level patches of ``bank_rows`` (the training split's normals) and
    the summary of every sample (see the module doc: own group masked for its members);
    standardisation from ``train_rows``."""
    n, p, _ = patch.shape
    gid_of = {g: i for i, g in enumerate(sorted(set(groups)))}
    gid = torch.tensor([gid_of[g] for g in groups], dtype=torch.int64)
    mid_all = patch[:, :, :mid_dim].float()
    br = torch.from_numpy(np.asarray(bank_rows, dtype=np.int64))
    scale = float(mid_all[br].norm(dim=2).mean())
    cand = (mid_all[br] / scale).reshape(-1, mid_dim)
    cand_group = gid[br].repeat_interleave(p)
    sel = greedy_coreset(cand, size, seed)
    bank, bank_group = cand[sel].contiguous(), cand_group[sel]
    in_bank = torch.zeros(len(gid_of), dtype=torch.bool)
    in_bank[bank_group] = True
    summary = torch.empty(n, STATS + mid_dim)
    dist = torch.empty(n, p)
    for s in range(0, n, 64):
        mid = mid_all[s : s + 64] / scale
        b = mid.shape[0]
        qg = gid[s : s + 64].repeat_interleave(p)
        masked = bool(in_bank[gid[s : s + 64]].any())
        d = nearest_distance(
            mid.reshape(b * p, mid_dim),
            bank,
            qg if masked else None,
            bank_group if masked else None,
        ).reshape(b, p)
        dist[s : s + b] = d
        summary[s : s + b] = summarize(d, mid)
    tr = torch.from_numpy(np.asarray(train_rows, dtype=np.int64))
    mu = summary[tr].mean(0)
    sd = summary[tr].std(0).clamp(min=1e-6)
    ref = float(torch.quantile(dist[br].flatten(), 0.99))
    return AnomalyData(bank, scale, mu, sd, ref, summary, dist)
