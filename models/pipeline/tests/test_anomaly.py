"""Mid-level token grid and the anomaly score against a bank of normal patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kensa_pipeline.anomaly import (
    STATS,
    anomaly_data,
    greedy_coreset,
    nearest_distance,
    summarize,
)
from kensa_pipeline.export import export_head, export_towers
from kensa_pipeline.features import FeatureSet
from kensa_pipeline.models.efficientnet import (
    FINAL_WIDTH,
    LITE_MEAN,
    LITE_STD,
    MID_BLOCK,
    MID_WIDTH,
    EfficientNetEncoder,
    FoldedEfficientNetEncoder,
)
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.train import TrainConfig
from kensa_pipeline.train_heads import head_outputs, train_head

LABELS = ["normal", "spot", "scratch"]


def _spec(bank: int = 16, size: int = 64, attention_map: str = "anomaly") -> ModelSpec:
    return ModelSpec(
        vision=vision_preset("efficientnet-lite0-mid", image_size=size),
        text=text_preset("tiny"),
        labels=LABELS,
        image_mean=[LITE_MEAN],
        image_std=[LITE_STD],
        mode="image",
        anomaly_bank=bank,
        attention_map=attention_map,
    )


def test_mid_tokens_are_stage5_cells_beside_the_final_cell() -> None:
    torch.manual_seed(0)
    enc = EfficientNetEncoder(64, feature_grid="mid").eval()
    assert enc.grid == 4 and enc.width == MID_WIDTH + FINAL_WIDTH
    px = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        tokens, pooled = enc(px)
        x = enc.prepare(px)
        mid = enc.net.features(x, 0, MID_BLOCK + 1)  # [2, 112, 4, 4]
        final = enc.net.features(x)  # [2, 1280, 2, 2]
    assert tokens.shape == (2, 16, 1392) and pooled.shape == (2, 1392)
    assert mid.shape[1:] == (112, 4, 4) and final.shape[1:] == (1280, 2, 2)
    # cell (0, 0): mean of its 2x2 existing neighbours; cell (1, 2): full 3x3 mean
    assert torch.allclose(tokens[:, 0, :112], mid[:, :, :2, :2].mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(tokens[:, 6, :112], mid[:, :, 0:3, 1:4].mean(dim=(2, 3)), atol=1e-6)
    # final part: the final cell covering the mid cell (row 1, col 2 -> final cell 0, 1)
    assert torch.equal(tokens[:, 6, 112:], final[:, :, 0, 1])
    assert torch.allclose(pooled[:, 112:], final.mean(dim=(2, 3)), atol=1e-6)
    # the folded export form computes the same
    with torch.no_grad():
        ft, fp = FoldedEfficientNetEncoder(enc)(px)
    assert float((ft - tokens).abs().max()) < 1e-4 and float((fp - pooled).abs().max()) < 1e-4


def test_coreset_and_nearest_distance() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=gen)
    x[7] += 50.0  # an outlier: greedy k-center must take it
    sel = greedy_coreset(x, 20, seed=0)
    assert len(set(sel.tolist())) == 20 and 7 in sel.tolist()
    assert torch.equal(greedy_coreset(x, 500), torch.arange(300))
    q = torch.randn(40, 8, generator=gen)
    d = nearest_distance(q, x, chunk=7)
    assert torch.allclose(d, torch.cdist(q, x).min(dim=1).values, atol=1e-4)
    qg = torch.arange(40) % 3
    bg = torch.arange(300) % 3
    dm = nearest_distance(q, x, qg, bg, chunk=16)
    ref = torch.cdist(q, x).masked_fill(qg[:, None] == bg[None], float("inf")).min(dim=1).values
    assert torch.allclose(dm, ref, atol=1e-4)
    assert bool((dm >= d - 1e-5).all())


def test_summarize_stats_and_top_patch_features() -> None:
    dist = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.2]])
    mid = torch.arange(6, dtype=torch.float32).view(1, 6, 1).expand(1, 6, 2).clone()
    s = summarize(dist, mid)
    assert s.shape == (1, STATS + 2)
    assert torch.allclose(s[0, :3], torch.tensor([0.9, (0.9 + 0.7 + 0.5) / 3, 2.7 / 6]))
    # top 5 patches by distance: 1, 4, 2, 3, 5 -> mean index 3.0
    assert torch.allclose(s[0, 3:], torch.tensor([3.0, 3.0]))


def _toy_patches(n_groups: int = 12, per: int = 3, p: int = 16) -> tuple[torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(3)
    patch = torch.randn(n_groups * per, p, MID_WIDTH + FINAL_WIDTH, generator=gen)
    groups = [f"t{i // per}" for i in range(n_groups * per)]
    # every group has a signature patch shared by its frames: only its own frames are near it
    for g in range(n_groups):
        sig = torch.randn(MID_WIDTH, generator=gen) * 3
        for i in range(g * per, (g + 1) * per):
            patch[i, 0, :MID_WIDTH] = sig
    return patch, groups


def test_anomaly_data_leaves_the_own_group_out_and_matches_the_head() -> None:
    patch, groups = _toy_patches()
    bank_rows = np.arange(0, 18)  # groups t0..t5
    data = anomaly_data(patch, groups, bank_rows, np.arange(24), MID_WIDTH, size=10_000)
    assert data.bank.shape == (18 * 16, MID_WIDTH)  # size above the candidates: all of them
    # a bank member's signature patch would be at distance 0 with its own frames in the bank
    assert float(data.dist[0, 0]) > 1.0
    mid = patch[:, :, :MID_WIDTH] / data.scale
    full = nearest_distance(mid[0], data.bank)
    assert float(full[0]) < 1e-3
    # rows outside the bank's groups: exactly what the head computes from its bank
    model = KensaModel(_spec(bank=data.bank.shape[0], size=64), seed=0).eval()
    assert model.head.anomaly is not None
    model.head.anomaly.load(data)
    with torch.no_grad():
        summary, dist = model.head.anomaly(patch[24:])
    assert torch.allclose(summary, data.summary[24:], atol=1e-4)
    assert torch.allclose(dist, data.dist[24:], atol=1e-4)


def test_head_with_anomaly_trains_and_exports_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = _spec(bank=32, size=64)
    model = KensaModel(spec, seed=0, pretrained=False).eval()
    px = torch.randn(24, 1, 64, 64)
    with torch.no_grad():
        patch, pooled = model.vision(px)
    y = np.array([0] * 12 + [1] * 6 + [2] * 6)
    patch[y == 1, 5, :MID_WIDTH] += 5.0  # the "spot" class: one patch unlike any normal one
    pooled = patch.mean(dim=1)
    groups = [f"g{i // 2}" for i in range(24)]
    tr = np.array([0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 18, 19, 20, 21])
    va = np.array([8, 9, 16, 22])
    te = np.array([10, 11, 17, 23])
    data = anomaly_data(patch, groups, tr[y[tr] == 0], tr, MID_WIDTH, size=32)
    # spot samples lie farther from the bank than the normal samples outside it
    assert float(data.summary[te[2], 0]) > float(data.summary[te[:2], 0].max())
    st = torch.zeros(24, 2, spec.text.width)
    mk = torch.ones(24, 2, dtype=torch.int64)
    feats = FeatureSet(patch, pooled, st, mk, st[0], mk[0])
    cfg = TrainConfig(epochs=3, min_epochs=1, batch_size=8, pfa_weight=0.0)
    trained, _ = train_head(spec, feats, y, {"train": tr, "val": va, "test": te}, cfg, anomaly=data)
    head = trained.head
    assert head.anomaly is not None and torch.equal(head.anomaly.bank, data.bank)
    pre = head_outputs(trained, feats, te, anomaly=data)
    live = head_outputs(trained, feats, te)
    assert np.abs(pre["logits"] - live["logits"]).max() < 1e-4
    # save/load keeps the bank; ONNX (vision + head) matches PyTorch
    trained.vision = model.vision
    trained.save(tmp_path / "run")
    spec_json = (tmp_path / "run" / "spec.json").read_text()
    assert '"anomaly_bank": 32' in spec_json
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert torch.equal(state["head.anomaly.bank"], data.bank)
    export_towers(trained, tmp_path / "m", which=("vision",))
    export_head(trained, tmp_path / "m")
    vis = ort.InferenceSession(str(tmp_path / "m" / "vision.onnx"))
    hd = ort.InferenceSession(str(tmp_path / "m" / "head.onnx"))
    x = torch.randn(3, 1, 64, 64)
    po, qo = vis.run(None, {"pixel_values": x.numpy()})
    names = [i.name for i in hd.get_inputs()]
    feeds = {"patch_tokens": po, "pooled": qo}
    feeds["token_states"] = np.zeros((3, 2, spec.text.width), np.float32)
    feeds["attention_mask"] = np.ones((3, 2), np.int64)
    lo, ao = hd.run(None, {k: v for k, v in feeds.items() if k in names})
    ids = torch.ones(3, 2, dtype=torch.int64)
    with torch.no_grad():
        lt, at = trained(x, ids, ids)
    assert np.abs(lo - lt.numpy()).max() <= 1e-4
    assert np.abs(ao - at.numpy()).max() <= 1e-4
    assert ao.shape == (3, 4, 4) and np.allclose(ao.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_anomaly_heat_map_points_at_the_far_patch() -> None:
    patch, groups = _toy_patches(n_groups=6, per=2)
    data = anomaly_data(patch, groups, np.arange(8), np.arange(8), MID_WIDTH, size=10_000)
    model = KensaModel(_spec(bank=data.bank.shape[0]), seed=0).eval()
    assert model.head.anomaly is not None
    model.head.anomaly.load(data)
    x = patch[10:11].clone()
    x[0, 9, :MID_WIDTH] += 40.0
    with torch.no_grad():
        f = model.head.forward_features(
            x, x.mean(dim=1), torch.zeros(1, 2, 64), torch.ones(1, 2, dtype=torch.int64)
        )
    att = f["attention"].reshape(-1)
    assert int(att.argmax()) == 9 and float(att[9]) > 0.5


def test_anomaly_needs_the_mid_grid() -> None:
    spec = _spec()
    bad = ModelSpec(**{**spec.__dict__, "vision": vision_preset("efficientnet-lite0")})
    with pytest.raises(ValueError, match="feature_grid"):
        KensaModel(bad)
    with pytest.raises(ValueError, match="anomaly"):
        KensaModel(_spec(bank=0, attention_map="anomaly"))
