"""PFA: progressive feature alignment of image and note features.

What is implemented (and why)
-----------------------------
*Projections.* ``PfaProjection`` maps vision tokens (width Dv) and text token states (width
Dt) into one shared space of width Dp with a LayerNorm + Linear per modality. The same
projection is used for the patch tokens (consumed by CMAF) and for the global vectors used
by the contrastive loss, so aligning the global vectors also aligns the space CMAF attends in.
Global vectors: image = projected ``pooled``; note = masked mean of projected token states.

*Loss.* Symmetric InfoNCE (image->note and note->image cross-entropy over cosine
similarities / temperature), as in CLIP, but restricted to a *curriculum* of pairs:

1. **Self-similarity ranking.** For the batch, compute the image-image similarity matrix
   S_img and the note-note matrix S_txt (cosine, on detached projected features). For each
   sample i, the *agreement* a_i is the Pearson correlation of the ranks of row i of S_img and
   row i of S_txt (over j != i): when the neighbours of the image and of its note are the same
   samples, the pair is consistent and "easy" to align; a low agreement marks a hard or noisy
   pair (a wrong note, an unusual image).
2. **Easy positives first.** Only the top ``pos_frac`` of the samples by a_i act as anchors
   (their own (image_i, note_i) is the positive pair).
3. **Easy negatives first.** For an anchor i, candidate negatives are the notes/images of the
   other samples j, ranked by ``S_img[i,j] + S_txt[i,j]`` (most dissimilar = easiest). Only
   the ``neg_frac`` easiest are kept; the rest are masked out of the softmax. Samples of the
   *same class* are never used as negatives (they are not true negatives when labels are
   known), and samples with an empty note take no part.
4. **Widening in stages.** ``PfaSchedule`` raises ``pos_frac`` and ``neg_frac`` stage by stage
   (default 0.25 -> 0.5 -> 0.75 -> 1.0 over the training epochs), so the alignment starts
   from a few easy pairs and ends as the full symmetric InfoNCE over all valid pairs.

This follows the description in Hsu et al. (arXiv 2404.05183): PFA starts from a few easy
positive/negative pairs picked by self-similarity ranking and widens progressively; the
exact ranking statistic (rank correlation of the two self-similarity rows) and the stage
schedule are our choices, since the paper does not pin them down to code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PfaProjection(nn.Module):
    """Per-modality projection into the shared alignment space."""

    def __init__(self, vision_width: int, text_width: int, dim: int) -> None:
        super().__init__()
        self.img_norm = nn.LayerNorm(vision_width)
        self.img_proj = nn.Linear(vision_width, dim)
        self.txt_norm = nn.LayerNorm(text_width)
        self.txt_proj = nn.Linear(text_width, dim)

    def image(self, x: Tensor) -> Tensor:
        """Project image tokens [.., Dv] -> [.., Dp]."""
        return self.img_proj(self.img_norm(x))

    def text(self, x: Tensor) -> Tensor:
        """Project text token states [.., Dt] -> [.., Dp]."""
        return self.txt_proj(self.txt_norm(x))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of x [B,T,D] using mask [B,T] (1 = valid)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


@dataclass(frozen=True)
class PfaSchedule:
    """Fractions of anchors/negatives used per stage; stages split the epochs evenly."""

    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)

    def fraction(self, epoch: int, epochs: int) -> float:
        stage = min(len(self.fractions) - 1, epoch * len(self.fractions) // max(1, epochs))
        return self.fractions[stage]


def _rank(x: Tensor) -> Tensor:
    """Ranks along the last dim (0..n-1) as float."""
    return x.argsort(dim=-1).argsort(dim=-1).to(torch.float32)


def self_similarity_agreement(img: Tensor, txt: Tensor) -> Tensor:
    """a_i: rank correlation between row i of S_img and row i of S_txt (j != i). Shape [B]."""
    b = img.shape[0]
    zi = F.normalize(img.detach(), dim=-1)
    zt = F.normalize(txt.detach(), dim=-1)
    s_img = zi @ zi.T
    s_txt = zt @ zt.T
    off = ~torch.eye(b, dtype=torch.bool, device=img.device)
    ri = _rank(s_img[off].view(b, b - 1))
    rt = _rank(s_txt[off].view(b, b - 1))
    ri = ri - ri.mean(dim=1, keepdim=True)
    rt = rt - rt.mean(dim=1, keepdim=True)
    return (ri * rt).sum(1) / (ri.norm(dim=1) * rt.norm(dim=1)).clamp(min=1e-6)


def progressive_info_nce(
    img: Tensor,
    txt: Tensor,
    labels: Tensor,
    valid: Tensor,
    fraction: float,
    temperature: float = 0.1,
) -> Tensor:
    """Symmetric InfoNCE over a curriculum of easy pairs (see module docstring).

    img, txt: [B, Dp] global embeddings; labels: [B]; valid: [B] bool (note not empty);
    fraction: share of anchors and of negatives kept (1.0 = plain supervised InfoNCE).
    """
    idx = valid.nonzero(as_tuple=True)[0]
    if idx.numel() < 3:
        return img.sum() * 0.0
    img, txt, labels = img[idx], txt[idx], labels[idx]
    b = img.shape[0]
    zi = F.normalize(img, dim=-1)
    zt = F.normalize(txt, dim=-1)
    logits = zi @ zt.T / temperature  # [B, B]: row = image anchor, column = note

    with torch.no_grad():
        eye = torch.eye(b, dtype=torch.bool, device=img.device)
        same = labels[:, None] == labels[None, :]
        # Easy negatives: least similar in both modalities.
        di = F.normalize(img.detach(), dim=-1)
        dt = F.normalize(txt.detach(), dim=-1)
        hardness = di @ di.T + dt @ dt.T
        hardness = hardness.masked_fill(same | eye, float("inf"))
        n_neg_avail = (~(same | eye)).sum(1)
        k = (n_neg_avail.to(torch.float32) * fraction).ceil().clamp(min=1).to(torch.long)
        order = hardness.argsort(dim=1)  # easiest first
        rank_of = order.argsort(dim=1)
        neg_keep = (rank_of < k[:, None]) & ~(same | eye)
        keep = neg_keep | eye  # the positive stays in every row
        # Easy positives: highest agreement of the two self-similarity rankings.
        agree = self_similarity_agreement(img, txt)
        n_anchor = max(2, int(round(b * fraction)))
        anchors = agree.argsort(descending=True)[:n_anchor]

    neg_inf = torch.finfo(logits.dtype).min
    target = torch.arange(b, device=img.device)
    l_i2t = logits.masked_fill(~keep, neg_inf)
    l_t2i = logits.T.masked_fill(~keep.T, neg_inf)
    loss_i2t = F.cross_entropy(l_i2t[anchors], target[anchors])
    loss_t2i = F.cross_entropy(l_t2i[anchors], target[anchors])
    return 0.5 * (loss_i2t + loss_t2i)
