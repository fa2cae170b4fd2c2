"""The quality gate: drops in each metric's own direction, floors, and missing metrics."""

from __future__ import annotations

from typing import Any

import pytest

from hfcompress.gate import check_gate


def _results() -> dict[str, Any]:
    return {
        "base": {"size_bytes": 1000, "num_parameters": 100, "latency_ms": 10.0,
                 "metrics": {"accuracy": 0.9, "perplexity": 20.0}},
        "compressed": {"size_bytes": 400, "num_parameters": 60, "latency_ms": 4.0,
                       "metrics": {"accuracy": 0.87, "perplexity": 21.5, "fidelity_cosine_mean": 0.991}},
    }


def test_no_gate_passes() -> None:
    assert check_gate(_results(), None) == []
    assert check_gate(_results(), {}) == []


def test_max_drop_higher_is_better() -> None:
    assert check_gate(_results(), {"max_drop": {"accuracy": 0.05}}) == []
    failures = check_gate(_results(), {"max_drop": {"accuracy": 0.02}})
    assert len(failures) == 1
    assert "accuracy dropped by 0.03" in failures[0] and "0.02" in failures[0]


def test_max_drop_lower_is_better_counts_increases() -> None:
    # perplexity went up by 1.5: that is the drop in quality
    assert check_gate(_results(), {"max_drop": {"perplexity": 2.0}}) == []
    failures = check_gate(_results(), {"max_drop": {"perplexity": 1.0}})
    assert len(failures) == 1 and "perplexity dropped by 1.5" in failures[0]
    # latency fell: no drop at all, even with a zero allowance
    assert check_gate(_results(), {"max_drop": {"latency_ms": 0.0}}) == []


def test_fidelity_drop_is_measured_from_the_perfect_score() -> None:
    assert check_gate(_results(), {"max_drop": {"fidelity_cosine_mean": 0.01}}) == []
    failures = check_gate(_results(), {"max_drop": {"fidelity_cosine_mean": 0.005}})
    assert len(failures) == 1 and "0.009" in failures[0]


def test_min_floor() -> None:
    assert check_gate(_results(), {"min": {"accuracy": 0.85}}) == []
    failures = check_gate(_results(), {"min": {"accuracy": 0.95, "fidelity_cosine_mean": 0.999}})
    assert len(failures) == 2
    assert any("accuracy = 0.87 is below gate.min.accuracy = 0.95" in f for f in failures)


def test_impossible_gate_fails() -> None:
    failures = check_gate(_results(), {"max_drop": {"accuracy": -1.0}, "min": {"accuracy": 2.0}})
    assert len(failures) == 2


@pytest.mark.parametrize("section", ["max_drop", "min"])
def test_missing_metric_names_what_exists(section: str) -> None:
    failures = check_gate(_results(), {section: {"acuracy": 0.01}})
    assert len(failures) == 1
    assert "'acuracy'" in failures[0]
    assert "accuracy" in failures[0].split("measured metrics:")[1]
    assert "latency_ms" in failures[0]


def test_unknown_section_is_reported() -> None:
    failures = check_gate(_results(), {"max_drops": {"accuracy": 0.1}})
    assert failures and "max_drops" in failures[0]
