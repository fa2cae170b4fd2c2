"""Causal LMs: ``backend: auto`` chooses on perplexity, greedy agreement and decode speed; the
``generation`` evaluator measures the same; tiny random Llama built in the test (real builder runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime_genai")

from test_genai_runtime import TEXTS, _config, _ctx, _load, make_tiny_causal_lm  # noqa: E402

from hfcompress.errors import GateFailedError  # noqa: E402
from hfcompress.generation import greedy_agreement  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm("llama", tmp_path_factory.mktemp("dec") / "llama")


def test_greedy_agreement_counts_positions_and_the_identical_start() -> None:
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert greedy_agreement(ref, ref) == {"greedy_agreement": 1.0, "matching_prefix": 4.0}
    got = greedy_agreement(ref, [[1, 2, 9, 4], [0, 6, 7, 8]])
    assert got == {"greedy_agreement": 0.75, "matching_prefix": 1.0}  # (3/4 + 3/4) / 2; prefixes 2 and 0
    with pytest.raises(ValueError, match="2 reference"):
        greedy_agreement(ref, ref[:1])


def test_auto_for_a_causal_lm_measures_generation_and_keeps_the_fastest_passing(llama: Path, tmp_path: Path) -> None:
    from hfcompress_plugins.quantization import Quantization

    config = _config(backend="auto", candidates=["onnxruntime-genai:int8", "onnxruntime-genai:fp32", "torch:bf16"],
                     agreement_prompts=4, timing_batches=2, max_perplexity_increase=0.05, min_greedy_agreement=0.5)
    result = Quantization().apply(_load(llama), config, _ctx(tmp_path))
    changes = result.changes
    assert changes["task"] == "text-generation" and changes["input"]["perplexity"] > 1.0
    assert changes["quality_gate"] == {"max_perplexity_increase": 0.05, "min_greedy_agreement": 0.5,
                                       "texts": len(TEXTS), "perplexity_tokens_per_text": 64,
                                       "agreement_prompts": 4, "agreement_new_tokens": 32}
    rows = {r["candidate"]: r for r in changes["candidates"]}
    # fp32 with a KV cache is the same model: perplexity and greedy tokens as PyTorch's
    assert abs(rows["onnxruntime-genai:fp32"]["perplexity_increase"]) < 1e-3
    assert rows["onnxruntime-genai:fp32"]["greedy_agreement"] == 1.0
    passed = [n for n, r in rows.items() if r["status"] == "passed"]
    assert "onnxruntime-genai:fp32" in passed
    for name in passed:
        assert rows[name]["decode_tokens_per_s"] > 0 and rows[name]["ttft_ms"] > 0
        assert rows[name]["perplexity_increase"] <= 0.05 and rows[name]["greedy_agreement"] >= 0.5
    chosen = changes["chosen"]
    assert chosen in passed
    fastest = max(rows[n]["decode_tokens_per_s"] for n in passed)
    assert rows[chosen]["decode_tokens_per_s"] >= fastest / (1 + config.tie_margin)
    assert result.state.info["quantization"]["auto"]["chosen"] == chosen
    # the others' exports are gone from the work dir
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) in ([], [chosen.replace(":", "-")])


def test_auto_for_a_causal_lm_rejects_with_the_measured_reason_and_fails_when_none_pass(llama: Path,
                                                                                     tmp_path: Path) -> None:
    from hfcompress_plugins.quantization import Quantization

    config = _config(backend="auto", candidates=["onnxruntime-genai:int4", "onnxruntime-genai:int8"],
                     agreement_prompts=2, timing_batches=1, max_perplexity_increase=0.0, min_greedy_agreement=1.0)
    with pytest.raises(GateFailedError, match="no candidate passed") as info:
        Quantization().apply(_load(llama), config, _ctx(tmp_path))
    message = str(info.value)
    assert "onnxruntime-genai:int4: rejected (perplexity" in message or "greedy agreement" in message
    assert "max_perplexity_increase 0%" in message or "min_greedy_agreement 1.0" in message


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"backend": "quanto", "group_size": 64}, "group_size: onnxruntime-genai options; backend is 'quanto'"),
        ({"backend": "auto", "algorithm": "k_quant"}, "auto's candidates carry their own"),
        ({"backend": "onnxruntime-genai", "dtype": "int8", "int8_layers": ["last_matmul"]}, "dtype is 'int8'"),
        ({"backend": "onnxruntime-genai", "group_size": 48}, "group_size"),
    ],
)
def test_genai_options_are_checked(step: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        _config(**step)


def test_builder_options_follow_the_config() -> None:
    from hfcompress_plugins.quantization.genai_backend import builder_options

    assert builder_options(_config(backend="onnxruntime-genai", dtype="fp32")) == {}
    assert builder_options(_config(backend="onnxruntime-genai", dtype="int4", algorithm="k_quant", group_size=64,
                                   int8_layers=["last_matmul", "mixed_layers"])) == {
        "algo_config": "k_quant", "block_size": "64", "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"}
    assert builder_options(_config(backend="onnxruntime-genai")) == {"block_size": "32"}  # rtn: the builder's default
    auto = _config(backend="auto")
    kquant = auto.for_candidate("onnxruntime-genai:int4-kquant-mixed")
    assert (kquant.algorithm, kquant.int8_layers) == ("k_quant", ["last_matmul", "mixed_layers"])
    awq = auto.for_candidate("onnxruntime-genai:int4-awq-mixed")
    assert (awq.algorithm, awq.int4_ratio, awq.resolved_dtype()) == ("awq", 0.3, "int4")
    assert builder_options(awq) == {}  # the builder writes fp32; NNCF rounds it (genai_calibrated)
    group128 = auto.for_candidate("onnxruntime-genai:int8-group128")
    assert builder_options(group128) == {"block_size": "128"} and group128.resolved_dtype() == "int8"
    head128 = auto.for_candidate("onnxruntime-genai:int8-head128")
    assert (head128.lm_head_group_size, head128.group_size, head128.resolved_dtype()) == (128, 32, "int8")
    assert builder_options(head128) == {}  # the builder writes fp32; genai_blocks rounds it
    block_min = auto.for_candidate("onnxruntime-genai:int4-block-min")
    assert (block_min.algorithm, block_min.resolved_dtype(), block_min.group_size) == ("block_min", "int4", 32)
    assert builder_options(block_min) == {}  # the builder writes fp32; genai_block_min rounds it


def test_default_candidates_for_causal_lms_are_measured_generators() -> None:
    from hfcompress_plugins.quantization.auto import candidate_names

    names = candidate_names(_config(backend="auto"), "cpu", "text-generation")
    assert names[:7] == ["onnxruntime-genai:int4", "onnxruntime-genai:int4-kquant-mixed",
                         "onnxruntime-genai:int4-awq-mixed", "onnxruntime-genai:int4-block-min",
                         "onnxruntime-genai:int8", "onnxruntime-genai:int8-head128", "onnxruntime-genai:fp32"]
    assert not any(n.startswith("onnxruntime-genai") for n in candidate_names(_config(backend="auto"), "cpu"))


def test_generation_evaluator_measures_speed_and_agreement(llama: Path, tmp_path: Path) -> None:
    import datasets
    from hfcompress_plugins.quantization import Quantization

    from hfcompress.evaluation import evaluate_state
    from hfcompress.plugin import EvalSettings

    base = _load(llama)
    int8 = Quantization().apply(_load(llama), _config(backend="onnxruntime-genai"), _ctx(tmp_path)).state
    data = datasets.Dataset.from_dict({"text": TEXTS})
    settings = EvalSettings(evaluators=["generation"], repeats=1, warmup=0)
    base_block, base_ctx = evaluate_state(base, data, settings)
    block, _ = evaluate_state(int8, data, settings, reference=base_ctx)
    assert base_block["metrics"]["decode_tokens_per_s"] > 0 and "greedy_agreement" not in base_block["metrics"]
    assert base_block["settings"] == {"generation_new_tokens": 64.0, "generation_prompts": float(len(TEXTS))}
    metrics = block["metrics"]
    assert metrics["decode_tokens_per_s"] > 0 and metrics["ttft_ms"] > 0
    # the evaluator's number is the shared routine's, on the held-out texts cut to 24 tokens
    from hfcompress.generation import continuations, prompt_ids

    ids = prompt_ids(base.tokenizer, TEXTS)
    expected = greedy_agreement(continuations(base.model, ids, pad_token_id=base.tokenizer.pad_token_id),
                                continuations(int8.model, ids, pad_token_id=base.tokenizer.pad_token_id))
    assert metrics["greedy_agreement"] == expected["greedy_agreement"] > 0.5  # measured 0.86 over 32 tokens
    assert metrics["greedy_matching_prefix"] == expected["matching_prefix"]


def test_default_recipe_on_a_causal_lm_quantizes_only_and_the_folder_verifies_with_the_runtime_alone(
        llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No recipe → the decoder default (quantization auto, no pruning); the push check generates
    with onnxruntime-genai alone and gets the tokens hfcompress.load(DIR).generate gave."""
    import json

    import hfcompress
    from hfcompress.hub import verify_folder
    from hfcompress.recipe import DEFAULT_DECODER_STEPS, Recipe

    assert [next(iter(s)) for s in Recipe.default(str(llama), "text-generation").to_dict()["steps"]] == ["quantization"]
    assert DEFAULT_DECODER_STEPS == [{"quantization": {"backend": "auto"}}]
    recipe = Recipe.default(str(llama), "text-generation").to_dict()
    recipe["steps"] = [{"quantization": {"backend": "auto", "candidates": ["onnxruntime-genai:int8"],
                                         "agreement_prompts": 4, "timing_batches": 1, "calibration_samples": 8,
                                         "min_greedy_agreement": 0.0, "max_perplexity_increase": 1.0}}]
    recipe["evaluate"] = {"max_samples": 8, "repeats": 1, "warmup": 0}
    out = tmp_path / "out"
    monkeypatch.setenv("HFCOMPRESS_CACHE", str(tmp_path / "cache"))
    result = hfcompress.compress(recipe=recipe, output_dir=out)
    results = json.loads((out / "results.json").read_text())
    step = results["steps"][0]["changes"]
    assert step["task"] == "text-generation" and step["chosen"] == "onnxruntime-genai:int8"
    assert results["compressed"]["metrics"]["decode_tokens_per_s"] > 0
    assert 0.0 <= results["compressed"]["metrics"]["greedy_agreement"] <= 1.0
    assert len(results["verification"]["greedy"]["new_tokens"]) > 0
    report = verify_folder(out)
    check = next(c for c in report["checks"] if c["loader"] == "onnxruntime-genai")
    assert check["status"] == "ok" and check["greedy_tokens_identical"] is True, check
    assert result.output_dir == out


