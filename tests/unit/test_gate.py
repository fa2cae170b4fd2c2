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
    assert "held-out samples" not in failures[0]  # no sample count in the results: nothing to add


def test_an_accuracy_drop_is_also_given_in_held_out_samples() -> None:
    """A bound of a few samples cannot be resolved; the message shows the counts (512 x 0.005 = 2.6)."""
    results = _results()
    results["compressed"]["metrics"].update(probe_accuracy=0.828, eval_samples=512.0)
    results["base"]["metrics"].update(probe_accuracy=0.838, eval_samples=512.0)
    failures = check_gate(results, {"max_drop": {"probe_accuracy": 0.005}})
    assert len(failures) == 1
    assert "on 512 held-out samples that is 5.1 more wrong answers against a bound of 2.6" in failures[0]
    failures = check_gate(results, {"max_drop": {"perplexity": 1.0}})
    assert len(failures) == 1 and "held-out samples" not in failures[0]  # not an accuracy


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


# -- directions come from the evaluator's declaration, not from the metric's name ------------------


def _error_rate_plugin() -> Any:
    """A third-party evaluator whose metric is lower-is-better, with a name no rule could guess."""
    import types

    from hfcompress.plugin import Evaluator, Metric, hookimpl

    class ErrorRate(Evaluator):
        name = "error-rate"
        metrics = (Metric("error_rate", label="Error rate", higher_is_better=False),
                   Metric("error_rate_samples", label="samples checked", setting=True))

        def evaluate(self, ctx: Any) -> dict[str, float]:
            return {"error_rate": 0.1 if ctx.is_base else 0.25, "error_rate_samples": 4.0}

    @hookimpl
    def hfcompress_register_evaluators(register: Any) -> None:
        register(ErrorRate)

    module = types.ModuleType("error_rate_plugin")
    module.hfcompress_register_evaluators = hfcompress_register_evaluators  # type: ignore[attr-defined]
    return module


def test_a_third_party_lower_is_better_metric_gets_its_direction_on_the_card_and_in_the_gate(
    tiny_bert_dir: Any, tmp_path: Any
) -> None:
    from hfcompress.artifact import load_state
    from hfcompress.card import write_card
    from hfcompress.evaluation import (
        compare_blocks,
        evaluate_state,
        evaluator_declarations,
        metric_declarations,
    )
    from hfcompress.gate import check_gate_metrics
    from hfcompress.plugin import EvalSettings
    from hfcompress.registry import extra_plugins

    settings = EvalSettings(evaluators=["error-rate"])
    recipe = {"model": str(tiny_bert_dir), "steps": [], "evaluate": settings.model_dump()}
    with extra_plugins(_error_rate_plugin(), distribution="hfcompress-error-rate"):
        check_gate_metrics({"max_drop": {"error_rate": 0.1}}, evaluator_declarations(settings))  # plan accepts it
        state = load_state(tiny_bert_dir)
        base, base_ctx = evaluate_state(state, None, settings)
        comp, _ = evaluate_state(state, None, settings, reference=base_ctx)
        assert base["metrics"] == {"error_rate": 0.1} and comp["metrics"] == {"error_rate": 0.25}
        assert comp["settings"] == {"error_rate_samples": 4}
        results = {"model": str(tiny_bert_dir), "task": "feature-extraction", "base": base, "compressed": comp,
                   "comparison": compare_blocks(base, comp)}
        swapped = {**results, "base": comp, "compressed": base, "comparison": compare_blocks(comp, base)}

        # the gate: the error rate rose by 0.15, a drop in quality beyond 0.1; falling is no drop at all
        failures = check_gate(results, {"max_drop": {"error_rate": 0.1}})
        assert len(failures) == 1
        assert "error_rate dropped by 0.15" in failures[0] and "lower is better" in failures[0]
        assert check_gate(results, {"max_drop": {"error_rate": 0.2}}) == []
        assert check_gate(swapped, {"max_drop": {"error_rate": 0.0}}) == []
        assert check_gate(results, {"max_drop": {"error_rate": 0.1}}, metric_declarations(settings)) == failures

        # the card: the row carries the declared label, and an increase is worse
        rows = {}
        for name, blocks in (("worse", results), ("better", swapped)):
            folder = tmp_path / name
            folder.mkdir()
            text = write_card(folder, blocks, recipe).read_text()
            rows[name] = next(line for line in text.splitlines() if line.startswith("| Error rate |"))
            assert "- samples checked: 4" in text  # a declared setting: listed with the settings, not a row
            assert "| samples checked" not in text and "error_rate_samples" not in text
    assert rows["worse"].endswith("| +0.15 (+150%) worse |"), rows["worse"]
    assert rows["better"].endswith("| -0.15 (-60%) better |"), rows["better"]


def test_check_gate_metrics_names_the_metric_the_evaluators_and_what_they_declare() -> None:
    from hfcompress.errors import BadInputError
    from hfcompress.evaluation import evaluator_declarations
    from hfcompress.gate import check_gate_metrics
    from hfcompress.plugin import EvalSettings

    declared = evaluator_declarations(EvalSettings(evaluators=["task-metrics", "speed"]))
    check_gate_metrics({"max_drop": {"accuracy": 0.1, "latency_ms": 5}, "min": {"probe_f1": 0.5}}, declared)
    check_gate_metrics(None, declared)
    with pytest.raises(BadInputError) as info:
        check_gate_metrics({"max_drop": {"no_such_metric": 0.1}, "min": {"acuracy": 0.5}}, declared)
    message = str(info.value)
    assert "gate.max_drop.no_such_metric" in message and "'no_such_metric'" in message
    assert "gate.min.acuracy" in message and "did you mean 'accuracy'?" in message
    assert "task-metrics: accuracy, f1, f1_macro, probe_accuracy, probe_f1, perplexity" in message
    assert "speed: latency_ms, latency_p95_ms, throughput_samples_per_s" in message
    assert "speed_threads" not in message  # settings are not offered as metrics
    # a setting is a condition of the measurement, not something a gate can hold a model to
    with pytest.raises(BadInputError, match="gate.max_drop.speed_threads: 'speed_threads' is a setting"):
        check_gate_metrics({"max_drop": {"speed_threads": 1}}, declared)
    # a metric of an evaluator that will not run is not available either
    with pytest.raises(BadInputError, match="gate.min.fidelity_cosine_mean"):
        check_gate_metrics({"min": {"fidelity_cosine_mean": 0.9}}, declared)
