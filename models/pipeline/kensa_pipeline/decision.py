"""Calibrated pass / fail / review decisions.

* **Temperature scaling** (Guo et al. 2017): one scalar T > 0 fitted on the validation split by
  minimising the negative log-likelihood of softmax(logits / T); it changes confidences, never
  the arg-max.
* **Expected calibration error** (ECE): 15 equal-width bins of top-1 confidence, the
  sample-weighted mean |accuracy - confidence| over bins.
* **Operating point**, chosen on the validation split:

  - ``pass`` when the calibrated P(normal) >= ``pass_threshold``;
  - else ``fail`` (with that class) when the largest calibrated defect-class probability
    >= ``fail_threshold``;
  - otherwise ``review`` (a human verify station).

  ``pass_threshold`` is the lowest threshold (most units passed) whose missed-defect rate on
  validation (defect units given ``pass``) is at most the target. ``fail_threshold`` is the
  lowest threshold (fewest units sent to review) at which the validation units it fails are
  at least ``fail_precision`` (default 95%) right, i.e. a defect of exactly the class named;
  a good unit or another defect class failed counts as wrong. Both are searched over the
  validation units' own probabilities, so the thresholds sit exactly between two observed
  values (midpoints), not on a fixed grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T minimising the validation NLL (golden-section search on log T in [1/20, 20])."""
    if len(y) == 0:
        return 1.0
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, y, float(np.exp(a))), nll(logits, y, float(np.exp(b)))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, y, float(np.exp(a)))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, y, float(np.exp(b)))
    return float(np.exp((lo + hi) / 2))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence (equal-width bins)."""
    if len(y) == 0:
        return 0.0
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for i in range(bins):
        sel = (conf > edges[i]) & (conf <= edges[i + 1])
        if i == 0:
            sel |= conf == 0.0
        if sel.any():
            total += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(total)


def _candidates(values: np.ndarray) -> np.ndarray:
    """Thresholds between sorted distinct values (plus just above the max, and 0)."""
    v = np.unique(values)
    mids = (v[:-1] + v[1:]) / 2 if len(v) > 1 else np.zeros(0)
    return np.concatenate([[0.0], mids, [min(1.0, float(v[-1]) + 1e-9) if len(v) else 1.0]])


def dispositions(
    probs: np.ndarray, normal_index: int, pass_threshold: float, fail_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(disposition per unit: 0 pass, 1 fail, 2 review; the failed class or -1)."""
    p_normal = probs[:, normal_index]
    defect = probs.copy()
    defect[:, normal_index] = -1.0
    top = defect.argmax(axis=1)
    top_p = defect.max(axis=1)
    d = np.full(len(probs), 2, dtype=np.int64)
    d[p_normal >= pass_threshold] = 0
    fail = (d == 2) & (top_p >= fail_threshold)
    d[fail] = 1
    cls = np.where(d == 1, top, -1)
    return d, cls


def decision_rates(
    probs: np.ndarray,
    y: np.ndarray,
    normal_index: int,
    pass_threshold: float,
    fail_threshold: float,
) -> dict[str, Any]:
    """Missed-defect, false-alarm and review rates of one operating point on labelled units.

    missed_defect_rate: defect units given pass / defect units; false_alarm_rate: good units
    given fail / good units; review_rate: units sent to review / all units;
    good_flagged_rate: good units failed or sent to review / good units;
    fail_correct_rate: failed units whose named class is their true class / failed units."""
    d, cls = dispositions(probs, normal_index, pass_threshold, fail_threshold)
    defect = y != normal_index
    good = ~defect
    n_fail = int((d == 1).sum())

    def rate(mask: np.ndarray, of: np.ndarray) -> float:
        return float(mask[of].mean()) if of.any() else 0.0

    return {
        "n": int(len(y)),
        "missed_defect_rate": rate(d == 0, defect),
        "false_alarm_rate": rate(d == 1, good),
        "review_rate": float((d == 2).mean()) if len(y) else 0.0,
        "good_flagged_rate": rate(d != 0, good),
        "defect_review_rate": rate(d == 2, defect),
        "fail_correct_rate": float((cls[d == 1] == y[d == 1]).mean()) if n_fail else 1.0,
    }


