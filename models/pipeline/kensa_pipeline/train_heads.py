"""Training the head on cached frozen-tower features (pretrained towers).

Same objective, schedule and early stopping as :func:`kensa_pipeline.train.train_model`, but
each step runs only the head (``CmafHead``) on features from
:mod:`kensa_pipeline.features`, so a variant trains in seconds. Note dropout (TDA's "the
whole note dropped") swaps in the empty note's features; the other augmentations need the
towers and are not applied here.

Extra loss terms: the CAM classifier (a linear classifier on the patch tokens, whose
per-patch scores are the class activation map) learns by cross-entropy on its mean over
patches, weight ``cam_weight``.

Fine-tuning (``cfg.finetune_blocks > 0``, image-only): the last blocks of the EfficientNet
tower and its head conv (:class:`~kensa_pipeline.models.efficientnet.EfficientNetTail`) train
with the head, at ``cfg.finetune_lr``, on cached feature maps at the tail's input
(:func:`kensa_pipeline.features.extract_maps`); each batch's maps get a random flip/rotation
by 90 degrees when ``cfg.augment`` is set.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kensa_pipeline.anomaly import AnomalyData
from kensa_pipeline.evaluate import compute_metrics
from kensa_pipeline.features import FeatureSet
from kensa_pipeline.models.efficientnet import (
    EfficientNetEncoder,
    EfficientNetTail,
    dihedral,
    tuned_start,
)
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.pfa import PfaSchedule, progressive_info_nce


def _seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def head_outputs(
    model: KensaModel,
    feats: FeatureSet,
    idx: np.ndarray,
    empty_notes: bool = False,
    batch_size: int = 128,
    maps: torch.Tensor | None = None,
    anomaly: AnomalyData | None = None,
) -> dict[str, np.ndarray]:
    """Logits [N, C] and the maps [N, g, g] ("attention_cmaf", "attention_cam", and
    "attention_anomaly" for a head with an anomaly bank).

    With ``anomaly`` (a head with an anomaly bank) its precomputed summaries and distances
    are used (for rows outside the bank's groups they equal what the head computes).
    With ``maps`` (a fine-tuned model, ``spec.vision_tuned_from`` set) the image features
    come from the model's tower tail run on those cached maps, not from ``feats``."""
    model.eval()
    tail = tower_tail(model) if maps is not None else None
    out: dict[str, list[np.ndarray]] = {"logits": [], "attention_cmaf": [], "attention_cam": []}
    if model.head.anomaly is not None:
        out["attention_anomaly"] = []
    for s in range(0, len(idx), batch_size):
        bi = idx[s : s + batch_size]
        st, mk = feats.text(bi, empty=empty_notes)
        if tail is not None and maps is not None:
            patch, pooled = tail(maps[bi])
        else:
            patch, pooled = feats.patch[bi], feats.pooled[bi]
        anom = (anomaly.summary[bi], anomaly.dist[bi]) if anomaly is not None else None
        f = model.head.forward_features(patch, pooled, st, mk, anom)
        f["attention_anomaly"] = f.get("anomaly_map", f["attention"])
        for k in out:
            out[k].append(f[k].numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


@torch.no_grad()
def tuned_features(
    model: KensaModel, feats: FeatureSet, maps: torch.Tensor, batch_size: int = 64
) -> FeatureSet:
    """``feats`` with the image features of ``model``'s fine-tuned tower (run on ``maps``)."""
    from kensa_pipeline.features import with_vision

    tail = tower_tail(model).eval()
    patch, pooled = [], []
    for s in range(0, len(maps), batch_size):
        p, q = tail(maps[s : s + batch_size])
        patch.append(p)
        pooled.append(q)
    return with_vision(feats, torch.cat(patch), torch.cat(pooled))


def tower_tail(model: KensaModel) -> EfficientNetTail:
    """The fine-tuned part of ``model``'s EfficientNet tower (shares its modules)."""
    start = model.spec.vision_tuned_from
    if start is None or not isinstance(model.vision, EfficientNetEncoder):
        raise ValueError("the model's vision tower is not a fine-tuned EfficientNet")
    return EfficientNetTail(model.vision, start)


def train_head(
    spec: ModelSpec,
    feats: FeatureSet,
    y_all: np.ndarray,
    splits: dict[str, np.ndarray],
    cfg: Any,
    log: Any = None,
    init: dict[str, torch.Tensor] | None = None,
    maps: torch.Tensor | None = None,
    anomaly: AnomalyData | None = None,
) -> tuple[KensaModel, dict[str, Any]]:
    """Train ``spec``'s head on ``feats``; ``cfg`` is a :class:`~kensa_pipeline.train.TrainConfig`.

    The returned model's towers are not loaded (random); the head is what was trained.
    With ``maps`` (cached input maps of the last ``cfg.finetune_blocks`` blocks, image-only
    mode) the tower's pretrained weights are loaded and its tail trains with the head; the
    model's spec then records ``vision_tuned_from``.
    With ``anomaly`` (``spec.anomaly_bank`` > 0) the head's bank is loaded from it and
    training uses its precomputed, own-group-out summaries (kensa_pipeline.anomaly).
    """
    _seed(cfg.seed)
    tail: EfficientNetTail | None = None
    if maps is not None:
        if spec.mode != "image" or cfg.finetune_blocks < 1:
            raise ValueError("fine-tuning trains the image-only model (finetune_blocks >= 1)")
        spec = replace(spec, vision_tuned_from=tuned_start(cfg.finetune_blocks))
    model = KensaModel(spec, seed=cfg.seed)
    if spec.anomaly_bank:
        if anomaly is None or model.head.anomaly is None:
            raise ValueError("a head with an anomaly bank trains with anomaly data")
        model.head.anomaly.load(anomaly)
    if maps is not None:
        assert isinstance(model.vision, EfficientNetEncoder)
        model.vision.load_pretrained()
        model.vision.requires_grad_(False)
        tail = tower_tail(model)
        tail.requires_grad_(True)
    _seed(cfg.seed)
    if init is not None:
        # the head, and the fine-tuned tower part when this model has one (stage 2 over a
        # fine-tuned image-only model: the tuned tower stays as stage 1 left it)
        tuned = model.tuned_prefixes()
        head_init = {k: v for k, v in init.items() if k.startswith("head.") or k.startswith(tuned)}
        res = model.load_state_dict(head_init, strict=False)
        if res.unexpected_keys:
            raise ValueError(f"initial weights do not fit the model: {res.unexpected_keys[:5]}")
    head = model.head
    y = torch.from_numpy(y_all)
    tr, va = splits["train"], splits["val"]
    counts = np.bincount(y_all[tr], minlength=len(spec.labels)).astype(np.float64)
    w = (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** cfg.class_weight_power
    sampler = cfg.balance == "sampler"
    class_w = torch.tensor(np.ones_like(w) if sampler else w, dtype=torch.float32)
    draw_p = torch.tensor(w[y_all[tr]], dtype=torch.float64)
    params = [p for p in head.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]
    tail_params = [p for p in tail.parameters() if p.requires_grad] if tail else []
    if tail_params:
        groups += [
            {
                "params": [p for p in tail_params if p.ndim >= 2],
                "weight_decay": cfg.weight_decay,
                "tail": True,
            },
            {"params": [p for p in tail_params if p.ndim < 2], "weight_decay": 0, "tail": True},
        ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    tail_scale = cfg.finetune_lr / cfg.lr
    steps_per_epoch = max(1, int(np.ceil(len(tr) / cfg.batch_size)))
    total = steps_per_epoch * cfg.epochs
    warm = steps_per_epoch * cfg.warmup_epochs

    def lr_at(step: int) -> float:
        if step < warm:
            return float(cfg.lr * (step + 1) / warm)
        prog = (step - warm) / max(1, total - warm)
        return float(cfg.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, prog))))

    gen = torch.Generator().manual_seed(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    sched = PfaSchedule()
    use_pfa = cfg.pfa_weight > 0 and spec.mode in ("cmaf", "concat")
    normal_index = spec.labels.index(spec.normal_label)

    def validate() -> tuple[float, float]:
        logits = head_outputs(model, feats, va, maps=maps, anomaly=anomaly)["logits"]
        yv = y_all[va]
        vloss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(yv)))
        m = compute_metrics(yv, logits.argmax(1), spec.labels, normal_index)
        return float(m["macro_f1"]), vloss

    f1_start, loss_start = validate()
    best: dict[str, Any] = {"macro_f1": f1_start, "epoch": -1, "val_loss": loss_start}
    best_state = copy.deepcopy(head.state_dict())
    best_tail = copy.deepcopy(tail.state_dict()) if tail is not None else None
    history = []
    step = 0
    bad = 0
    t0 = time.time()
    for epoch in range(cfg.epochs):
        head.train()
        if sampler:
            perm = tr[torch.multinomial(draw_p, len(tr), replacement=True, generator=gen).numpy()]
        else:
            perm = tr[torch.randperm(len(tr), generator=gen).numpy()]
        frac = sched.fraction(epoch, cfg.epochs)
        tot_ce = tot_pfa = 0.0
        n_b = 0
        for s in range(0, len(perm), cfg.batch_size):
            bi = perm[s : s + cfg.batch_size]
            if len(bi) < 2:
                continue
            drop = nrng.random(len(bi)) < (cfg.p_drop_note if cfg.augment else 0.0)
            st, mk = feats.text(bi, empty=drop)
            yb = y[bi]
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * tail_scale if g.get("tail") else lr_at(step)
            if tail is not None and maps is not None:
                mb = maps[bi]
                if cfg.augment:
                    mb = dihedral(mb, torch.randint(0, 8, (len(bi),), generator=gen))
                patch, pooled = tail(mb)
            else:
                patch, pooled = feats.patch[bi], feats.pooled[bi]
            anom = (anomaly.summary[bi], anomaly.dist[bi]) if anomaly is not None else None
            f = head.forward_features(patch, pooled, st, mk, anom)
            ce = F.cross_entropy(
                f["logits"], yb, weight=class_w, label_smoothing=cfg.label_smoothing
            )
            loss = ce
            if spec.mode == "cmaf" and cfg.image_aux_weight > 0:
                aux = F.cross_entropy(
                    head.classifier(f["img_vec"]),
                    yb,
                    weight=class_w,
                    label_smoothing=cfg.label_smoothing,
                )
                loss = loss + cfg.image_aux_weight * aux
            if spec.mode != "text" and cfg.cam_weight > 0:
                cam = F.cross_entropy(
                    f["cam_logits"], yb, weight=class_w, label_smoothing=cfg.label_smoothing
                )
                loss = loss + cfg.cam_weight * cam
            if use_pfa:
                valid = f["has_content"][:, 0] > 0
                pfa = progressive_info_nce(
                    f["img_vec"], f["txt_vec"], yb, valid, frac, cfg.pfa_temperature
                )
                loss = loss + cfg.pfa_weight * pfa
                tot_pfa += float(pfa.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if tail_params:
                torch.nn.utils.clip_grad_norm_(tail_params, 1.0)
            opt.step()
            step += 1
            tot_ce += float(ce.detach())
            n_b += 1
        f1, vloss = validate()
        rec = {
            "epoch": epoch,
            "train_ce": tot_ce / max(1, n_b),
            "train_pfa": tot_pfa / max(1, n_b),
            "pfa_fraction": frac,
            "val_loss": vloss,
            "val_macro_f1": f1,
            "seconds": round(time.time() - t0, 1),
        }
        history.append(rec)
        if log is not None:
            print(json.dumps(rec), file=log, flush=True)
        improved = f1 > best["macro_f1"] + 1e-9 or (
            abs(f1 - best["macro_f1"]) <= 1e-9 and vloss < best["val_loss"]
        )
        if improved:
            best = {"macro_f1": f1, "epoch": epoch, "val_loss": vloss}
            best_state = copy.deepcopy(head.state_dict())
            if tail is not None:
                best_tail = copy.deepcopy(tail.state_dict())
            bad = 0
        else:
            bad += 1
            if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                break
    head.load_state_dict(best_state)
    if tail is not None and best_tail is not None:
        tail.load_state_dict(best_tail)
    model.eval()
    return model, {"best": best, "history": history, "seconds": round(time.time() - t0, 1)}


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    train: np.ndarray,
    l2: float = 1e-3,
    steps: int = 300,
    balanced: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L-BFGS, L2) on standardised features.

    The "floor" probe of the issue: global-average-pooled frozen features, no head. Returns
    (weights [D, C], bias [C], (mean, std) stacked [2, D]) fitted on ``train`` rows."""
    xt = torch.from_numpy(x[train]).double()
    mu = xt.mean(0)
    sd = xt.std(0).clamp(min=1e-6)
    xs = (xt - mu) / sd
    yt = torch.from_numpy(y[train])
    counts = torch.bincount(yt, minlength=n_classes).double()
    cw = (
        counts.sum() / (n_classes * counts.clamp(min=1))
        if balanced
        else torch.ones(n_classes, dtype=torch.float64)
    )
    w = torch.zeros(xs.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, yt, weight=cw) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy(), torch.stack([mu, sd]).numpy()


def probe_logits(x: np.ndarray, fit: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    w, b, norm = fit
    return np.asarray(((x - norm[0]) / norm[1]) @ w + b)
