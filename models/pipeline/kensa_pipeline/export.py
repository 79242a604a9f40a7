"""ONNX export into a model folder (the contract with the Rust service).

Folder: ``manifest.json``, ``vision.onnx``, ``text.onnx``, ``head.onnx``, ``tokenizer.json``.
Graphs are exported with the TorchScript exporter (``dynamo=False``), opset 17, dynamic
``batch`` axis everywhere and dynamic ``tokens`` axis on the note inputs/outputs.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from kensa_pipeline.models.efficientnet import EfficientNetEncoder, FoldedEfficientNetEncoder
from kensa_pipeline.models.kensa import KensaModel
from kensa_pipeline.tokenizer import PAD_ID, encode_batch, load_tokenizer, save_tokenizer

OPSET = 17
SCHEMA_VERSION = 1


class _Vision(nn.Module):
    def __init__(self, m: KensaModel) -> None:
        super().__init__()
        # EfficientNet exports with its BatchNorms folded into the convolutions.
        self.m = (
            FoldedEfficientNetEncoder(m.vision)
            if isinstance(m.vision, EfficientNetEncoder)
            else m.vision
        )

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        return self.m(pixel_values)  # type: ignore[no-any-return]


class _Text(nn.Module):
    def __init__(self, m: KensaModel) -> None:
        super().__init__()
        self.m = m.text

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.m(input_ids, attention_mask)  # type: ignore[no-any-return]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else "uncommitted"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, **kw: Any) -> None:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            **kw,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def _fix_dims(path: Path, shapes: dict[str, list[Any]]) -> None:
    """Write the manifest's shapes (static ints + "batch"/"tokens") onto the graph I/O."""
    model = onnx.load(str(path))
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name not in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        for d, want in zip(dims, shapes[vi.name], strict=True):
            if isinstance(want, int):
                d.ClearField("dim_param")
                d.dim_value = want
            else:
                d.ClearField("dim_value")
                d.dim_param = want
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def store_fp16_exact(path: Path, min_size: int = 1024) -> int:
    """Store every float32 initializer whose values are all exactly representable in float16
    (and that has at least ``min_size`` elements) as float16 followed by a Cast to float32.
    Lossless by construction (the values are unchanged); returns how many were converted."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    casts = []
    converted = 0
    for init in list(g.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < min_size:
            continue
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            continue
        g.initializer.remove(init)
        g.initializer.append(numpy_helper.from_array(half, init.name + "__fp16"))
        casts.append(
            helper.make_node(
                "Cast",
                [init.name + "__fp16"],
                [init.name],
                to=TensorProto.FLOAT,
                name=init.name + "__cast",
            )
        )
        converted += 1
    for node in reversed(casts):
        g.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return converted


def _io(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def graph_io(model: KensaModel) -> dict[str, Any]:
    """The manifest's ``graphs`` section (I/O names, dtypes, shapes) for ``model``."""
    s = model.spec
    v, t = s.vision, s.text
    g = v.grid
    n = v.num_patches
    c = len(s.labels)
    return {
        "vision": {
            "file": "vision.onnx",
            "inputs": [
                _io("pixel_values", "float32", ["batch", v.channels, v.image_size, v.image_size])
            ],
            "outputs": [
                _io("patch_tokens", "float32", ["batch", n, v.width]),
                _io("pooled", "float32", ["batch", v.width]),
            ],
        },
        "text": {
            "file": "text.onnx",
            "inputs": [
                _io("input_ids", "int64", ["batch", "tokens"]),
                _io("attention_mask", "int64", ["batch", "tokens"]),
            ],
            "outputs": [_io("token_states", "float32", ["batch", "tokens", t.width])],
        },
        "head": {
            "file": "head.onnx",
            "inputs": [
                _io("patch_tokens", "float32", ["batch", n, v.width]),
                _io("pooled", "float32", ["batch", v.width]),
                _io("token_states", "float32", ["batch", "tokens", t.width]),
                _io("attention_mask", "int64", ["batch", "tokens"]),
            ],
            "outputs": [
                _io("logits", "float32", ["batch", c]),
                _io("attention", "float32", ["batch", g, g]),
            ],
        },
    }


