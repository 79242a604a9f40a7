"""Temperature scaling, ECE, operating point, and the manifest's decision schema."""

from __future__ import annotations

import numpy as np
import pytest

from kensa_pipeline.decision import (
    build_decision,
    choose_operating_point,
    decision_rates,
    dispositions,
    ece,
    fit_temperature,
    softmax,
    validation_distribution,
)
from kensa_pipeline.manifest import validate_decision, validate_distribution


def _data(n: int = 4000, t_true: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 4))
    p = softmax(z)
    y = np.array([rng.choice(4, p=row) for row in p])
    return z * t_true, y  # logits overconfident by t_true


def test_temperature_recovers_overconfidence_and_lowers_ece() -> None:
    logits, y = _data()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(2.5, rel=0.1)
    assert ece(softmax(logits, t), y) < 0.5 * ece(softmax(logits), y)
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_dispositions_follow_the_rule() -> None:
    p = np.array([[0.95, 0.03, 0.02], [0.5, 0.45, 0.05], [0.1, 0.85, 0.05], [0.3, 0.4, 0.3]])
    d, cls = dispositions(p, 0, 0.93, 0.8)
    assert d.tolist() == [0, 2, 1, 2] and cls.tolist() == [-1, -1, 1, -1]
    r = decision_rates(p, np.array([0, 1, 1, 2]), 0, 0.93, 0.8)
    assert r["missed_defect_rate"] == 0.0 and r["review_rate"] == 0.5
    assert r["fail_correct_rate"] == 1.0 and r["good_flagged_rate"] == 0.0


def test_operating_point_meets_target_on_validation() -> None:
    logits, y = _data(seed=1)
    p = softmax(logits, fit_temperature(logits, y))
    for target in (0.0, 0.01, 0.05):
        pt, ft = choose_operating_point(p, y, 0, target, 0.95)
        r = decision_rates(p, y, 0, pt, ft)
        assert r["missed_defect_rate"] <= target + 1e-12
        d, cls = dispositions(p, 0, pt, ft)
        if (d == 1).any():
            assert (cls[d == 1] == y[d == 1]).mean() >= 0.95
        # the next lower pass threshold would miss more than the target (fewest reviews)
        lower = np.unique(p[:, 0])[np.unique(p[:, 0]) < pt]
        if len(lower):
            r2 = decision_rates(p, y, 0, float(lower[-1]) - 1e-12, ft)
            assert r2["missed_defect_rate"] > target


def test_decision_section_schema() -> None:
    logits, y = _data(800)
    d = build_decision(logits, y, 0, 0.01, "val (800 samples)")
    validate_decision(d)
    assert set(d) == {
        "temperature",
        "pass_threshold",
        "fail_threshold",
        "target_missed_defect_rate",
        "validation",
    }
    assert set(d["validation"]) == {
        "split",
        "n",
        "missed_defect_rate",
        "false_alarm_rate",
        "review_rate",
        "ece_before",
        "ece_after",
    }
    bad = {**d, "temperature": 0.0}
    with pytest.raises(ValueError):
        validate_decision(bad)
    vd = validation_distribution(softmax(logits, d["temperature"]), ["a", "b", "c", "d"])
    validate_distribution(vd, ["a", "b", "c", "d"])
    assert abs(sum(vd["confidence_hist"]) - 1) < 1e-5 and abs(sum(vd["labels"].values()) - 1) < 1e-5
    with pytest.raises(ValueError):
        validate_distribution(vd, ["a", "b"])
