"""Export of a model on the pretrained towers: byte-reproducible towers, contract, parity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kensa_pipeline.export import OnnxModel, export_model_folder, export_towers, parity
from kensa_pipeline.manifest import validate_folder
from kensa_pipeline.models.efficientnet import LITE_MEAN, LITE_STD
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import minilm_tokenizer_path, text_preset
from kensa_pipeline.models.vision import vision_preset

LABELS = ["normal", "void", "oversize", "offset", "residue"]


@pytest.fixture(scope="module")
def model() -> KensaModel:
    spec = ModelSpec(
        vision=vision_preset("efficientnet-lite0"),
        text=text_preset("minilm-l6"),
        labels=LABELS,
        image_mean=[LITE_MEAN],
        image_std=[LITE_STD],
        max_tokens=96,
        attention_map="cam",
    )
    return KensaModel(spec, seed=0, pretrained=True).eval()


@pytest.fixture(scope="module")
def folder(model: KensaModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "model"
    export_model_folder(
        model,
        minilm_tokenizer_path(),
        out,
        name="pretrained-test",
        description="test",
        labels=[{"name": n, "display_name": n, "is_normal": n == "normal"} for n in LABELS],
        provenance={
            "dataset": "t",
            "seed": 0,
            "git_commit": "x",
            "command": "c",
            "pipeline_version": "0",
        },
    )
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_towers_export_byte_for_byte(model: KensaModel, folder: Path, tmp_path: Path) -> None:
    export_towers(model, tmp_path / "again")
    for f in ("vision.onnx", "text.onnx"):
        assert _sha(folder / f) == _sha(tmp_path / "again" / f), f
    # text weights are stored as float16 (lossless: they are float16-exact)
    text = onnx.load(str(folder / "text.onnx"))
    half = [i for i in text.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) >= 30
    size = sum((folder / f).stat().st_size for f in ("vision.onnx", "text.onnx", "head.onnx"))
    assert size < 65e6


def test_contract_and_parity(model: KensaModel, folder: Path) -> None:
    m = validate_folder(folder)
    assert m["image"] == {
        "height": 224,
        "width": 224,
        "channels": 1,
        "color": "gray",
        "resize": "bilinear",
        "mean": [LITE_MEAN],
        "std": [LITE_STD],
    }
    assert m["attention_grid"] == {"height": 7, "width": 7}
    assert m["graphs"]["vision"]["outputs"][0]["shape"] == ["batch", 49, 1280]
    assert m["graphs"]["text"]["outputs"][0]["shape"] == ["batch", "tokens", 384]
    res = parity(model, folder, batch_sizes=(1, 3))
    assert max(res.values()) <= 1e-4, res
    om = OnnxModel(folder)
    ids, mask = om.encode(["dia 61.0um; remark: possible void", ""])
    px = np.random.default_rng(0).standard_normal((2, 1, 224, 224)).astype(np.float32)
    _, attn = om.run(px, ids, mask)
    assert attn.shape == (2, 7, 7) and (attn >= 0).all()
    np.testing.assert_allclose(attn.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_head_only_save_and_load(model: KensaModel, tmp_path: Path) -> None:
    model.save(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(k.startswith("head.") for k in state)
    back = KensaModel.load(tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