def choose_operating_point(
    probs: np.ndarray,
    y: np.ndarray,
    normal_index: int,
    target_missed: float = 0.01,
    fail_precision: float = 0.95,
) -> tuple[float, float]:
    """(pass_threshold, fail_threshold) on calibrated validation probabilities (module doc)."""
    p_normal = probs[:, normal_index]
    defect = y != normal_index
    n_def = max(1, int(defect.sum()))
    pass_t = 1.0 + 1e-9  # nothing passes unless some threshold meets the target
    for t in _candidates(p_normal):  # ascending: the first that meets the target passes most
        if ((p_normal >= t) & defect).sum() / n_def <= target_missed + 1e-12:
            pass_t = float(t)
            break
    pass_t = min(pass_t, 1.0)
    rest = p_normal < pass_t
    dprobs = probs.copy()
    dprobs[:, normal_index] = -1.0
    top = dprobs.argmax(axis=1)
    top_p = dprobs.max(axis=1)
    fail_t = 1.0
    for t in _candidates(top_p[rest]) if rest.any() else []:
        sel = rest & (top_p >= t)
        if not sel.any():
            continue
        if (top[sel] == y[sel]).mean() >= fail_precision:
            fail_t = float(t)
            break
    return pass_t, max(fail_t, 1e-6)


def validation_distribution(probs: np.ndarray, names: list[str], bins: int = 10) -> dict[str, Any]:
    """Label shares of the (arg-max) predictions and a histogram of calibrated top-1
    confidence on validation: the reference for the service's drift gauge."""
    pred = probs.argmax(axis=1)
    n = max(1, len(pred))
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf = probs.max(axis=1)
    hist, _ = np.histogram(conf, bins=edges)
    return {
        "labels": {nm: round(float((pred == i).sum() / n), 6) for i, nm in enumerate(names)},
        "confidence_bins": [round(float(e), 6) for e in edges],
        "confidence_hist": [round(float(h / n), 6) for h in hist],
    }


def build_decision(
    val_logits: np.ndarray,
    val_y: np.ndarray,
    normal_index: int,
    target_missed: float,
    split_name: str,
    fail_precision: float = 0.95,
) -> dict[str, Any]:
    """The manifest's ``decision`` section fitted on validation logits."""
    t = fit_temperature(val_logits, val_y)
    p_raw = softmax(val_logits)
    p = softmax(val_logits, t)
    pass_t, fail_t = choose_operating_point(p, val_y, normal_index, target_missed, fail_precision)
    r = decision_rates(p, val_y, normal_index, pass_t, fail_t)
    return {
        "temperature": round(t, 6),
        "pass_threshold": round(pass_t, 6),
        "fail_threshold": round(fail_t, 6),
        "target_missed_defect_rate": target_missed,
        "validation": {
            "split": split_name,
            "n": r["n"],
            "missed_defect_rate": r["missed_defect_rate"],
            "false_alarm_rate": r["false_alarm_rate"],
            "review_rate": r["review_rate"],
            "ece_before": ece(p_raw, val_y),
            "ece_after": ece(p, val_y),
        },
    }


def held_out_report(
    decision: dict[str, Any], logits: np.ndarray, y: np.ndarray, normal_index: int
) -> dict[str, Any]:
    """ECE before/after and the operating point's rates on a held-out split."""
    t = decision["temperature"]
    p = softmax(logits, t)
    r = decision_rates(p, y, normal_index, decision["pass_threshold"], decision["fail_threshold"])
    return {"ece_before": ece(softmax(logits), y), "ece_after": ece(p, y), **r}
