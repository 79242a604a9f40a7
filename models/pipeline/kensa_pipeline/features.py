"""Frozen-tower features, computed once per dataset and cached.

With pretrained towers frozen (the paper's setting) only the head trains, so every image and
every note goes through its tower once. The features come from the *exported* tower graphs
(``vision.onnx`` / ``text.onnx`` run by onnxruntime, with the reference preprocessing and
tokenizer), i.e. exactly what the service computes; the head is trained on what it will see.

Cache: ``<cache>/features-<key>.npz``, the key hashing both graphs' bytes, the image
preprocessing, the tokenizer, max_tokens and every sample's image path, size, mtime and
note. Any change recomputes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kensa_pipeline.data.formats import Dataset, Sample
from kensa_pipeline.preprocess import preprocess_file
from kensa_pipeline.tokenizer import encode_batch, load_tokenizer


@dataclass
class FeatureSet:
    """Tower outputs for every sample of a dataset (indexed like ``ds.samples``)."""

    patch: torch.Tensor  # [N, P, Dv]
    pooled: torch.Tensor  # [N, Dv]
    states: torch.Tensor  # [N, T, Dt] (padded to the longest note)
    mask: torch.Tensor  # [N, T] int64
    empty_states: torch.Tensor  # [T, Dt]: the empty note ([CLS] [SEP]) padded to T
    empty_mask: torch.Tensor  # [T]

    def text(self, idx: np.ndarray, empty: bool | np.ndarray = False) -> tuple[torch.Tensor, ...]:
        """Token states and mask of ``idx``; rows where ``empty`` is set get the empty note."""
        st = self.states[idx].clone()
        mk = self.mask[idx].clone()
        e = np.array(np.broadcast_to(np.asarray(empty, dtype=bool), (len(idx),)))
        if e.any():
            sel = torch.from_numpy(e)
            st[sel] = self.empty_states
            mk[sel] = self.empty_mask
        # trim to the longest row of this batch (what the service sends)
        t = int(mk.sum(dim=1).max())
        return st[:, :t], mk[:, :t]


def preprocess_batch(samples: list[Sample], image: dict[str, Any]) -> np.ndarray:
    """The samples' images as one model-input batch, by the manifest's image section."""
    return np.stack(
        [
            preprocess_file(
                x.image,
                image["height"],
                image["width"],
                image["channels"],
                image["mean"],
                image["std"],
            )
            for x in samples
        ]
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(
    ds: Dataset, towers: Path, image: dict[str, Any], tokenizer: Path, max_tokens: int
) -> str:
    h = hashlib.sha256()
    h.update(_sha(towers / "vision.onnx").encode())
    h.update(_sha(towers / "text.onnx").encode())
    h.update(_sha(tokenizer).encode())
    h.update(json.dumps([image, max_tokens], sort_keys=True).encode())
    for s in ds.samples:
        st = s.image.stat()
        h.update(f"{s.image}|{st.st_size}|{st.st_mtime_ns}|{s.note}\n".encode())
    return h.hexdigest()[:20]


def extract_features(
    ds: Dataset,
    towers: Path,
    image: dict[str, Any],
    tokenizer: Path,
    max_tokens: int,
    cache_dir: Path | None = None,
    threads: int = 1,
    batch: int = 16,
    log: Any = sys.stderr,
) -> FeatureSet:
    """Run the tower graphs in ``towers`` over every sample of ``ds`` (cached)."""
    import onnxruntime as ort

    path = None
    if cache_dir is not None:
        key = cache_key(ds, towers, image, tokenizer, max_tokens)
        path = Path(cache_dir) / f"features-{key}.npz"
        if path.exists():
            z = np.load(path)
            return FeatureSet(*(torch.from_numpy(z[k]) for k in _KEYS))
    t0 = time.time()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    prov = ["CPUExecutionProvider"]
    vis = ort.InferenceSession(str(towers / "vision.onnx"), opts, providers=prov)
    txt = ort.InferenceSession(str(towers / "text.onnx"), opts, providers=prov)
    tok = load_tokenizer(tokenizer)
    n = len(ds.samples)
    patches, pooled = [], []
    for s in range(0, n, batch):
        px = preprocess_batch(ds.samples[s : s + batch], image)
        p, q = vis.run(None, {"pixel_values": px})
        patches.append(p)
        pooled.append(q)
    if log is not None:
        print(f"vision features: {n} images in {time.time() - t0:.0f} s", file=log, flush=True)
    notes = [x.note for x in ds.samples] + [""]
    # Sort by length so batches pad little; put rows back in dataset order afterwards.
    lengths = [len(x) for x in notes]
    order = np.argsort(lengths, kind="stable")
    rows: list[np.ndarray | None] = [None] * len(notes)
    masks: list[np.ndarray | None] = [None] * len(notes)
    for s in range(0, len(notes), 32):
        idx = order[s : s + 32]
        ids, mask = encode_batch(tok, [notes[i] for i in idx], max_tokens)
        (st,) = txt.run(None, {"input_ids": ids, "attention_mask": mask})
        for j, i in enumerate(idx):
            rows[i] = st[j]
            masks[i] = mask[j]
    t = max(int(m.sum()) for m in masks if m is not None)
    dt = rows[0].shape[-1] if rows[0] is not None else 0
    states = np.zeros((len(notes), t, dt), dtype=np.float32)
    mask_arr = np.zeros((len(notes), t), dtype=np.int64)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        assert r is not None and m is not None
        k = int(m.sum())
        states[i, :k] = r[:k]
        mask_arr[i, :k] = 1
    if log is not None:
        print(f"features: {n} samples in {time.time() - t0:.0f} s", file=log, flush=True)
    arrays = {
        "patch": np.concatenate(patches),
        "pooled": np.concatenate(pooled),
        "states": states[:-1],
        "mask": mask_arr[:-1],
        "empty_states": states[-1],
        "empty_mask": mask_arr[-1],
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return FeatureSet(*(torch.from_numpy(arrays[k]) for k in _KEYS))


_KEYS = ("patch", "pooled", "states", "mask", "empty_states", "empty_mask")


def maps_key(ds: Dataset, image: dict[str, Any], start: int) -> str:
    from kensa_pipeline.models import efficientnet as eff

    h = hashlib.sha256()
    h.update(f"{eff.WHEEL_FILE}|{eff.WEIGHTS_FILE}|maps-1".encode())
    h.update(json.dumps([image, start], sort_keys=True).encode())
    for s in ds.samples:
        st = s.image.stat()
        h.update(f"{s.image}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def extract_maps(
    ds: Dataset,
    image: dict[str, Any],
    start: int,
    cache_dir: Path | None = None,
    batch: int = 16,
    log: Any = sys.stderr,
) -> torch.Tensor:
    """Feature maps of the pretrained EfficientNet-Lite0 at the input of block ``start``
    ([N, C, h, w], float32), for every sample of ``ds`` (cached like the features).

    The frozen part of the tower (stem and blocks ``0..start-1``) runs once per image in
    PyTorch (eval mode, BatchNorm not folded: within 3e-5 of the exported graph), with the
    reference preprocessing at ``image``'s size; the fine-tuned tail then trains on these
    maps (:class:`~kensa_pipeline.models.efficientnet.EfficientNetTail`)."""
    from kensa_pipeline.models.efficientnet import EfficientNetEncoder

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"maps-{maps_key(ds, image, start)}.npy"
        if path.exists():
            return torch.from_numpy(np.load(path))
    t0 = time.time()
    enc = EfficientNetEncoder(image["height"], image["channels"], image["mean"], image["std"])
    enc.load_pretrained()
    enc.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(ds.samples), batch):
            px = preprocess_batch(ds.samples[s : s + batch], image)
            x = enc.prepare(torch.from_numpy(px))
            out.append(enc.net.features(x, 0, start).numpy())
    arr = np.concatenate(out).astype(np.float32)
    if log is not None:
        print(
            f"tower maps (input of block {start}, {list(arr.shape[1:])}): "
            f"{len(arr)} images in {time.time() - t0:.0f} s",
            file=log,
            flush=True,
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
    return torch.from_numpy(arr)


def with_vision(feats: FeatureSet, patch: torch.Tensor, pooled: torch.Tensor) -> FeatureSet:
    """``feats`` with other image features (the notes' features unchanged)."""
    return FeatureSet(patch, pooled, feats.states, feats.mask, feats.empty_states, feats.empty_mask)
