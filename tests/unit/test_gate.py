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


def test_impossible_gate_exits_3_keeps_the_folder_and_pushes_nothing(
    tiny_bert_dir: Any, tmp_path: Any, hf_cache: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import yaml

    import hfcompress.hub
    from hfcompress.cli import main

    pushed: list[Any] = []
    monkeypatch.setattr(hfcompress.hub, "push_to_hub", lambda *a, **k: pushed.append((a, k)) or {})
    rows = [{"text": f"review {i}: {'great' if i % 2 else 'awful'} film", "label": i % 2} for i in range(60)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(tiny_bert_dir), "data": str(data), "steps": [],
        "evaluate": {"evaluators": ["task-metrics", "speed"], "batch_size": 4, "sequence_length": 16,
                     "warmup": 0, "repeats": 1},
        "gate": {"min": {"probe_accuracy": 1.5}},  # accuracy cannot exceed 1
    }))
    out = tmp_path / "out"
    code = main(["run", str(recipe), "--output", str(out), "--push-to", "org/never", "--json", "--no-cache"])
    assert code == 3
    assert pushed == []
    results = json.loads((out / "results.json").read_text())
    assert results["gate"]["passed"] is False
    assert results["gate"]["failures"] == check_gate(results, {"min": {"probe_accuracy": 1.5}})
    assert "probe_accuracy" in results["gate"]["failures"][0]
    card = (out / "README.md").read_text()
    assert "Quality gate: **failed**" in card and results["gate"]["failures"][0] in card
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["exit_code"] == 3
