"""Validation of a model folder against the service contract (manifest schema_version 1)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import onnx

GRAPH_IO = {
    "vision": (["pixel_values"], ["patch_tokens", "pooled"]),
    "text": (["input_ids", "attention_mask"], ["token_states"]),
    "head": (
        ["patch_tokens", "pooled", "token_states", "attention_mask"],
        ["logits", "attention"],
    ),
}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing {key!r}")
    if not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
        raise ValueError(f"{where}.{key}: expected {typ}, got {type(d[key]).__name__}")
    return d[key]


def validate_manifest(m: dict[str, Any]) -> None:
    """Raise ValueError when ``m`` does not follow the schema (see models/README.md)."""
    if _req(m, "schema_version", int, "manifest") != 1:
        raise ValueError("schema_version must be 1")
    _req(m, "name", str, "manifest")
    _req(m, "version", int, "manifest")
    _req(m, "description", str, "manifest")
    dt.datetime.fromisoformat(_req(m, "created_at", str, "manifest").replace("Z", "+00:00"))
    labels = _req(m, "labels", list, "manifest")
    if len(labels) < 2:
        raise ValueError("need at least two labels")
    for i, lab in enumerate(labels):
        _req(lab, "name", str, f"labels[{i}]")
        _req(lab, "display_name", str, f"labels[{i}]")
        _req(lab, "is_normal", bool, f"labels[{i}]")
    if sum(lab["is_normal"] for lab in labels) != 1:
        raise ValueError("exactly one label must have is_normal = true")
    if len({lab["name"] for lab in labels}) != len(labels):
        raise ValueError("label names must be unique")
    im = _req(m, "image", dict, "manifest")
    h, w = _req(im, "height", int, "image"), _req(im, "width", int, "image")
    c = _req(im, "channels", int, "image")
    if c not in (1, 3):
        raise ValueError("image.channels must be 1 or 3")
    if _req(im, "color", str, "image") != ("gray" if c == 1 else "rgb"):
        raise ValueError("image.color must be 'gray' for 1 channel, 'rgb' for 3")
    if _req(im, "resize", str, "image") != "bilinear":
        raise ValueError("image.resize must be 'bilinear'")
    mean, std = _req(im, "mean", list, "image"), _req(im, "std", list, "image")
    if len(mean) != c or len(std) != c or any(s <= 0 for s in std):
        raise ValueError("image.mean/std need one entry per channel, std > 0")
    tx = _req(m, "text", dict, "manifest")
    _req(tx, "tokenizer", str, "text")
    if _req(tx, "max_tokens", int, "text") < 2:
        raise ValueError("text.max_tokens must be >= 2")
    _req(tx, "pad_id", int, "text")
    if _req(m, "max_batch_size", int, "manifest") < 1:
        raise ValueError("max_batch_size must be >= 1")
    grid = _req(m, "attention_grid", dict, "manifest")
    gh, gw = _req(grid, "height", int, "attention_grid"), _req(grid, "width", int, "attention_grid")
    graphs = _req(m, "graphs", dict, "manifest")
    ncls = len(labels)
    for g, (ins, outs) in GRAPH_IO.items():
        gd = _req(graphs, g, dict, "graphs")
        _req(gd, "file", str, f"graphs.{g}")
        for kind, names in (("inputs", ins), ("outputs", outs)):
            lst = _req(gd, kind, list, f"graphs.{g}")
            if [x["name"] for x in lst] != names:
                raise ValueError(f"graphs.{g}.{kind} must be {names}")
            for x in lst:
                if x["dtype"] not in ("float32", "int64"):
                    raise ValueError(f"graphs.{g}: bad dtype {x['dtype']}")
                for d in x["shape"]:
                    if not (isinstance(d, int) and d > 0) and d not in ("batch", "tokens"):
                        raise ValueError(f"graphs.{g}.{x['name']}: bad dim {d!r}")
                if x["shape"][0] != "batch":
                    raise ValueError(f"graphs.{g}.{x['name']}: first dim must be 'batch'")
    v = graphs["vision"]
    if v["inputs"][0]["shape"] != ["batch", c, h, w]:
        raise ValueError("pixel_values shape must be [batch, channels, height, width]")
    n, dv = v["outputs"][0]["shape"][1:]
    if n != gh * gw:
        raise ValueError("patch_tokens N must equal attention_grid height*width")
    hd = graphs["head"]
    if hd["outputs"][0]["shape"] != ["batch", ncls]:
        raise ValueError("logits shape must be [batch, number of labels]")
    if hd["outputs"][1]["shape"] != ["batch", gh, gw]:
        raise ValueError("attention shape must be [batch, grid h, grid w]")
    if hd["inputs"][0]["shape"] != ["batch", n, dv]:
        raise ValueError("head patch_tokens must match vision output")
    _req(m, "metrics", dict, "manifest")
    prov = _req(m, "provenance", dict, "manifest")
    for k in ("dataset", "seed", "git_commit", "command", "pipeline_version"):
        if k not in prov:
            raise ValueError(f"provenance: missing {k!r}")
    if "decision" in m:
        validate_decision(_req(m, "decision", dict, "manifest"))
    if "validation_distribution" in m:
        validate_distribution(
            _req(m, "validation_distribution", dict, "manifest"), [lab["name"] for lab in labels]
        )
    if "ocr" in m:
        validate_ocr(_req(m, "ocr", dict, "manifest"))


def validate_ocr(o: dict[str, Any]) -> None:
    """The optional ``ocr`` section (see models/README.md; the service checks the graphs)."""
    known = {"detector", "recogniser", "region", "min_confidence", "join", "max_side"}
    if set(o) - known:
        raise ValueError(f"ocr: unknown keys {sorted(set(o) - known)}")
    for key in ("detector", "recogniser"):
        if not _req(o, key, str, "ocr"):
            raise ValueError(f"ocr.{key} must name a file")
    region = o.get("region", "whole")
    if region != "whole":
        if not isinstance(region, dict) or set(region) != {"x", "y", "width", "height"}:
            raise ValueError('ocr.region must be "whole" or {x, y, width, height}')
        if region["width"] <= 0 or region["height"] <= 0:
            raise ValueError("ocr.region needs a positive size")
    if not 0.0 <= float(o.get("min_confidence", 0.5)) <= 1.0:
        raise ValueError("ocr.min_confidence must be in [0, 1]")
    if o.get("join", "prepend") not in ("prepend", "append", "when-empty"):
        raise ValueError("ocr.join must be prepend, append or when-empty")
    if not 32 <= int(o.get("max_side", 960)) <= 4096:
        raise ValueError("ocr.max_side must be between 32 and 4096")


def _num(d: dict[str, Any], key: str, where: str) -> float:
    v = _req(d, key, (int, float), where)
    if isinstance(v, bool):
        raise ValueError(f"{where}.{key}: expected a number")
    return float(v)


def validate_decision(d: dict[str, Any]) -> None:
    """The optional ``decision`` section (see models/README.md)."""
    if _num(d, "temperature", "decision") <= 0:
        raise ValueError("decision.temperature must be > 0")
    for k in ("pass_threshold", "fail_threshold", "target_missed_defect_rate"):
        v = _num(d, k, "decision")
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"decision.{k} must be in [0, 1]")
    v = _req(d, "validation", dict, "decision")
    _req(v, "split", str, "decision.validation")
    if _req(v, "n", int, "decision.validation") < 0:
        raise ValueError("decision.validation.n must be >= 0")
    for k in (
        "missed_defect_rate",
        "false_alarm_rate",
        "review_rate",
        "ece_before",
        "ece_after",
    ):
        x = _num(v, k, "decision.validation")
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"decision.validation.{k} must be in [0, 1]")


def validate_distribution(d: dict[str, Any], names: list[str]) -> None:
    """The optional ``validation_distribution`` section (see models/README.md)."""
    labels = _req(d, "labels", dict, "validation_distribution")
    if sorted(labels) != sorted(names):
        raise ValueError("validation_distribution.labels must have one share per label")
    edges = _req(d, "confidence_bins", list, "validation_distribution")
    hist = _req(d, "confidence_hist", list, "validation_distribution")
    if len(edges) != len(hist) + 1 or len(hist) < 1:
        raise ValueError("validation_distribution: need len(confidence_bins) = len(hist) + 1")
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError("validation_distribution.confidence_bins must increase")
    for share in list(labels.values()) + hist:
        if not 0.0 <= float(share) <= 1.0:
            raise ValueError("validation_distribution: shares must be in [0, 1]")


def _onnx_dims(vi: onnx.ValueInfoProto) -> list[Any]:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.dim_param else int(d.dim_value))
    return dims


def validate_folder(folder: str | Path) -> dict[str, Any]:
    """Validate manifest + files + ONNX graph I/O names/dtypes/shapes against each other."""
    folder = Path(folder)
    m = json.loads((folder / "manifest.json").read_text())
    validate_manifest(m)
    tok = json.loads((folder / m["text"]["tokenizer"]).read_text())
    if tok.get("truncation") is not None or tok.get("padding") is not None:
        raise ValueError("tokenizer.json must carry no truncation and no padding")
    vocab = tok["model"]["vocab"]
    if vocab.get("[PAD]") != m["text"]["pad_id"]:
        raise ValueError("[PAD] id must equal text.pad_id")
    for g, gd in m["graphs"].items():
        model = onnx.load(str(folder / gd["file"]))
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 17:
            raise ValueError(f"{g}: opset {opset} < 17")
        for kind, vis in (("inputs", model.graph.input), ("outputs", model.graph.output)):
            got = [
                (vi.name, _ONNX_DTYPES.get(vi.type.tensor_type.elem_type), _onnx_dims(vi))
                for vi in vis
            ]
            want = [(x["name"], x["dtype"], x["shape"]) for x in gd[kind]]
            if got != want:
                raise ValueError(f"{g} {kind}: graph has {got}, manifest says {want}")
    return m
