"""The benchmark harness's own arithmetic and bookkeeping, on tiny random models (fast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

# benchmarks/ is a top-level folder of the repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.flops import attention_width, count_flops, gemm_peak, linear_shapes, linear_shapes_onnx  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Built,
    VariantSpec,
    add_fractions,
    best_peaks,
    build_and_score,
    run_variant,
    time_round_robin,
)
from benchmarks.report import headline, markdown_table, validate_results, write_results  # noqa: E402
from benchmarks.timing import Timing, make_batches, time_call  # noqa: E402


def _flop_counter(model: Any, inputs: dict[str, Any]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return int(counter.get_total_flops())


def _tiny_bert(path: Path, task: str = "feature-extraction") -> Any:
    from transformers import AutoModel, AutoModelForSequenceClassification

    from hfcompress.testing.models import make_tiny_bert

    make_tiny_bert(path, task=task)
    cls = AutoModel if task == "feature-extraction" else AutoModelForSequenceClassification
    return cls.from_pretrained(path, attn_implementation="eager").eval()


def _inputs(batch: int, seq: int) -> dict[str, Any]:
    import torch

    return {"input_ids": torch.randint(5, 1000, (batch, seq)), "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def test_bert_flops_match_hand_count_and_torch_flop_counter(tmp_path: Path) -> None:
    model = _tiny_bert(tmp_path / "bert")
    b, s, h, ffn, layers = 3, 16, 32, 64, 2
    per_layer = 2 * b * s * h * h * 4 + 2 * b * s * h * ffn * 2 + 2 * (2 * b * s * s * h)
    pooler = 2 * b * h * h  # the pooler sees one vector per sample
    expected = layers * per_layer + pooler
    shapes = linear_shapes(model)
    assert count_flops(shapes, b, s) == expected
    assert _flop_counter(model, _inputs(b, s)) == expected
    assert attention_width(shapes) == {0: 32, 1: 32}


def test_flops_honour_pruned_heads_and_neurons(tmp_path: Path) -> None:
    """Shrink layer 0 to 2 of 4 heads and 40 of 64 FFN neurons: the count follows the real shapes."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    model = _tiny_bert(tmp_path / "bert")
    layer = model.encoder.layer[0]
    keep = torch.arange(16)  # heads 0 and 1 (head size 8)
    att = layer.attention
    att.self.query = prune_linear_layer(att.self.query, keep)
    att.self.key = prune_linear_layer(att.self.key, keep)
    att.self.value = prune_linear_layer(att.self.value, keep)
    att.output.dense = prune_linear_layer(att.output.dense, keep, dim=1)
    att.self.num_attention_heads, att.self.all_head_size = 2, 16
    neurons = torch.arange(40)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, neurons)
    layer.output.dense = prune_linear_layer(layer.output.dense, neurons, dim=1)

    b, s, h = 2, 8, 32
    layer0 = 2 * b * s * h * 16 * 4 + 2 * b * s * h * 40 * 2 + 2 * (2 * b * s * s * 16)
    layer1 = 2 * b * s * h * h * 4 + 2 * b * s * h * 64 * 2 + 2 * (2 * b * s * s * h)
    expected = layer0 + layer1 + 2 * b * h * h
    assert count_flops(linear_shapes(model), b, s) == expected
    assert _flop_counter(model, _inputs(b, s)) == expected


