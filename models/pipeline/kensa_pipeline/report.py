"""``python -m kensa_pipeline summarize RUN...``: mean ± sd tables over training runs (seeds).

Reads each run folder's ``metrics.json`` (from ``train``); prints macro-F1 per variant, the
shipped variant's calibration and operating point on the held-out split, and the pointing
game of both maps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _pm(vals: list[float]) -> str:
    a = np.array(vals, dtype=np.float64)
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():.3f} ± {sd:.3f}"


def summarize_runs(runs: list[Path]) -> str:
    ms: list[dict[str, Any]] = [json.loads((r / "metrics.json").read_text()) for r in runs]
    variants = [row["variant"] for row in ms[0]["rows"]]
    out = [f"{len(runs)} runs: " + ", ".join(str(r) for r in runs), ""]
    out += [
        "| variant | macro-F1 | accuracy | missed defect | false alarm |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        rows = [next(x for x in m["rows"] if x["variant"] == v) for m in ms]
        out.append(
            f"| {v} | **{_pm([x['macro_f1'] for x in rows])}** | {_pm([x['accuracy'] for x in rows])} "
            f"| {_pm([x['missed_defect_rate'] for x in rows])} | {_pm([x['false_alarm_rate'] for x in rows])} |"
        )
    if all("held_out" in m for m in ms):
        out += [
            "",
            "| held-out, shipped variant | ECE before | ECE after | missed defect | false alarm | review rate | good failed or reviewed |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, name in (
            ("held_out", "notes as recorded"),
            ("held_out_empty_notes", "notes emptied"),
        ):
            h = [m[key] for m in ms]
            out.append(
                f"| {name} | {_pm([x['ece_before'] for x in h])} | {_pm([x['ece_after'] for x in h])} "
                f"| {_pm([x['missed_defect_rate'] for x in h])} | {_pm([x['false_alarm_rate'] for x in h])} "
                f"| {_pm([x['review_rate'] for x in h])} | {_pm([x['good_flagged_rate'] for x in h])} |"
            )
        d = [m["decision"] for m in ms]
        out.append(
            f"\ntemperature {_pm([x['temperature'] for x in d])}, pass_threshold "
            f"{_pm([x['pass_threshold'] for x in d])}, fail_threshold {_pm([x['fail_threshold'] for x in d])}"
        )
    if all(m.get("pointing") for m in ms):
        out += [
            "",
            "| map | hit (void, offset, residue) | mass | chance | hit void | hit offset | hit residue | hit oversize |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key in ("attention_cam", "attention_cmaf"):
            p = [m["pointing"][key] for m in ms]
            cells = []
            for c in ("void", "offset", "residue", "oversize"):
                cells.append(_pm([x["per_class"][c]["hit"] for x in p if c in x["per_class"]]))
            out.append(
                f"| {key.split('_')[1]} | **{_pm([x['localized']['hit'] for x in p])}** | {_pm([x['localized']['mass'] for x in p])} "
                f"| {_pm([x['localized']['chance'] for x in p])} | " + " | ".join(cells) + " |"
            )
    return "\n".join(out)
