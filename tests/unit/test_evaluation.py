"""Evaluation orchestration: held-out data only, evaluate_path, blocks, comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import hfcompress.evaluation as evaluation
import hfcompress.model_io as model_io
from hfcompress.data import DataConfig, load_data
from hfcompress.errors import BadInputError, HfCompressError
from hfcompress.evaluate_command import evaluate_path
from hfcompress.evaluation import (
    compare_blocks,
    evaluate_state,
    evaluator_declarations,
    higher_is_better,
    metric_declarations,
    round_value,
)
from hfcompress.plugin import EvalSettings, Metric


def _data_file(tmp_path: Path) -> Path:
    rows = [{"text": f"sentence {i} is {'fine' if i % 3 else 'bad'}", "label": int(i % 3 > 0)} for i in range(80)]
    rows += rows[:15]  # duplicates: a copy of a training text must not reach evaluation either
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_evaluation_sees_only_the_held_out_split(tiny_bert_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data_file = _data_file(tmp_path)
    seen: list[str] = []
    original = model_io.tokenize

    def spy(state: Any, texts: list[str], sequence_length: int) -> dict[str, Any]:
        seen.extend(texts)
        return original(state, texts, sequence_length)

    # every evaluator tokenizes through model_io; catch all of them
    monkeypatch.setattr(model_io, "tokenize", spy)
    monkeypatch.setattr(evaluation, "tokenize", spy)
    settings = EvalSettings(evaluators=["task-metrics", "speed"], batch_size=4, sequence_length=16, warmup=0, repeats=1)
    result = evaluate_path(tiny_bert_dir, str(data_file), settings)

    splits = load_data(DataConfig(source=str(data_file)))
    train, held_out = set(splits.train["text"]), set(splits.eval["text"])
    assert seen and set(seen) <= held_out
    assert not set(seen) & train
    assert set(seen) == held_out  # and all of it was evaluated
    assert result["data"]["eval_samples"] == len(splits.eval)
    assert result["model"]["settings"]["eval_samples"] == len(splits.eval)


def test_evaluate_path_returns_a_results_block(tiny_bert_dir: Path, tmp_path: Path) -> None:
    settings = EvalSettings(evaluators=["task-metrics", "speed"], batch_size=4, sequence_length=16, warmup=0, repeats=2)
    result = evaluate_path(tiny_bert_dir, str(_data_file(tmp_path)), settings)
    block = result["model"]
    assert set(block) == {"size_bytes", "num_parameters", "latency_ms", "metrics", "settings"}
    assert block["latency_ms"] > 0 and 0 <= block["metrics"]["probe_accuracy"] <= 1
    # conditions in "settings", measurements in "metrics", never both
    assert block["settings"] == {"eval_samples": block["settings"]["eval_samples"], "speed_batch_size": 4,
                                 "speed_sequence_length": 16, "speed_threads": 1, "speed_warmup": 0, "speed_repeats": 2}
    assert not set(block["settings"]) & set(block["metrics"])
    assert result["task"] == "feature-extraction" and result["settings"]["batch_size"] == 4
    assert result["environment"]["threads"] == 1
    json.dumps(result)  # the CLI prints it as JSON


def test_evaluate_path_uses_the_output_folders_recipe(tiny_bert_dir: Path, tmp_path: Path) -> None:
    data_file = _data_file(tmp_path)
    (tiny_bert_dir / "hfcompress.yaml").write_text(
        f"model: x\ndata: {{source: {data_file}}}\nevaluate: {{evaluators: [speed], batch_size: 2, repeats: 1, warmup: 0}}\n"
    )
    result = evaluate_path(tiny_bert_dir)
    assert result["data"]["spec"]["source"] == str(data_file)
    assert result["model"]["settings"]["speed_batch_size"] == 2


def test_evaluate_path_without_data_says_how_to_fix(tiny_bert_dir: Path) -> None:
    with pytest.raises(BadInputError, match="--data SPEC"):
        evaluate_path(tiny_bert_dir, None, EvalSettings())


def test_unknown_extra_metric_fails_early_with_the_offline_ones(tiny_bert_dir: Path, tmp_path: Path) -> None:
    settings = EvalSettings(metrics=["no-such-metric-xyz"])
    with pytest.raises(BadInputError, match="accuracy, f1"):
        evaluate_path(tiny_bert_dir, str(_data_file(tmp_path)), settings)


def test_a_failing_evaluator_is_named(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfcompress_plugins.eval_speed import Speed

    from hfcompress.artifact import load_state

    def broken(self: Any, ctx: Any) -> dict[str, float]:
        raise RuntimeError("boom")

    monkeypatch.setattr(Speed, "evaluate", broken)
    with pytest.raises(HfCompressError, match="evaluator 'speed' failed: RuntimeError: boom"):
        evaluate_state(load_state(tiny_bert_dir), None, EvalSettings(evaluators=["speed"]))


def test_compare_blocks() -> None:
    base = {"size_bytes": 1000, "num_parameters": 10, "latency_ms": 8.0, "metrics": {"accuracy": 0.8},
            "settings": {"eval_samples": 5}}
    comp = {"size_bytes": 250, "num_parameters": 10, "latency_ms": 2.0,
            "metrics": {"accuracy": 0.76, "fidelity_kl": 0.01}, "settings": {"eval_samples": 5}}
    out = compare_blocks(base, comp)
    assert out["speedup"] == 4 and out["size_ratio"] == 0.25
    assert out["metrics"]["accuracy"] == {"change": -0.04, "relative_change_pct": -5}
    assert out["metrics"]["size_bytes"]["change"] == -750
    assert "eval_samples" not in out["metrics"] and "fidelity_kl" not in out["metrics"]


def test_round_value_and_directions() -> None:
    assert round_value(0.123456789) == 0.123457 and round_value(12345678.9) == 12345700
    assert round_value(4713318.0) == 4713318 and round_value(0.99999999) == 1  # counts stay exact
    assert round_value(3.0) == 3 and isinstance(round_value(3.0), int) and round_value(7) == 7
    assert higher_is_better("accuracy") and higher_is_better("fidelity_cosine_mean")
    assert not higher_is_better("perplexity") and not higher_is_better("fidelity_kl")
    assert not higher_is_better("latency_p95_ms") and not higher_is_better("size_bytes")
    # a name no evaluator declares: the documented default, whatever it looks like
    assert higher_is_better("error_rate") and higher_is_better("my_latency_ms")
    assert not higher_is_better("error_rate", {"error_rate": Metric("error_rate", higher_is_better=False)})


def test_declarations_are_those_of_the_evaluators_that_run() -> None:
    speed = metric_declarations(EvalSettings(evaluators=["speed"]))
    assert list(speed) == ["latency_ms", "latency_p95_ms", "throughput_samples_per_s", "speed_batch_size",
                           "speed_sequence_length", "speed_threads", "speed_warmup", "speed_repeats"]
    assert speed["latency_ms"].title == "Latency, median (ms)" and not speed["latency_ms"].higher_is_better
    assert speed["speed_threads"].setting and not speed["latency_ms"].setting
    everything = metric_declarations()
    assert {"fidelity_kl", "accuracy", "size_bytes", "num_parameters", "perplexity"} <= set(everything)
    assert everything["fidelity_kl"].perfect == 0.0 and everything["fidelity_cosine_mean"].perfect == 1.0
    # task-metrics declares the extra evaluate metrics it will compute (direction unknown: higher)
    extra = evaluator_declarations(EvalSettings(evaluators=["task-metrics"], metrics=["matthews_correlation",
                                                                                      "./my/mcc.py"]))
    names = [m.name for m in extra["task-metrics"]]
    assert names[-2:] == ["matthews_correlation", "mcc"] and "accuracy" in names
    with pytest.raises(BadInputError, match=r"evaluate.evaluators: unknown evaluator 'sped'.*speed"):
        evaluator_declarations(EvalSettings(evaluators=["sped"]))


def test_an_undeclared_metric_is_kept_with_a_warning_naming_the_evaluator(
    tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import types

    from hfcompress.artifact import load_state
    from hfcompress.plugin import Evaluator, hookimpl
    from hfcompress.registry import extra_plugins

    class Sloppy(Evaluator):
        name = "sloppy-counter"
        metrics = (Metric("declared_count"),)

        def evaluate(self, ctx: Any) -> dict[str, float]:
            return {"declared_count": 1.0, "surprise_count": 2.0}

    @hookimpl
    def hfcompress_register_evaluators(register: Any) -> None:
        register(Sloppy)

    module = types.ModuleType("sloppy_plugin")
    module.hfcompress_register_evaluators = hfcompress_register_evaluators  # type: ignore[attr-defined]
    with extra_plugins(module), caplog.at_level("WARNING", logger="hfcompress.evaluation"):
        block, _ = evaluate_state(load_state(tiny_bert_dir), None, EvalSettings(evaluators=["sloppy-counter"]))
    assert block["metrics"] == {"declared_count": 1, "surprise_count": 2} and block["settings"] == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "'sloppy-counter'" in warnings[0] and "'surprise_count'" in warnings[0]
    assert "declared_count" not in warnings[0] and "Sloppy.metrics" in warnings[0]


def test_sentence_embeddings_equal_fixed_padding_in_input_order(tiny_bert_dir: Path) -> None:
    """Length-sorted batches padded to their longest text give the vectors fixed padding gives."""
    import torch

    from hfcompress.artifact import load_state
    from hfcompress.model_io import forward, reduce_output, sentence_embeddings, tokenize

    state = load_state(tiny_bert_dir)
    texts = ["a", "a much longer sentence with many more words in it", "mid length text", "b c", "one two three"]
    got = sentence_embeddings(state, texts, max_length=16, batch_size=2)
    batch = tokenize(state, texts, 16)
    expected = torch.nn.functional.normalize(reduce_output(state, forward(state, batch), batch["attention_mask"]).double(),
                                             dim=-1)
    assert got.shape == (5, 32) and got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(5, dtype=torch.float64))
