"""The Python service kensa is measured against: what a plant could put together in an afternoon,
tuned with the one setting that matters on a CPU.

FastAPI + onnxruntime serving the same three graphs of a kensa model folder with the same
preprocessing (the pipeline's reference, ``kensa_pipeline.preprocess``, and its tokenizer), one
intra-op thread per session (the tuned setting: ONNX Runtime's default spin-waits on every core
in every session), no batching, one worker process per core. It answers ``POST /v1/inspections``
(multipart ``image``, ``note``, ``station_id``, ``inspection_id``) with a JSON verdict, so
``kensa-bench`` drives it unchanged (with ``--pid``, for CPU figures from /proc).

    bench/peer/run.sh [--port 8090] [--workers N] [--model models/demo]
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, Form, HTTPException
from kensa_pipeline.preprocess import preprocess_file
from kensa_pipeline.tokenizer import load_tokenizer

MODEL = Path(os.environ.get("KENSA_PEER_MODEL", "models/demo"))
MANIFEST: dict[str, Any] = json.loads((MODEL / "manifest.json").read_text())
IMAGE = MANIFEST["image"]
LABELS = [label["name"] for label in MANIFEST["labels"]]


def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    file = MODEL / MANIFEST["graphs"][name]["file"]
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


VISION, TEXT, HEAD = _session("vision"), _session("text"), _session("head")
# Truncation set once: kensa_pipeline.tokenizer.encode_one switches it on and off around each
# call, which races between the request threads.
TOKENIZER = load_tokenizer(MODEL / MANIFEST["text"]["tokenizer"])
TOKENIZER.enable_truncation(max_length=int(MANIFEST["text"]["max_tokens"]))

app = FastAPI()


def _infer(image: bytes, note: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        pixels = preprocess_file(
            io.BytesIO(image),
            IMAGE["height"],
            IMAGE["width"],
            IMAGE["channels"],
            IMAGE["mean"],
            IMAGE["std"],
        )[None]
    except Exception as error:  # Pillow raises many kinds for a bad file
        raise HTTPException(status_code=400, detail=f"bad image: {error}") from error
    ids = np.array([TOKENIZER.encode(note).ids], dtype=np.int64)
    mask = np.ones_like(ids)
    patch_tokens, pooled = VISION.run(None, {"pixel_values": pixels})
    (states,) = TEXT.run(None, {"input_ids": ids, "attention_mask": mask})
    logits, attention = HEAD.run(
        None,
        {
            "patch_tokens": patch_tokens,
            "pooled": pooled,
            "token_states": states,
            "attention_mask": mask,
        },
    )
    return logits[0], attention[0]


@app.post("/v1/inspections")
def inspect(
    image: Annotated[bytes, File()],
    station_id: Annotated[str, Form()],
    note: Annotated[str, Form()] = "",
    inspection_id: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    logits, attention = _infer(image, note)
    scores = np.exp(logits - logits.max())
    probabilities = scores / scores.sum()
    best = int(probabilities.argmax())
    return {
        "inspection_id": inspection_id or str(uuid.uuid4()),
        "station_id": station_id,
        "model": MANIFEST["name"],
        "label": LABELS[best],
        "confidence": float(probabilities[best]),
        "probabilities": dict(zip(LABELS, probabilities.tolist(), strict=True)),
        "attention": attention.ravel().tolist(),
    }


@app.get("/readyz")
def ready() -> str:
    return "ready"
