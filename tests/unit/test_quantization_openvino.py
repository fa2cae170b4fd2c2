"""The quantization technique's ``openvino`` backend on a tiny random BERT: NNCF int8 and the plain
IR, the folder layout, a bare ``openvino`` session, reload, sentence-transformers layout, auto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_quantization import TEXTS, _config, _cos, _ctx, _load, _outputs, _technique  # noqa: E402

from hfcompress.artifact import load_state, save_state
from hfcompress.errors import BadInputError
from hfcompress.plugin import ModelTarget

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _bare_openvino(xml: Path, folder: Path):  # type: ignore[no-untyped-def]
    """The IR through ``openvino`` alone, as the card's snippet runs it (no hfcompress)."""
    import openvino as ov
    from transformers import AutoTokenizer

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": 1})
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS[:3], padding=True, return_tensors="np")
    names = {i.any_name for i in compiled.inputs}
    return compiled({k: v for k, v in enc.items() if k in names})[0], enc


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_openvino_folder_runs_in_bare_openvino_and_reloads(dtype: str, tiny_bert_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    state = _load(tiny_bert_dir, "feature-extraction")
    before = _outputs(state)
    result = _technique().apply(state, _config(backend="openvino", dtype=dtype), _ctx(tmp_path))
    new = result.state
    assert new.format == "openvino" and result.changes["dtype"] == dtype
    assert new.model.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    # fp32 IR: the CPU plugin may run it in bf16 (AVX-512 BF16); int8: quantization noise on random weights
    assert _cos(_outputs(new), before) > (0.999 if dtype == "fp32" else 0.95)
    if dtype == "int8":
        assert result.changes["calibration_texts"] == len(TEXTS)
        assert "SmoothQuant" in result.changes["method"]
    out = tmp_path / "out"
    save_state(new, out)
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["hfcompress"]["format"] == "openvino"
    hidden, enc = _bare_openvino(out / "openvino_model.xml", out)
    assert hidden.shape == (3, enc["input_ids"].shape[1], 32)
    reloaded = load_state(out)
    assert reloaded.format == "openvino"
    reloaded.model.set_num_threads(1)
    ours = reloaded.model(**dict(enc)).last_hidden_state.numpy()
    # A bare compile_model runs exactly what hfcompress.load runs: no load-time option changes it.
    assert np.array_equal(ours, hidden)
    assert reloaded.model.num_parameters >= 30522 * 32  # the embedding is in the IR
    if dtype == "int8":  # int8 weights: the .bin is about a quarter of the fp32 weights
        fp32_bytes = sum(p.numel() * 4 for p in state.model.parameters())
        assert (out / "openvino_model.bin").stat().st_size < 0.45 * fp32_bytes


def test_openvino_exclude_keeps_matching_layers_in_float(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    result = _technique().apply(state, _config(backend="openvino", exclude=["encoder.layer.*.output.dense"]),
                                _ctx(tmp_path))
    assert result.changes["excluded_nodes"] >= 2  # one FFN output MatMul (and its bias Add) per layer

    def fake_quantize_count(model) -> int:  # type: ignore[no-untyped-def]
        return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())

    plain = _technique().apply(state, _config(backend="openvino"), _ctx(tmp_path / "plain")).state
    assert fake_quantize_count(result.state.model._model) < fake_quantize_count(plain.model._model)


def test_openvino_sentence_transformers_layout(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A sentence-transformers folder keeps its IR where that library's OpenVINO backend looks."""
    from hfcompress.sentence_pipeline import loader_kwargs

    (tiny_bert_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tiny_bert_dir / "1_Pooling").mkdir()
    (tiny_bert_dir / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                         "pooling_mode_mean_tokens": True}))
    state = _load(tiny_bert_dir, "feature-extraction")
    new = _technique().apply(state, _config(backend="openvino", dtype="fp32"), _ctx(tmp_path)).state
    out = tmp_path / "out"
    save_state(new, out, pipeline_from=tiny_bert_dir)
    assert (out / "openvino" / "openvino_model.xml").is_file() and (out / "openvino" / "openvino_model.bin").is_file()
    assert not (out / "openvino_model.xml").exists()
    assert loader_kwargs(out) == {"backend": "openvino"}
    reloaded = load_state(out)
    assert _cos(_outputs(reloaded), _outputs(new)) > 0.9999


