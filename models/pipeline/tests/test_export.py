"""Export + parity + manifest schema + the shipped demo folder and its fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kensa_pipeline.export import OnnxModel, export_model_folder, parity
from kensa_pipeline.manifest import validate_folder, validate_manifest
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.preprocess import preprocess_file
from kensa_pipeline.tokenizer import encode_one, load_tokenizer

from .conftest import DEMO

LABELS = [
    {"name": n, "display_name": n.title(), "is_normal": n == "normal"}
    for n in ["normal", "void", "oversize", "offset", "residue"]
]


def export_test_folder(model: KensaModel, tokenizer_path: Path, out: Path) -> None:
    """Export ``model`` with placeholder description, metrics and provenance."""
    export_model_folder(
        model,
        tokenizer_path,
        out,
        name="test",
        description="test export",
        labels=LABELS,
        metrics={},
        provenance={
            "dataset": "t",
            "seed": 0,
            "git_commit": "x",
            "command": "c",
            "pipeline_version": "0",
        },
    )


@pytest.fixture(scope="module")
def exported(
    random_model: KensaModel, tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    export_test_folder(random_model, tokenizer_path, out)
    return out


def test_folder_matches_contract(exported: Path) -> None:
    m = validate_folder(exported)
    assert sorted(p.name for p in exported.iterdir()) == [
        "head.onnx",
        "manifest.json",
        "text.onnx",
        "tokenizer.json",
        "vision.onnx",
    ]
    assert m["graphs"]["vision"]["outputs"][0]["shape"] == ["batch", 49, 128]
    assert m["attention_grid"] == {"height": 7, "width": 7}


def test_parity_batches_1_and_7(random_model: KensaModel, exported: Path) -> None:
    res = parity(random_model, exported, batch_sizes=(1, 7))
    assert set(res) == {"logits_b1", "attention_b1", "logits_b7", "attention_b7"}
    assert max(res.values()) <= 1e-4, res


def test_onnx_attention_sums_to_one_dynamic_tokens(exported: Path) -> None:
    om = OnnxModel(exported)
    for notes in (["", "ok"], ["dia 60.1um, depth 35.0um " * 5, "", "possible void"]):
        ids, mask = om.encode(notes)
        px = np.random.default_rng(0).standard_normal((len(notes), 1, 112, 112)).astype(np.float32)
        logits, attn = om.run(px, ids, mask)
        assert logits.shape == (len(notes), 5) and attn.shape == (len(notes), 7, 7)
        np.testing.assert_allclose(attn.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_manifest_schema_rejects_bad_input(exported: Path) -> None:
    m = json.loads((exported / "manifest.json").read_text())
    validate_manifest(m)
    bad = json.loads(json.dumps(m))
    bad["labels"][1]["is_normal"] = True
    with pytest.raises(ValueError):
        validate_manifest(bad)
    bad = json.loads(json.dumps(m))
    bad["graphs"]["head"]["outputs"][0]["name"] = "scores"
    with pytest.raises(ValueError):
        validate_manifest(bad)
    bad = json.loads(json.dumps(m))
    bad["image"]["color"] = "rgb"
    with pytest.raises(ValueError):
        validate_manifest(bad)


def test_tokenizer_contract(tokenizer_path: Path) -> None:
    raw = json.loads(tokenizer_path.read_text())
    assert raw["truncation"] is None and raw["padding"] is None
    assert raw["model"]["type"] == "WordPiece" and raw["model"]["vocab"]["[PAD]"] == 0
    tok = load_tokenizer(tokenizer_path)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert encode_one(tok, "", 16) == [cls, sep]
    long = encode_one(tok, "dia 60.1um depth 35.2um offset 1.1um " * 10, 16)
    assert len(long) == 16 and long[0] == cls and long[-1] == sep
    assert encode_one(tok, "DIA 60um", 16) == encode_one(tok, "dia 60um", 16)


# ---------------------------------------------------------------- shipped demo folder


def _demo() -> Path:
    if not (DEMO / "manifest.json").exists():
        pytest.skip("models/demo not built")
    return DEMO


def test_demo_folder_is_valid_and_small() -> None:
    d = _demo()
    m = validate_folder(d)
    assert m["name"] == "kensa-demo"
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    assert size < 70e6, f"demo folder is {size} bytes"


def test_demo_preprocess_fixtures() -> None:
    d = _demo()
    im = json.loads((d / "manifest.json").read_text())["image"]
    entries = json.loads((d / "fixtures/preprocess/expected.json").read_text())
    assert len(entries) >= 5
    for e in entries:
        want = np.fromfile(d / "fixtures/preprocess" / e["tensor"], dtype="<f4").reshape(e["shape"])
        got = preprocess_file(
            d / "fixtures/preprocess" / e["file"],
            im["height"],
            im["width"],
            im["channels"],
            im["mean"],
            im["std"],
        )[None]
        np.testing.assert_array_equal(got, want)


def test_demo_token_fixtures() -> None:
    d = _demo()
    fx = json.loads((d / "fixtures/tokens.json").read_text())
    tok = load_tokenizer(d / "tokenizer.json")
    assert any(c["note"] == "" for c in fx["cases"])
    assert any(len(c["ids"]) == fx["max_tokens"] for c in fx["cases"])
    for c in fx["cases"]:
        assert encode_one(tok, c["note"], fx["max_tokens"]) == c["ids"]
        assert c["attention_mask"] == [1] * len(c["ids"])


def test_demo_sample_fixtures() -> None:
    d = _demo()
    om = OnnxModel(d)
    im = om.manifest["image"]
    rows = [json.loads(x) for x in (d / "fixtures/samples.jsonl").read_text().splitlines()]
    names = [lab["name"] for lab in om.manifest["labels"]]
    assert sorted({r["label"] for r in rows}) == sorted(names)
    for r in rows:
        x = preprocess_file(
            d / "fixtures" / r["image"],
            im["height"],
            im["width"],
            im["channels"],
            im["mean"],
            im["std"],
        )
        ids, mask = om.encode([r["note"]])
        logits, attn = om.run(x[None], ids, mask)
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        np.testing.assert_allclose(p, r["probabilities"], atol=1e-5)
        np.testing.assert_allclose(attn[0], r["attention"], atol=1e-5)
        assert abs(sum(r["probabilities"]) - 1) < 1e-5


def test_export_random_presets(tmp_path: Path) -> None:
    from kensa_pipeline.bench import export_random

    out = export_random("tiny", "tiny", tmp_path / "bench", seed=1, command="test")
    m = validate_folder(out)
    assert m["provenance"]["dataset"].startswith("none")


def test_per_image_norm_exports_and_ignores_gain(tokenizer_path: Path, tmp_path: Path) -> None:
    # The per-image standardization lives inside vision.onnx: the exported graph must match
    # PyTorch, and a brighter, higher-gain copy of an image must give the same outputs.
    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    torch.manual_seed(0)
    spec = ModelSpec(
        vision=vision_preset("tiny", per_image_norm=True),
        text=text_preset("tiny", vocab_size=vocab),
        labels=[str(lab["name"]) for lab in LABELS],
    )
    model = KensaModel(spec).eval()
    out = tmp_path / "model"
    export_test_folder(model, tokenizer_path, out)
    assert max(parity(model, out).values()) <= 1e-4
    om = OnnxModel(out)
    x = np.random.default_rng(0).normal(size=(2, 1, 112, 112)).astype(np.float32)
    ids, mask = om.encode(["dia 61.0um", ""])
    logits, attention = om.run(x, ids, mask)
    logits2, attention2 = om.run(1.7 * x + 0.4, ids, mask)
    assert np.abs(logits - logits2).max() < 1e-3
    assert np.abs(attention - attention2).max() < 1e-4
