"""Unit tests of the quantization technique on tiny random models: each backend, reload, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hfcompress.artifact import load_state, save_state
from hfcompress.errors import BadInputError
from hfcompress.plugin import ModelState, ModelTarget, StepContext

TEXTS = [
    "a great film with a moving story", "dull, slow and far too long", "the actors seemed bored",
    "one of the best movies of the year", "I laughed, I cried, I loved it", "a complete waste of time",
    "beautifully shot but empty inside", "the ending surprised everyone in the room", "not bad at all",
    "the soundtrack alone is worth the ticket", "predictable plot, wooden dialogue", "charming and warm",
    "it never finds its rhythm", "an instant classic", "messy but fun", "I want my two hours back",
]


def _technique():  # type: ignore[no-untyped-def]
    from hfcompress_plugins.quantization import Quantization

    return Quantization()


def _config(**kwargs):  # type: ignore[no-untyped-def]
    from hfcompress_plugins.quantization import QuantizationConfig

    return QuantizationConfig.model_validate(kwargs)


def _ctx(tmp_path: Path, with_data: bool = True) -> StepContext:
    import datasets
    from accelerate import Accelerator

    data = datasets.Dataset.from_dict({"text": TEXTS}) if with_data else None
    return StepContext(teacher=lambda: None, train_data=data, accelerator=Accelerator(cpu=True), seed=0,
                       work_dir=tmp_path / "work")


def _load(path: Path, task: str) -> ModelState:
    from hfcompress.models import ModelSource, load_model

    return load_model(ModelSource(str(path), str(path)), task)


def _outputs(state: ModelState, texts: list[str] = TEXTS[:6]):  # type: ignore[no-untyped-def]
    from hfcompress.model_io import forward, reduce_output, tokenize

    batch = tokenize(state, texts, 16)
    return reduce_output(state, forward(state, batch), batch["attention_mask"])


def _cos(a, b) -> float:  # type: ignore[no-untyped-def]
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


# -- config validation and check: bad input fails before any work ------------------------------
@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"backend": "onnxruntime", "dtype": "int4"}, "dtype 'int4' is not supported by backend 'onnxruntime'; allowed: int8"),
        ({"backend": "torch", "dtype": "int8"}, "allowed: bf16, fp16"),
        ({"backend": "quanto", "dtype": "int3"}, "'int8', 'int4', 'fp8', 'bf16', 'fp16' or 'fp32'"),
        ({"backend": "auto", "candidates": ["onnxruntime:int4"]}, "allowed: torch:bf16"),
        ({"backend": "torch", "mode": "static"}, "onnxruntime options"),
        ({"backend": "onnxruntime", "activations": "int8"}, "activations is a quanto option"),
        ({"backend": "onnxruntime", "op_types": ["Foo"]}, "allowed: MatMul"),
        ({"backend": "torch", "exclude": ["encoder.*"]}, "exclude is a quanto/onnxruntime option"),
        ({"backend": "onnxruntime", "calibration_method": "magic"}, "'minmax', 'entropy' or 'percentile'"),
        ({"backend": "quanto", "weights": "int8"}, "unknown field 'weights'"),
    ],
)
def test_bad_config_is_a_bad_input_error_listing_allowed_values(step: dict, expected: str) -> None:
    from hfcompress.recipe import parse_step

    with pytest.raises(BadInputError) as err:
        parse_step(0, {"quantization": step})
    assert expected in str(err.value)
    assert "steps[0] (quantization)" in str(err.value)


def test_modes_that_need_data_are_rejected_by_check_without_data(tiny_bert_dir: Path) -> None:
    from transformers import AutoConfig

    target = ModelTarget(config=AutoConfig.from_pretrained(tiny_bert_dir), task="feature-extraction", has_data=False)
    technique = _technique()
    for cfg, words in [
        (_config(backend="onnxruntime", mode="static"), "or use mode: dynamic"),
        (_config(backend="auto"), "backend auto measures"),
        (_config(backend="quanto", activations="int8"), "set activations: none"),
    ]:
        assert technique.data_requirement(cfg) == "text"
        with pytest.raises(BadInputError, match=words):
            technique.check(cfg, target)
    for cfg in (_config(backend="onnxruntime"), _config(backend="torch"), _config(backend="quanto", dtype="int4")):
        assert technique.data_requirement(cfg) == "none"
        technique.check(cfg, target)  # accepted
    with pytest.raises(BadInputError, match="needs a PyTorch model"):
        technique.check(_config(backend="torch"), ModelTarget(config=target.config, task=target.task, format="onnx"))


def test_output_format_declares_the_furthest_format() -> None:
    technique = _technique()
    assert technique.output_format(_config(backend="torch")) == "pytorch"
    assert technique.output_format(_config(backend="quanto")) == "quanto"
    assert technique.output_format(_config(backend="onnxruntime")) == "onnx"
    # the causal-LM defaults (onnxruntime-genai) are among the candidates auto may pick
    assert technique.output_format(_config(backend="auto")) == "onnx-genai"
    assert technique.output_format(_config(backend="auto", candidates=["torch:bf16", "quanto:int8"])) == "quanto"


# -- torch ------------------------------------------------------------------------------------
def test_torch_bf16_casts_and_reloads_with_plain_transformers(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel

    state = _load(tiny_bert_dir, "feature-extraction")
    before = _outputs(state)
    result = _technique().apply(state, _config(backend="torch", dtype="bf16"), _ctx(tmp_path))
    new = result.state
    assert new.format == "pytorch" and new.loader is None
    assert {p.dtype for p in new.model.parameters()} == {torch.bfloat16}
    assert result.changes["fidelity_to_input"]["cosine_mean"] > 0.99
    out = tmp_path / "out"
    save_state(new, out)
    reloaded = AutoModel.from_pretrained(out)  # no hfcompress needed
    assert reloaded.dtype == torch.bfloat16
    assert torch.equal(_outputs(load_state(out)), _outputs(new))
    assert _cos(_outputs(new), before) > 0.99


# -- quanto -----------------------------------------------------------------------------------
def test_quanto_int8_saves_and_reloads_exactly(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch
    from optimum.quanto.nn import QLinear

    state = _load(tiny_bert_dir, "feature-extraction")
    result = _technique().apply(state, _config(backend="quanto", dtype="int8"), _ctx(tmp_path, with_data=False))
    new = result.state
    n_linear = 2 * (4 + 2) + 1  # per layer q,k,v,o + 2 FFN; plus the pooler
    assert result.changes["quantized_modules"] == n_linear
    assert sum(isinstance(m, QLinear) for m in new.model.modules()) == n_linear
    assert new.format == "quanto" and new.loader == "quantization"
    out = tmp_path / "out"
    save_state(new, out)
    assert (out / "quanto_qmap.json").exists() and not (out / "README.md").exists()
    marker = json.loads((out / "config.json").read_text())["hfcompress"]
    assert marker["format"] == "quanto" and marker["info"]["quantization"]["weights"] == "int8"
    reloaded = load_state(out)
    assert sum(isinstance(m, QLinear) for m in reloaded.model.modules()) == n_linear
    assert torch.equal(_outputs(reloaded), _outputs(new))


@pytest.mark.slow  # ~40 s here, the slowest unit test; quanto int4 is no default candidate
def test_quanto_int4_on_llama_excludes_lm_head(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from optimum.quanto.nn import QLinear

    state = _load(tiny_llama_dir, "text-generation")
    result = _technique().apply(state, _config(backend="quanto", dtype="int4"), _ctx(tmp_path))
    model = result.state.model
    assert not isinstance(model.lm_head, QLinear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, QLinear)
    assert result.changes["quantized_modules"] == 2 * 7  # q,k,v,o,gate,up,down per layer
    assert "top1_agreement" in result.changes["fidelity_to_input"]
    out = tmp_path / "out"
    save_state(result.state, out)
    reloaded = load_state(out)
    assert torch.equal(_outputs(reloaded), _outputs(result.state))


def test_quanto_activations_are_calibrated_on_data(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    cfg = _config(backend="quanto", dtype="int8", activations="int8", calibration_samples=8, batch_size=4)
    result = _technique().apply(state, cfg, _ctx(tmp_path))
    assert result.changes["calibration_texts"] == 8
    # A calibrated input scale differs from quanto's default of 1.
    scales = [float(m.input_scale) for m in result.state.model.modules() if hasattr(m, "input_scale")]
    assert scales and any(abs(s - 1.0) > 1e-3 for s in scales)
    assert result.changes["fidelity_to_input"]["cosine_mean"] > 0.9


@pytest.mark.slow  # a fresh interpreter imports torch+transformers (~20 s); MiniLM version in integration
def test_quanto_reload_in_a_fresh_process_gives_equal_outputs(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    state = _load(tiny_bert_dir, "feature-extraction")
    new = _technique().apply(state, _config(backend="quanto"), _ctx(tmp_path, with_data=False)).state
    out = tmp_path / "out"
    save_state(new, out)
    code = (
        "import sys, torch, hfcompress\n"
        "from hfcompress.artifact import load_state\n"
        "from hfcompress.model_io import forward, reduce_output, tokenize\n"
        f"texts = {TEXTS[:6]!r}\n"
        "state = load_state(sys.argv[1])\n"
        "batch = tokenize(state, texts, 16)\n"
        "torch.save(reduce_output(state, forward(state, batch), batch['attention_mask']), sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "o.pt")], check=True)
    assert torch.equal(torch.load(tmp_path / "o.pt"), _outputs(new))


# -- onnxruntime ------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_llama_dir"])
def test_onnx_export_matches_pytorch_with_padding(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from hfcompress_plugins.quantization import onnx_runtime

    task = "feature-extraction" if "bert" in fixture else "text-generation"
    state = _load(request.getfixturevalue(fixture), task)
    names = onnx_runtime.export(state.model, state.tokenizer, task, tmp_path / "m.onnx")
    assert names == (["input_ids", "attention_mask", "token_type_ids"] if "bert" in fixture
                     else ["input_ids", "attention_mask"])
    assert state.model.training is False
    onnx_state = ModelState(onnx_runtime.OnnxModel(tmp_path / "m.onnx", state.model.config, task),
                            state.tokenizer, task, format="onnx")
    texts = ["short", "a much longer sentence than the first one, with more tokens in it"]
    ref, got = _outputs(state, texts), _outputs(onnx_state, texts)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-4


def test_onnxruntime_dynamic_int8_folder_runs_in_plain_onnxruntime(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    state = _load(tiny_bert_dir, "feature-extraction")
    before = _outputs(state)
    result = _technique().apply(state, _config(backend="onnxruntime"), _ctx(tmp_path))
    new = result.state
    assert new.format == "onnx" and result.changes["mode"] == "dynamic" and result.changes["per_channel"]
    assert result.changes["graph_optimization"] in ("none", "bert-fusion", "unfused-layernorm")
    assert set(result.changes["graph_optimization_timings_ms"]) == {"none", "bert-fusion", "unfused-layernorm"}
    assert new.model.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert _cos(_outputs(new), before) > 0.95
    out = tmp_path / "out"
    save_state(new, out)
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    # Plain onnxruntime on the tokenizer's outputs, no hfcompress involved.
    session = ort.InferenceSession(str(out / "model.onnx"))
    enc = AutoTokenizer.from_pretrained(out)(TEXTS[:3], padding=True, return_tensors="np")
    hidden = session.run(None, dict(enc))[0]
    assert hidden.shape == (3, enc["input_ids"].shape[1], 32)
    reloaded = load_state(out)
    assert reloaded.format == "onnx"
    reloaded.model.set_num_threads(1)
    assert reloaded.model.session.get_session_options().intra_op_num_threads == 1
    ours = reloaded.model(**{k: v for k, v in enc.items()}).last_hidden_state.numpy()
    # A bare session runs the very graph hfcompress.load runs: no load-time option changes it.
    assert np.array_equal(ours, hidden)
    assert reloaded.model.num_parameters > 30522 * 32  # the embedding is in the graph


def test_unfused_layernorm_lives_in_the_graph_so_a_bare_session_runs_it(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from hfcompress.card import _snippet

    state = _load(tiny_bert_dir, "feature-extraction")
    result = _technique().apply(state, _config(backend="onnxruntime", graph_optimization="unfused-layernorm"),
                                _ctx(tmp_path))
    assert result.changes["graph_optimization"] == "unfused-layernorm"
    assert result.changes["unfused_layernorm_residuals"] >= 2  # tiny BERT: 2 layers x (attention, FFN)
    out = tmp_path / "out"
    save_state(result.state, out)
    # What a bare session runs after its own load-time optimizations: no SkipLayerNormalization.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as-loaded.onnx")
    bare = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" not in {n.op_type for n in onnx.load(str(tmp_path / "as-loaded.onnx")).graph.node}
    # ... and it computes exactly what the fusion switched off by a session option computes.
    feed = {i.name: np.ones((2, 7), dtype=np.int64) for i in bare.get_inputs()}
    plain = tmp_path / "plain.onnx"
    graph = onnx.load(str(out / "model.onnx"))
    for node in graph.graph.node:
        node.op_type = "Add" if node.op_type == "Sum" else node.op_type
    onnx.save(graph, str(plain))
    switched_off = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"],
                                        disabled_optimizers=["SkipLayerNormFusion"])
    assert np.array_equal(bare.run(None, feed)[0], switched_off.run(None, feed)[0])
    card = "\n".join(_snippet(out, "feature-extraction", None, "out"))
    assert "ort.InferenceSession(\"./out/model.onnx\")" in card and "disabled_optimizers" not in card


def test_onnxruntime_static_int8_on_llama_logits(tiny_llama_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_llama_dir, "text-generation")
    cfg = _config(backend="onnxruntime", mode="static", calibration_method="percentile", op_types=["MatMul"],
                  calibration_samples=16)
    result = _technique().apply(state, cfg, _ctx(tmp_path))
    assert result.changes["kv_cache"] is False and result.changes["calibration_texts"] == 16
    assert result.changes["graph_optimization"] == "none"  # no BERT fusion for llama
    assert result.state.model.input_names == ["input_ids", "attention_mask"]
    out = _outputs(result.state)
    assert out.shape == (6, state.model.config.vocab_size)
    assert result.changes["fidelity_to_input"]["cosine_mean"] > 0.9
    save_state(result.state, tmp_path / "out")
    import onnx

    graph = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 0


# -- auto -------------------------------------------------------------------------------------
def test_auto_pick_prefers_the_smallest_within_the_tie_margin() -> None:
    from hfcompress_plugins.quantization.auto import pick

    measured = {"torch:bf16": {"size_bytes": 45}, "onnxruntime:int8-dynamic": {"size_bytes": 23},
                "quanto:int8": {"size_bytes": 58}}
    timings = {"torch:bf16": {"median": 100.0}, "onnxruntime:int8-dynamic": {"median": 108.0},
               "quanto:int8": {"median": 150.0}}
    assert pick(measured, measured, timings, 0.1) == "onnxruntime:int8-dynamic"  # 8% slower, half the size
    assert pick(measured, measured, timings, 0.0) == "torch:bf16"
    timings["onnxruntime:int8-dynamic"]["median"] = 125.0
    assert pick(measured, measured, timings, 0.1) == "torch:bf16"  # 25% slower is not a tie


def test_auto_measures_candidates_and_keeps_the_fastest_passing(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    cfg = _config(backend="auto", candidates=["torch:bf16", "onnxruntime:int8-dynamic", "quanto:int4"],
                  min_cosine=0.999, timing_batches=2, calibration_samples=16)
    result = _technique().apply(state, cfg, _ctx(tmp_path))
    rows = {r["candidate"]: r for r in result.changes["candidates"]}
    assert set(rows) == set(cfg.candidates)
    for row in rows.values():
        assert row["status"] in ("passed", "rejected")
        assert 0 < row["fidelity"]["cosine_mean"] <= 1.0 + 1e-6
        assert (row["status"] == "passed") == (row["fidelity"]["cosine_mean"] >= 0.999)
        # Only candidates that pass the gate are timed (round-robin with the input model).
        assert ("latency_ms" in row) == (row["status"] == "passed")
    passed = [r for r in rows.values() if r["status"] == "passed"]
    for row in passed:
        assert 0 < row["latency_ms"]["min"] <= row["latency_ms"]["median"]
    if passed:
        fastest = min(r["latency_ms"]["median"] for r in passed)
        tied = [r for r in passed if r["latency_ms"]["median"] <= fastest * (1 + cfg.tie_margin)]
        expected = min(tied, key=lambda r: (r["size_bytes"], r["latency_ms"]["median"]))["candidate"]
        assert result.changes["chosen"] == expected
        assert result.state.info["quantization"]["auto"]["chosen"] == expected
    assert result.changes["threads"] == 1 and result.changes["input_latency_ms"]["min"] > 0
    json.dumps(result.changes)  # JSON-able for results.json


def test_auto_with_no_passing_candidate_fails_unless_told_to_keep_the_input(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from hfcompress.errors import GateFailedError

    state = _load(tiny_bert_dir, "feature-extraction")
    strict = dict(backend="auto", candidates=["torch:bf16", "quanto:int4"], min_cosine=1.0, timing_batches=1,
                  calibration_samples=8)
    with pytest.raises(GateFailedError, match="no candidate passed, so nothing was quantized") as err:
        _technique().apply(state, _config(**strict), _ctx(tmp_path))
    assert err.value.exit_code == 3
    assert "torch:bf16: rejected (cosine" in str(err.value) and "quanto:int4: rejected" in str(err.value)
    kept = _technique().apply(state, _config(**strict, if_none_pass="keep-input"), _ctx(tmp_path / "again"))
    assert kept.state is state and kept.changes["chosen"] is None
    assert {r["status"] for r in kept.changes["candidates"]} == {"rejected"}
    with pytest.raises(ValueError, match="if_none_pass: only used with backend auto"):
        _config(backend="torch", if_none_pass="keep-input")


def test_quanto_refuses_gpt2_conv1d_models_and_auto_skips_it() -> None:
    from types import SimpleNamespace

    from hfcompress_plugins.quantization.auto import skip_reason
    from transformers import GPT2Config

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"])
    target = ModelTarget(config=config, task="text-generation", has_data=True)
    with pytest.raises(BadInputError, match="Conv1D layers, which optimum-quanto does not quantize"):
        _technique().check(_config(backend="quanto"), target)
    _technique().check(_config(backend="onnxruntime"), target)  # the other backends accept it
    state = SimpleNamespace(config=config)
    assert "Conv1D" in (skip_reason("quanto:int8", SimpleNamespace(type="cpu"), state) or "")
    assert skip_reason("torch:bf16", SimpleNamespace(type="cpu"), state) is None


# -- after head-pruning (custom modeling code for pruned BERT) --------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "quanto", "torch"])
@pytest.mark.parametrize("heads_to_remove", [[1, 2], [1, 1]], ids=["per-layer-heads", "uniform-heads"])
def test_every_backend_works_after_head_pruning(backend: str, heads_to_remove: list[int], tiny_bert_dir: Path,
                                                tmp_path: Path) -> None:
    import torch

    head_pruning = pytest.importorskip("hfcompress_plugins.head_pruning")
    state = _load(tiny_bert_dir, "feature-extraction")
    pruned = head_pruning.HeadPruning().apply(
        state, head_pruning.HeadPruningConfig(heads_to_remove=heads_to_remove, importance="magnitude"),
        _ctx(tmp_path)).state
    assert pruned.model.config.model_type == "hfcompress-pruned-bert"
    before = _outputs(pruned)
    result = _technique().apply(pruned, _config(backend=backend), _ctx(tmp_path))
    assert result.state.info["quantization"]["backend"] == backend
    assert "head_pruning" in result.state.info  # what pruning recorded survives quantization
    assert _cos(_outputs(result.state), before) > 0.95
    out = tmp_path / "out"
    save_state(result.state, out)
    reloaded = load_state(out)
    assert reloaded.format == result.state.format
    assert torch.allclose(_outputs(reloaded), _outputs(result.state), atol=1e-5)
    if backend == "onnxruntime":
        fused = result.changes["fused_operators"]
        # Uniformly pruned heads keep the attention fusion (head count/size from pruned_layout);
        # per-layer counts cannot be given to ORT's fusion, the other fusions still apply.
        assert fused.get("Attention") == (2 if heads_to_remove == [1, 1] else None)
        assert fused["SkipLayerNormalization"] == 4
        # Plain onnxruntime + tokenizer run the pruned model's folder (no modeling code needed).
        import onnxruntime as ort
        from transformers import AutoTokenizer

        assert "auto_map" not in json.loads((out / "config.json").read_text())
        enc = AutoTokenizer.from_pretrained(out)(TEXTS[:2], padding=True, return_tensors="np")
        assert ort.InferenceSession(str(out / "model.onnx")).run(None, dict(enc))[0].shape[:2] == enc["input_ids"].shape


def test_onnxruntime_on_a_sequence_classifier_returns_logits(tmp_path: Path) -> None:
    from hfcompress.testing.models import make_tiny_bert

    folder = make_tiny_bert(tmp_path / "cls", task="text-classification", num_labels=3)
    state = _load(folder, "text-classification")
    before = _outputs(state)
    result = _technique().apply(state, _config(backend="onnxruntime", graph_optimization="none"), _ctx(tmp_path))
    out = _outputs(result.state)
    assert out.shape == (6, 3)
    assert "top1_agreement" in result.changes["fidelity_to_input"]
    assert _cos(out, before) > 0.95
    save_state(result.state, tmp_path / "out")
    assert load_state(tmp_path / "out").model(**state.tokenizer(TEXTS[:2], return_tensors="pt")).logits.shape == (1 * 2, 3)


def test_onnxruntime_exclude_keeps_matching_layers_in_float(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import onnx
    from hfcompress_plugins.quantization.onnx_runtime import node_module

    assert node_module("/inner/model/layers.0/self_attn/q_proj/MatMul") == "model.layers.0.self_attn.q_proj"
    ops = {}
    for exclude in (["lm_head"], [], ["model.layers.1.*", "lm_head"]):
        state = _load(tiny_llama_dir, "text-generation")
        result = _technique().apply(state, _config(backend="onnxruntime", exclude=exclude), _ctx(tmp_path / str(exclude)))
        save_state(result.state, tmp_path / "out")
        graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
        ops[str(exclude)] = {node_module(n.name): n.op_type for n in graph.node if n.op_type.startswith("MatMul")}
    assert ops["['lm_head']"]["lm_head"] == "MatMul"  # stays float
    assert ops["[]"]["lm_head"] == "MatMulInteger"
    assert ops["['lm_head']"]["model.layers.1.mlp.down_proj"] == "MatMulInteger"
    assert ops["['model.layers.1.*', 'lm_head']"]["model.layers.1.mlp.down_proj"] == "MatMul"
    assert ops["['model.layers.1.*', 'lm_head']"]["model.layers.0.mlp.down_proj"] == "MatMulInteger"
