"""Tests of the layer-drop plugin: the hfcompress conformance kit, plus what layer dropping must do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hfcompress.plugin import BadInputError, ModelState, ModelTarget, StepContext
from hfcompress.testing.conformance import check_technique

from hfcompress_layerdrop import LayerDrop, LayerDropConfig

pytest_plugins = ["hfcompress.testing.pytest_plugin"]

GOOD = [{"keep": 1}, {"keep": 1, "criterion": "top"}, {"layers": [0]}, {"layers": [-1]}]
BAD = [
    {},  # neither layers nor keep
    {"layers": [0], "keep": 1},  # both
    {"layers": []},
    {"layers": [1, 1]},
    {"keep": 0},
    {"keep": 1, "criterion": "random"},
    {"keep": 1, "max_samples": 0},
    {"keep": 2},  # pydantic-valid, but the tiny models have only 2 layers: check() rejects it
    {"layers": [7]},
    {"layers": [0, 1]},  # would drop every layer
    {"layers": [1, -1]},  # the same layer twice on a 2-layer model
]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_conformance(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    report = check_technique(LayerDrop, configs=GOOD, bad_configs=BAD, tmp_path=tmp_path, models=tiny_models)
    assert len(report.accepted()) == len(GOOD) * 3  # every family supported
    for case in report.accepted():
        assert (case.changes["layers_before"], case.changes["layers_after"]) == (2, 1)
        assert case.changes["parameters_after"] < case.changes["parameters_before"]
        assert case.max_abs_diff == 0.0
    assert "must be smaller than the 2 layers" in dict((str(b), m) for b, m in report.bad_configs)[str({"keep": 2})]


# -- behaviour on purpose-built models ------------------------------------------------------------


def _tokenizer(tiny_llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _ctx(texts: list[str], tmp_path: Path) -> StepContext:
    import datasets
    from accelerate import Accelerator

    return StepContext(teacher=lambda: None, train_data=datasets.Dataset.from_dict({"text": texts}),  # type: ignore[arg-type,return-value]
                       accelerator=Accelerator(cpu=True), seed=0, work_dir=tmp_path)


def _llama(num_layers: int, vocab: int, pad: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                         pad_token_id=pad, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _batch(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_block_influence_drops_the_layer_that_does_nothing(tmp_path: Path, tiny_llama_dir: Path,
                                                           text_data_file: Path) -> None:
    """A pre-norm Llama layer whose output projections are zero is the identity: it must score 0 and go."""
    import json

    import torch

    tokenizer = _tokenizer(tiny_llama_dir)
    model = _llama(4, tokenizer.vocab_size, tokenizer.pad_token_id)
    with torch.no_grad():
        layer = model.model.layers[2]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    texts = [json.loads(line)["text"] for line in text_data_file.read_text().splitlines()][:16]
    batch = _batch(tokenizer, texts[:4])
    with torch.no_grad():
        before = model(**batch).logits
    params_before = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())

    state = ModelState(model=model, tokenizer=tokenizer, task="text-generation")
    result = LayerDrop().apply(state, LayerDropConfig(keep=3), _ctx(texts, tmp_path))

    scores = result.changes["block_influence"]
    assert scores["2"] < 1e-6 < min(scores[k] for k in ("0", "1", "3"))
    assert result.changes["dropped"] == [2] and result.changes["kept"] == [0, 1, 3]
    assert result.changes["parameters_after"] == params_before - per_layer
    assert model.config.num_hidden_layers == 3
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)  # removing an identity changes nothing


def test_generation_with_kv_cache_after_dropping(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """Kept layers are renumbered, so the KV cache (indexed by layer_idx) stays consistent."""
    import torch

    tokenizer = _tokenizer(tiny_llama_dir)
    model = _llama(4, tokenizer.vocab_size, tokenizer.pad_token_id)
    state = ModelState(model=model, tokenizer=tokenizer, task="text-generation")
    LayerDrop().apply(state, LayerDropConfig(layers=[0, 2]), _ctx(["unused"], tmp_path))
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    prompt = _batch(tokenizer, ["the film is"])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        cached = model.generate(**prompt, use_cache=True, **kwargs)
        uncached = model.generate(**prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)


def _tiny(model_type: str) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    common = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 64}
    if model_type in ("bert", "roberta", "xlm-roberta"):
        config = transformers.AutoConfig.for_model(model_type, **common)
        return transformers.AutoModel.from_config(config)
    config = transformers.AutoConfig.for_model(model_type, num_key_value_heads=2, **common)
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "llama", "mistral", "qwen2"])
def test_output_reloads_with_plain_from_pretrained(model_type: str, tmp_path: Path) -> None:
    import torch
    import transformers

    from hfcompress_layerdrop import drop_layers

    model = _tiny(model_type).eval()
    params_before = sum(p.numel() for p in model.parameters())
    layer_params = sum(p.numel() for p in model.base_model.get_submodule(
        "encoder.layer" if model_type in ("bert", "roberta", "xlm-roberta") else "layers")[0].parameters())
    kept = drop_layers(model, [1, 3])
    assert kept == [0, 2]
    assert sum(p.numel() for p in model.parameters()) == params_before - 2 * layer_params
    model.save_pretrained(tmp_path)
    auto = type(model)
    reloaded = auto.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    layer_types = getattr(reloaded.config, "layer_types", None)
    if layer_types is not None:  # qwen2/mistral describe attention per layer: must match the new depth
        assert len(layer_types) == 2
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        a, b = model(input_ids=ids), reloaded(input_ids=ids)
    key = "logits" if hasattr(a, "logits") else "last_hidden_state"
    torch.testing.assert_close(getattr(b, key), getattr(a, key), atol=1e-6, rtol=0)
    assert isinstance(transformers.AutoConfig.from_pretrained(tmp_path).num_hidden_layers, int)


def test_check_rejects_unsupported_architectures() -> None:
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2)
    config.architectures = ["GPT2LMHeadModel"]
    target = ModelTarget(config=config, task="text-generation", has_data=True)
    with pytest.raises(BadInputError, match=r"GPT2LMHeadModel.*supported model types: bert"):
        LayerDrop().check(LayerDropConfig(keep=1), target)


def test_data_requirement() -> None:
    technique = LayerDrop()
    assert technique.data_requirement(LayerDropConfig(keep=2)) == "text"
    assert technique.data_requirement(LayerDropConfig(keep=2, criterion="top")) == "none"
    assert technique.data_requirement(LayerDropConfig(layers=[1])) == "none"


def test_end_to_end_through_compress(tmp_path: Path, tiny_bert_dir: Path, hfcompress_cache: Path) -> None:
    """The kit's end-to-end run: hfcompress.compress with layer-drop on the tiny BERT and real sentences."""
    from transformers import AutoModel

    report = check_technique(LayerDrop, configs=[{"keep": 1}], tmp_path=tmp_path, models={"bert": tiny_bert_dir},
                             families=("bert",), end_to_end=True)
    results = report.end_to_end
    assert results is not None
    base = AutoModel.from_pretrained(tiny_bert_dir)
    [dropped] = results["steps"][0]["changes"]["dropped"]
    per_layer = sum(p.numel() for p in base.encoder.layer[dropped].parameters())
    assert results["base"]["num_parameters"] == base.num_parameters()
    assert results["compressed"]["num_parameters"] == base.num_parameters() - per_layer
