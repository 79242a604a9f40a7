"""BERT-style WordPiece tokenizer for the notes (``tokenizer.json``, HF tokenizers format).

The saved file has a lowercasing BERT normalizer, BERT pre-tokenizer followed by a digit
splitter (every digit is its own token, so measurements are spelled digit by digit and the
encoder can learn magnitudes from few samples), the ``[CLS] $A [SEP]`` post-processor,
``[PAD]`` = id 0 and ``[UNK]``. It carries NO truncation and NO padding: like the Rust service,
:func:`encode_batch` truncates with the library's own truncation (keeps [CLS] ... [SEP]) and
pads each batch to its longest note with ``pad_id`` 0 / attention_mask 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID = 0


def train_tokenizer(notes: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Train the WordPiece tokenizer on note texts (deterministic for a given input)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(list(notes), trainer=trainer)
    cls_id = tok.token_to_id("[CLS]")
    sep_id = tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.no_truncation()
    tok.no_padding()
    if tok.token_to_id("[PAD]") != PAD_ID:
        raise RuntimeError("[PAD] must be id 0")
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Save without truncation/padding settings (the contract requires a clean file)."""
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode_one(tok: Tokenizer, note: str, max_tokens: int) -> list[int]:
    """Token ids of one note, truncated to ``max_tokens`` keeping [CLS] ... [SEP]."""
    tok.enable_truncation(max_length=max_tokens)
    try:
        return list(tok.encode(note).ids)
    finally:
        tok.no_truncation()


def encode_batch(
    tok: Tokenizer, notes: Sequence[str], max_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [B, T], T = longest note in the batch."""
    seqs = [encode_one(tok, n, max_tokens) for n in notes]
    t = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(seqs), t), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
