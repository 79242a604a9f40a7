"""Shapes, masking/padding behaviour, the gate, PFA loss, HF checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kensa_pipeline.models.kensa import KensaModel
from kensa_pipeline.models.pfa import progressive_info_nce, self_similarity_agreement
from kensa_pipeline.models.text import TextEncoder, text_preset
from kensa_pipeline.models.vision import VisionEncoder, load_hf_vision, vision_preset
from kensa_pipeline.tokenizer import encode_batch, load_tokenizer


def test_vision_shapes() -> None:
    enc = VisionEncoder(vision_preset("tiny")).eval()
    tok, pooled = enc(torch.randn(2, 1, 112, 112))
    assert tok.shape == (2, 49, 128) and pooled.shape == (2, 128)
    big = VisionEncoder(vision_preset("vit-b16")).eval()
    assert sum(p.numel() for p in big.parameters()) == pytest.approx(85.8e6, rel=0.02)
    with torch.no_grad():
        tok, pooled = big(torch.randn(1, 3, 224, 224))
    assert tok.shape == (1, 196, 768) and pooled.shape == (1, 768)


def test_text_shapes() -> None:
    for name, width in (("tiny", 128), ("minilm", 384)):
        enc = TextEncoder(text_preset(name)).eval()
        ids = torch.randint(5, 100, (3, 11))
        mask = torch.ones(3, 11, dtype=torch.long)
        assert enc(ids, mask).shape == (3, 11, width)
    assert text_preset("minilm").layers == 6


def _run(model: KensaModel, tok_path: Path, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = load_tokenizer(tok_path)
    ids, mask = encode_batch(tok, notes, model.spec.max_tokens)
    torch.manual_seed(1)
    px = torch.randn(len(notes), 1, 112, 112)
    with torch.no_grad():
        return model(
            px[:1].expand(len(notes), -1, -1, -1), torch.from_numpy(ids), torch.from_numpy(mask)
        )


def test_head_outputs_and_padding_invariance(
    random_model: KensaModel, tokenizer_path: Path
) -> None:
    short = "dia 60.1um"
    longer = "lot L2411-03 strip 4 unit R2C07 via 1-3; dia 61.3um, depth 35.2um; remark: ok"
    logits, attn = _run(random_model, tokenizer_path, [short, longer, ""])
    assert logits.shape == (3, 5) and attn.shape == (3, 7, 7)
    torch.testing.assert_close(attn.sum(dim=(1, 2)), torch.ones(3), atol=1e-5, rtol=0)
    assert (attn >= 0).all()
    alone, attn_alone = _run(random_model, tokenizer_path, [short])
    torch.testing.assert_close(alone[0], logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(attn_alone[0], attn[0], atol=1e-6, rtol=0)


def test_empty_note_gate_is_closed(random_model: KensaModel, tokenizer_path: Path) -> None:
    tok = load_tokenizer(tokenizer_path)
    ids, mask = encode_batch(tok, ["", "possible void"], 64)
    px = torch.randn(2, 1, 112, 112)
    with torch.no_grad():
        f = random_model.forward_features(px, torch.from_numpy(ids), torch.from_numpy(mask))
    assert float(f["gate"][0]) == 0.0 and float(f["gate"][1]) > 0.0
    # With an empty note the logits do not depend on the text encoder at all.
    with torch.no_grad():
        before = random_model(
            px[:1], torch.from_numpy(ids[:1, :2]), torch.from_numpy(mask[:1, :2])
        )[0]
        saved = {k: v.clone() for k, v in random_model.text.state_dict().items()}
        for p in random_model.text.parameters():
            p.add_(torch.randn_like(p))
        after = random_model(px[:1], torch.from_numpy(ids[:1, :2]), torch.from_numpy(mask[:1, :2]))[
            0
        ]
        random_model.text.load_state_dict(saved)
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)


def test_pfa_loss() -> None:
    torch.manual_seed(0)
    img = torch.randn(8, 16, requires_grad=True)
    txt = torch.randn(8, 16)
    labels = torch.arange(8)
    valid = torch.ones(8, dtype=torch.bool)
    full = progressive_info_nce(img, txt, labels, valid, 1.0, temperature=0.1)
    zi = torch.nn.functional.normalize(img, dim=-1)
    zt = torch.nn.functional.normalize(txt, dim=-1)
    lg = zi @ zt.T / 0.1
    ref = 0.5 * (
        torch.nn.functional.cross_entropy(lg, labels)
        + torch.nn.functional.cross_entropy(lg.T, labels)
    )
    torch.testing.assert_close(full, ref)
    easy = progressive_info_nce(img, txt, labels, valid, 0.25, temperature=0.1)
    assert torch.isfinite(easy) and float(easy) < float(full)
    easy.backward()
    assert img.grad is not None
    # identical modalities -> perfectly consistent self-similarity rankings
    a = self_similarity_agreement(txt, txt)
    torch.testing.assert_close(a, torch.ones(8))
    # notes of empty samples are ignored
    few = progressive_info_nce(img, txt, labels, torch.zeros(8, dtype=torch.bool), 1.0)
    assert float(few) == 0.0


def test_hf_clip_checkpoint(tmp_path: Path) -> None:
    tr = pytest.importorskip("transformers")
    cfg = tr.CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )
    torch.manual_seed(0)
    hf = tr.CLIPVisionModel(cfg).eval()
    hf.save_pretrained(tmp_path / "clip")
    enc, hints = load_hf_vision(tmp_path / "clip")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        tok, pooled = enc.eval()(x)
    assert hints["family"] == "clip"
    torch.testing.assert_close(tok, ref.last_hidden_state[:, 1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-5, rtol=1e-4)


def test_hf_siglip_checkpoint(tmp_path: Path) -> None:
    tr = pytest.importorskip("transformers")
    cfg = tr.SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )
    torch.manual_seed(0)
    hf = tr.SiglipVisionModel(cfg).eval()
    hf.save_pretrained(tmp_path / "siglip")
    enc, hints = load_hf_vision(tmp_path / "siglip")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        tok, pooled = enc.eval()(x)
    assert hints["family"] == "siglip"
    torch.testing.assert_close(tok, ref.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-5, rtol=1e-4)