def test_openvino_refuses_causal_lms_and_int8_without_data(tiny_bert_dir: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_bert_dir)
    target = ModelTarget(task="text-generation", config=config, format="pytorch", has_data=True)
    with pytest.raises(BadInputError, match="onnxruntime-genai for causal LMs"):
        _technique().check(_config(backend="openvino"), target)
    no_data = ModelTarget(task="feature-extraction", config=config, format="pytorch", has_data=False)
    with pytest.raises(BadInputError, match="int8 calibrates activation ranges on data"):
        _technique().check(_config(backend="openvino"), no_data)
    _technique().check(_config(backend="openvino", dtype="fp32"), no_data)  # the plain IR needs no data


def test_auto_measures_openvino_candidates(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    config = _config(backend="auto", candidates=["openvino:int8", "openvino:fp32"], min_cosine=0.5, timing_batches=2)
    result = _technique().apply(state, config, _ctx(tmp_path))
    rows = {r["candidate"]: r for r in result.changes["candidates"]}
    assert {r["status"] for r in rows.values()} == {"passed"}
    assert all(r["latency_ms"]["median"] > 0 and r["size_bytes"] > 0 for r in rows.values())
    assert result.changes["chosen"] in rows and result.state.format == "openvino"


def test_openvino_accuracy_control_restores_float_layers_until_the_bound_holds(tiny_bert_dir: Path,
                                                                               tmp_path: Path) -> None:
    from hfcompress.plugin import forward, tokenize

    state = _load(tiny_bert_dir, "feature-extraction")
    plain = _technique().apply(state, _config(backend="openvino"), _ctx(tmp_path / "plain"))
    # random tiny weights quantize well (cosine ~0.99999): a bound above that makes NNCF restore layers
    strict = _technique().apply(state, _config(backend="openvino", accuracy_control=True, min_cosine=0.999997),
                                _ctx(tmp_path / "strict"))
    report = strict.changes["accuracy_control"]
    assert report["max_cosine_drop"] == pytest.approx(3e-6)
    assert "quantize_with_accuracy_control" in strict.changes["method"]

    from hfcompress_plugins.quantization.openvino_runtime import int8_weights

    # NNCF returned some layers to float: fewer weight tensors stay int8
    assert report["int8_weights"] == int8_weights(strict.state.model._model) < int8_weights(plain.state.model._model)

    def calibration_cosine(result) -> float:  # type: ignore[no-untyped-def]
        # what NNCF checked: each calibration text alone, mean-pooled, against the input model
        import torch

        values = []
        for text in TEXTS:
            batch = tokenize(state, [text], 128)
            ref = forward(state, batch).last_hidden_state.mean(1)
            got = result.state.model(**batch).last_hidden_state.mean(1)
            values.append(float(torch.nn.functional.cosine_similarity(ref, got)))
        return sum(values) / len(values)

    assert calibration_cosine(strict) > calibration_cosine(plain)
    assert calibration_cosine(strict) >= 0.999997 - 2e-6  # NNCF's bound (its float IR runs in bf16 here)


def test_accuracy_control_is_an_openvino_int8_option() -> None:
    from pydantic import ValidationError

    for step in ({"backend": "onnxruntime", "accuracy_control": True},
                 {"backend": "openvino", "dtype": "fp32", "accuracy_control": True},
                 {"backend": "auto", "accuracy_control": True}):
        with pytest.raises(ValidationError, match="accuracy_control is an openvino int8 option"):
            _config(**step)


def test_smooth_quant_alpha_reaches_nncf_and_is_recorded(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    default = _technique().apply(state, _config(backend="openvino"), _ctx(tmp_path / "default"))
    strong = _technique().apply(state, _config(backend="openvino", smooth_quant_alpha=0.2), _ctx(tmp_path / "weak"))
    assert default.changes["smooth_quant_alpha"] is None and strong.changes["smooth_quant_alpha"] == 0.2
    # another migration strength rescales activations and weights differently: other int8 outputs
    assert not bool((_outputs(default.state) == _outputs(strong.state)).all())
    # auto passes it to its openvino candidates only
    auto = _config(backend="auto", smooth_quant_alpha=0.8)
    assert auto.for_candidate("openvino:int8").smooth_quant_alpha == 0.8
    assert auto.for_candidate("torch:bf16").smooth_quant_alpha is None
