"""Shared fixtures: small generated datasets, a trained-on-notes tokenizer, a random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kensa_pipeline.data.formats import load_dataset
from kensa_pipeline.data.generator import GenConfig, generate
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.tokenizer import save_tokenizer, train_tokenizer

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "models" / "demo"


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data") / "synthetic"
    generate(d, GenConfig(seed=7, scale=0.5))
    return d


@pytest.fixture(scope="session")
def tokenizer_path(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = load_dataset(small_data)
    tok = train_tokenizer([s.note for s in ds.samples])
    p = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(tok, p)
    return p


@pytest.fixture(scope="session")
def random_model(tokenizer_path: Path) -> KensaModel:
    from kensa_pipeline.tokenizer import load_tokenizer

    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    torch.manual_seed(0)
    spec = ModelSpec(
        vision=vision_preset("tiny"),
        text=text_preset("tiny", vocab_size=vocab),
        labels=["normal", "void", "oversize", "offset", "residue"],
    )
    return KensaModel(spec).eval()