def test_auto_on_gpt2_skips_the_runtime_it_cannot_export_and_says_why(tmp_path: Path) -> None:
    """GPT-2's Conv1D layers: onnxruntime-genai's builder has no GPT-2 exporter, so auto skips
    those candidates with the reason and keeps the ones that work (bf16)."""
    import transformers as tf
    from hfcompress_plugins.quantization import Quantization

    from hfcompress.testing.models import _minilm_tokenizer

    tokenizer = _minilm_tokenizer()
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=64, n_layer=2, n_head=4,
                                             n_positions=128, pad_token_id=tokenizer.pad_token_id))
    model.config.architectures = ["GPT2LMHeadModel"]
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    config = _config(backend="auto", candidates=["onnxruntime-genai:int8", "torch:bf16"], agreement_prompts=2,
                     timing_batches=1, max_perplexity_increase=1.0, min_greedy_agreement=0.0)
    changes = Quantization().apply(_load(tmp_path / "gpt2"), config, _ctx(tmp_path / "work")).changes
    rows = {r["candidate"]: r for r in changes["candidates"]}
    assert rows["onnxruntime-genai:int8"]["status"] == "skipped"
    assert "no exporter for GPT2LMHeadModel" in rows["onnxruntime-genai:int8"]["reason"]
    assert changes["chosen"] == "torch:bf16"


def test_card_lists_every_candidate_with_its_numbers() -> None:
    from hfcompress.card.tables import _candidates_tables

    steps = [{"technique": "quantization", "changes": {"chosen": "onnxruntime-genai:int8", "candidates": [
        {"candidate": "onnxruntime-genai:int4", "status": "rejected", "perplexity_increase": 0.376,
         "greedy_agreement": 0.09, "reason": "perplexity 195.67 is +37.60% vs the input's 142.23"},
        {"candidate": "onnxruntime-genai:int8", "status": "passed", "perplexity_increase": 0.0017,
         "greedy_agreement": 0.49, "decode_tokens_per_s": 87.8}]}}]
    text = "\n".join(_candidates_tables(steps))
    assert "chosen: **onnxruntime-genai:int8**" in text
    assert "| candidate | status | decode tokens/s | perplexity change | greedy agreement | reason |" in text
    assert "| onnxruntime-genai:int4 | rejected | — | 0.376 | 0.09 | perplexity 195.67 is +37.60%" in text
    assert "| onnxruntime-genai:int8 | passed | 87.8 | 0.0017 | 0.49 |  |" in text
    assert _candidates_tables([{"technique": "distillation", "changes": {"steps": 10}}]) == []