def build_manifest(
    model: KensaModel,
    *,
    name: str,
    description: str,
    labels: list[dict[str, Any]],
    max_batch_size: int,
    metrics: dict[str, Any] | None,
    provenance: dict[str, Any],
    version: int = 1,
    decision: dict[str, Any] | None = None,
    validation_distribution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest.json object (schema_version 1, see models/README.md)."""
    s = model.spec
    v = s.vision
    g = v.grid
    m: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "description": description,
        "created_at": dt.datetime.now(dt.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z"),
        "labels": labels,
        "image": {
            "height": v.image_size,
            "width": v.image_size,
            "channels": v.channels,
            "color": "gray" if v.channels == 1 else "rgb",
            "resize": "bilinear",
            "mean": [float(x) for x in s.image_mean],
            "std": [float(x) for x in s.image_std],
        },
        "text": {"tokenizer": "tokenizer.json", "max_tokens": s.max_tokens, "pad_id": PAD_ID},
        "max_batch_size": max_batch_size,
        "attention_grid": {"height": g, "width": g},
        "graphs": graph_io(model),
        "metrics": metrics or {},
        "provenance": provenance,
    }
    if decision is not None:
        m["decision"] = decision
    if validation_distribution is not None:
        m["validation_distribution"] = validation_distribution
    return m


def export_towers(
    model: KensaModel, out_dir: str | Path, which: tuple[str, ...] = ("vision", "text")
) -> None:
    """Export ``vision.onnx`` and ``text.onnx`` (or those named in ``which``) into
    ``out_dir`` (I/O dims fixed to the manifest's). Deterministic: the same weights give
    byte-identical files, so a frozen pretrained tower is rewritten identically by every
    export."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    v = model.spec.vision
    px = torch.zeros(2, v.channels, v.image_size, v.image_size)
    ids = torch.tensor([[2, 7, 3], [2, 3, 0]], dtype=torch.int64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.int64)
    if "vision" in which:
        _export_vision(model, px, out)
    if "text" in which:
        _export_text(model, ids, mask, out)
    io = graph_io(model)
    for key in which:
        gd = io[key]
        _fix_dims(out / gd["file"], {x["name"]: x["shape"] for x in gd["inputs"] + gd["outputs"]})
    if "text" in which and model.spec.text.pretrained:
        # Pretrained text weights are float16-exact (see load_minilm_l6): store them so.
        store_fp16_exact(out / "text.onnx")


def _export_vision(model: KensaModel, px: Tensor, out: Path) -> None:
    _export(
        _Vision(model),
        (px,),
        out / "vision.onnx",
        input_names=["pixel_values"],
        output_names=["patch_tokens", "pooled"],
        dynamic_axes={
            "pixel_values": {0: "batch"},
            "patch_tokens": {0: "batch"},
            "pooled": {0: "batch"},
        },
    )


def _export_text(model: KensaModel, ids: Tensor, mask: Tensor, out: Path) -> None:
    _export(
        _Text(model),
        (ids, mask),
        out / "text.onnx",
        input_names=["input_ids", "attention_mask"],
        output_names=["token_states"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "token_states": {0: "batch", 1: "tokens"},
        },
    )


def export_head(model: KensaModel, out_dir: str | Path) -> None:
    """Export ``head.onnx`` into ``out_dir``."""
    out = Path(out_dir)
    model = model.eval()
    s = model.spec
    v, t = s.vision, s.text
    b, n = 2, v.num_patches
    gen = torch.Generator().manual_seed(0)
    patch_tokens = torch.randn(b, n, v.width, generator=gen)
    pooled = patch_tokens.mean(dim=1)
    states = torch.randn(b, 5, t.width, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.int64)
    _export(
        model.head,
        (patch_tokens, pooled, states, mask),
        out / "head.onnx",
        input_names=["patch_tokens", "pooled", "token_states", "attention_mask"],
        output_names=["logits", "attention"],
        dynamic_axes={
            "patch_tokens": {0: "batch"},
            "pooled": {0: "batch"},
            "token_states": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "logits": {0: "batch"},
            "attention": {0: "batch"},
        },
    )
    gd = graph_io(model)["head"]
    _fix_dims(out / gd["file"], {x["name"]: x["shape"] for x in gd["inputs"] + gd["outputs"]})


def export_model_folder(
    model: KensaModel,
    tokenizer_path: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    description: str,
    labels: list[dict[str, Any]],
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    max_batch_size: int = 16,
    version: int = 1,
    towers: str | Path | None = None,
    decision: dict[str, Any] | None = None,
    validation_distribution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the three graphs + tokenizer + manifest into ``out_dir``; returns the manifest.

    ``towers``: a folder with ``vision.onnx``/``text.onnx`` already exported from these
    towers (by :func:`export_towers`); they are copied instead of exported again, except a
    fine-tuned vision tower (``spec.vision_tuned_from``), exported from ``model``."""
    if model.spec.mode != "cmaf":
        raise ValueError("only the full CMAF head is exported (ablation heads are not)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tok = load_tokenizer(tokenizer_path)
    save_tokenizer(tok, out / "tokenizer.json")
    if towers is not None:
        shutil.copyfile(Path(towers) / "text.onnx", out / "text.onnx")
        if model.spec.vision_tuned_from is not None:
            export_towers(model, out, which=("vision",))
        else:
            shutil.copyfile(Path(towers) / "vision.onnx", out / "vision.onnx")
    else:
        export_towers(model, out)
    export_head(model, out)
    manifest = build_manifest(
        model,
        name=name,
        description=description,
        labels=labels,
        max_batch_size=max_batch_size,
        metrics=metrics,
        provenance=provenance or {},
        decision=decision,
        validation_distribution=validation_distribution,
        version=version,
    )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


class OnnxModel:
    """Runs a model folder with onnxruntime the way the service does (3 sessions)."""

    def __init__(self, folder: str | Path, threads: int = 2) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        prov = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(self.folder / "vision.onnx"), opts, providers=prov)
        self.text = ort.InferenceSession(str(self.folder / "text.onnx"), opts, providers=prov)
        self.head = ort.InferenceSession(str(self.folder / "head.onnx"), opts, providers=prov)
        self.tokenizer = load_tokenizer(self.folder / "tokenizer.json")

    def run(
        self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        patch_tokens, pooled = self.vision.run(None, {"pixel_values": pixel_values})
        (states,) = self.text.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        logits, attention = self.head.run(
            None,
            {
                "patch_tokens": patch_tokens,
                "pooled": pooled,
                "token_states": states,
                "attention_mask": attention_mask,
            },
        )
        return logits, attention

    def encode(self, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return encode_batch(self.tokenizer, notes, int(self.manifest["text"]["max_tokens"]))


def parity(
    model: KensaModel, folder: str | Path, batch_sizes: tuple[int, ...] = (1, 7), seed: int = 0
) -> dict[str, float]:
    """Max abs diff of logits and attention, onnxruntime vs PyTorch, on random images and
    generated-looking notes of varied lengths (incl. empty)."""
    om = OnnxModel(folder)
    v = model.spec.vision
    gen = torch.Generator().manual_seed(seed)
    notes_all = [
        "",
        "lot L2411-03 strip 4 unit R2C07 via 1-3; dia 61.3µm, depth 35.2µm, offset 1.1µm",
        "remark: possible void",
        "lot L2433-12 strip 19 unit R8C11 via 4-4; dia 66.0um, depth 41.8um, offset 9.4um; "
        "remark: hole looks big " * 3,
        "ok",
        "depth 44.1um",
        "misregistration",
    ]
    out: dict[str, float] = {}
    model.eval()
    for b in batch_sizes:
        px = torch.randn(b, v.channels, v.image_size, v.image_size, generator=gen)
        notes = [notes_all[i % len(notes_all)] for i in range(b)]
        ids, mask = om.encode(notes)
        with torch.no_grad():
            lt, at = model(px, torch.from_numpy(ids), torch.from_numpy(mask))
        lo, ao = om.run(px.numpy(), ids, mask)
        out[f"logits_b{b}"] = float(np.abs(lt.numpy() - lo).max())
        out[f"attention_b{b}"] = float(np.abs(at.numpy() - ao).max())
    return out