def test_llama_flops_with_grouped_query_attention(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from hfcompress.testing.models import make_tiny_llama

    make_tiny_llama(tmp_path / "llama")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", attn_implementation="eager").eval()
    b, s, h, q, kv, ffn, vocab = 2, 8, 32, 32, 16, 64, model.config.vocab_size
    per_layer = 2 * b * s * h * (q + kv + kv) + 2 * b * s * q * h + 3 * 2 * b * s * h * ffn + 2 * (2 * b * s * s * q)
    expected = 2 * per_layer + 2 * b * s * h * vocab
    assert count_flops(linear_shapes(model), b, s) == expected
    assert _flop_counter(model, _inputs(b, s)) == expected
    assert count_flops(linear_shapes(model), b, s, lm_head=False) == expected - 2 * b * s * h * vocab


def test_onnx_graph_gives_the_same_count_before_and_after_ort_int8(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic
    from transformers import AutoTokenizer

    from benchmarks.common import export_onnx

    model = _tiny_bert(tmp_path / "bert")
    onnx_path = export_onnx(model, AutoTokenizer.from_pretrained(tmp_path / "bert"), tmp_path / "m.onnx")
    # The graph returns last_hidden_state only, so the exporter drops the (unused) pooler.
    shapes = {k: v for k, v in linear_shapes(model).items() if not k.startswith("pooler")}
    expected = count_flops(shapes, 8, 128)
    assert set(linear_shapes_onnx(onnx_path)) == {f"inner.{k}" for k in shapes}
    assert count_flops(linear_shapes_onnx(onnx_path), 8, 128) == expected
    quantize_dynamic(str(onnx_path), str(tmp_path / "q.onnx"))
    assert count_flops(linear_shapes_onnx(tmp_path / "q.onnx"), 8, 128) == expected


def test_count_flops_rejects_a_model_without_linear_layers() -> None:
    with pytest.raises(ValueError, match="no linear layers"):
        count_flops({}, 1, 1)


def test_gemm_peak_reports_each_dtype() -> None:
    peak = gemm_peak(1, size=128, warmup=1, repeats=2)
    assert set(peak) >= {"fp32", "bf16"}
    assert all(v > 0.1 for v in peak.values())


def test_time_call_reports_the_median_of_repeats() -> None:
    calls = []
    t = time_call(lambda: calls.append(1), Timing(warmup=2, repeats=5))
    assert len(calls) == 7
    assert 0 <= t["p10"] <= t["median"] <= t["p90"]


class _TinySuite:
    name = "encoder"

    def __init__(self, batches: dict[str, dict[str, Any]]) -> None:
        self.batches = batches

    def quality(self, spec: VariantSpec, built: Built) -> dict[str, float]:
        return {"cosine_to_base": 1.0}

    def extra_timings(self, spec: VariantSpec, built: Built, threads: int) -> dict[str, float]:
        return {}


def _results(variants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "suite": "encoder", "date": "2026-01-01", "quick": True,
        "environment": {"cpu": "test cpu", "cpu_count": 2, "amx": [], "threads": [1], "headline_threads": 1,
                        "packages": {"torch": "x", "onnxruntime": "y"}},
        "shapes": {"b8xs128": [8, 128], "b1xs32": [1, 32]}, "timing": {"warmup": 1, "repeats": 2, "statistic": "median"},
        "gemm_peak": {"1": {"fp32": 100.0, "bf16": 200.0}}, "variants": variants,
    }


def test_harness_records_a_failing_variant_and_measures_the_others(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = _tiny_bert(tmp_path / "bert")
    batches = make_batches(AutoTokenizer.from_pretrained(tmp_path / "bert"), ["a sentence", "another one"])
    assert batches["b8xs128"]["input_ids"].shape == (8, 128)
    assert batches["b1xs32"]["input_ids"].shape == (1, 32)
    suite = _TinySuite(batches)

    def broken() -> Built:
        raise RuntimeError("tool exploded")

    def working() -> Built:
        return Built(forward=lambda b: model(**b).last_hidden_state, size_bytes=1234, num_parameters=99,
                     shapes=linear_shapes(model), compute_dtype="fp32")

    bad = run_variant(suite, VariantSpec("bad", "x", "fails", broken), [1], Timing(0, 1))
    good = run_variant(suite, VariantSpec("good", "torch", "works", working), [1], Timing(0, 2))
    assert bad["error"] == "build: RuntimeError: tool exploded"
    assert good["error"] is None
    assert set(good["latency_ms"]["1"]) == {"b8xs128", "b1xs32"}
    assert good["flops_per_batch"]["b8xs128"] == count_flops(linear_shapes(model), 8, 128)
    expected = good["flops_per_batch"]["b8xs128"] / (good["latency_ms"]["1"]["b8xs128"] / 1000) / 1e9
    assert good["achieved_gflops"]["1"]["b8xs128"] == pytest.approx(expected, rel=1e-2)
    assert good["gemm_peak_at_timing"]["1"]["fp32"] > 0
    peaks = best_peaks({"1": {"fp32": 100.0, "bf16": 50.0}}, {"1": {"fp32": 80.0, "bf16": 90.0}})
    assert peaks == {"1": {"fp32": 100.0, "bf16": 90.0}}
    add_fractions(good, peaks)
    assert good["fraction_of_peak"]["1"]["b8xs128"] == pytest.approx(expected / 100.0, rel=1e-2)

    paths = write_results(_results([good, bad]), tmp_path / "out")
    assert {p.name for p in paths.values()} == {"2026-01-01-encoder-quick.json", "2026-01-01-encoder-quick.md",
                                                "2026-01-01-encoder-quick.png"}
    loaded = json.loads(paths["json"].read_text())
    assert [v["name"] for v in loaded["variants"]] == ["good", "bad"]
    table = paths["md"].read_text()
    assert "| good | torch |" in table and "failed: build: RuntimeError: tool exploded" in table
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_schema_is_enforced() -> None:
    ok = {"name": "v", "tool": "t", "size_bytes": 10, "num_parameters": 1, "flops_per_batch": {}, "metrics": {},
          "error": None, "latency_ms": {"1": {"b8xs128": 1.0, "b1xs32": 1.0}}}
    validate_results(_results([ok]))
    with pytest.raises(ValueError, match="missing"):
        validate_results(_results([{k: v for k, v in ok.items() if k != "size_bytes"}]))
    with pytest.raises(ValueError, match="lacks a shape"):
        validate_results(_results([dict(ok, latency_ms={"1": {"b8xs128": 1.0}})]))
    with pytest.raises(ValueError, match="gemm_peak"):
        validate_results({k: v for k, v in _results([ok]).items() if k != "gemm_peak"})


def test_headline_compares_the_default_recipe_with_fp32_and_the_fastest_single_tool() -> None:
    def variant(name: str, tool: str, ms: float, size: int, acc: float) -> dict[str, Any]:
        return {"name": name, "tool": tool, "group": "hfcompress" if tool == "hfcompress" else "baseline",
                "size_bytes": size, "num_parameters": 1, "flops_per_batch": {}, "error": None,
                "metrics": {"probe_accuracy": acc, "cosine_to_base": 1.0},
                "latency_ms": {"1": {"b8xs128": ms, "b1xs32": ms / 10}}}

    results = _results([variant("PyTorch fp32", "torch", 200.0, 100, 0.80),
                        variant("PyTorch bf16", "torch", 50.0, 50, 0.80),
                        variant("ONNX Runtime dynamic int8", "onnxruntime", 80.0, 25, 0.78),
                        variant("hfcompress default recipe", "hfcompress", 40.0, 20, 0.79)])
    h = headline(results)
    assert h is not None
    assert h["shapes"]["b8xs128"] == {"latency_ms": 40.0, "speedup_vs_fp32": 5.0, "best_baseline": "PyTorch bf16",
                                      "speedup_vs_best_baseline": 1.25}
    assert h["size_ratio_vs_fp32"] == 0.2
    assert h["smallest_baseline"] == "ONNX Runtime dynamic int8" and h["size_ratio_vs_smallest_baseline"] == 0.8
    assert h["probe_accuracy_change"] == pytest.approx(-0.01)
    assert "5.00x faster than PyTorch fp32" in markdown_table(results)


def test_round_robin_times_every_variant_in_each_round_and_isolates_failures(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = _tiny_bert(tmp_path / "bert")
    suite = _TinySuite(make_batches(AutoTokenizer.from_pretrained(tmp_path / "bert"), ["a sentence"]))
    order: list[str] = []

    def make(name: str, fail_after: int | None = None) -> Built:
        calls = {"n": 0}

        def forward(batch: dict[str, Any]) -> Any:
            calls["n"] += 1
            order.append(name)
            if fail_after is not None and calls["n"] > fail_after:
                raise RuntimeError("kernel crashed")
            return model(**batch).last_hidden_state

        return Built(forward=forward, size_bytes=10, num_parameters=1, shapes=linear_shapes(model), compute_dtype="fp32")

    entries = []
    for name, fail_after in (("a", None), ("b", 3), ("c", None)):
        spec = VariantSpec(name, "torch", name, lambda n=name, f=fail_after: make(n, f))
        record, built = build_and_score(suite, spec, [1])
        assert record["metrics"] == {"cosine_to_base": 1.0} and built is not None
        entries.append((record, spec, built))
    order.clear()
    time_round_robin(suite, entries, [1], Timing(warmup=1, repeats=3))
    # Interleaved: each round runs a, b, c once per shape (2 shapes) before the next round starts.
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]
    records = {r["name"]: r for r, _, _ in entries}
    assert records["b"]["error"] == "timing with 1 thread(s): RuntimeError: kernel crashed"
    for name in ("a", "c"):
        assert records[name]["error"] is None
        assert set(records[name]["latency_ms"]["1"]) == {"b8xs128", "b1xs32"}
        assert records[name]["gemm_peak_at_timing"]["1"]["fp32"] > 0


def test_profile_of_an_openvino_int8_folder_times_its_fully_connected_layers(tmp_path: Path) -> None:
    """`python -m benchmarks profile` on an OpenVINO int8 output: per-node counters, FC work and time."""
    pytest.importorskip("nncf")
    from test_quantization import _config, _ctx, _load, _technique

    from benchmarks.profiling import markdown, profile_folder
    from hfcompress.artifact import save_state
    from hfcompress.testing.models import make_tiny_bert

    state = _load(make_tiny_bert(tmp_path / "tiny-bert"), "feature-extraction")
    result = _technique().apply(state, _config(backend="openvino", dtype="int8"), _ctx(tmp_path))
    out = tmp_path / "out"
    save_state(result.state, out)
    report = profile_folder(out, threads=1, shape="b1xs32", runs=2)
    assert report["profiler"].startswith("openvino")
    ops = {r["op"].split(" [")[0] for r in report["top_ops"]}
    assert "FullyConnected" in ops or "FullyConnectedQuantizedLegacy" in ops
    # tiny BERT, 32 tokens: 2 layers x (4 attention projections 32x32 + FFN 32x64 and 64x32), 2 ops per MAC
    assert report["fc_flops_per_batch"] == 2 * 2 * 32 * (4 * 32 * 32 + 2 * 32 * 64)
    assert report["fc_ms"] > 0 and report["fc_gflops"] > 0
    assert 0 < report["matmul_ms"] <= report["op_time_ms"]
    assert "Fully connected layers alone" in markdown(report)
