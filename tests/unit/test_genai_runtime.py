"""The quantization technique's ``onnxruntime-genai`` backend on tiny random causal LMs.

Each family is built here with the MiniLM tokenizer (real vocabulary, tiny weights) and head_dim 16,
the smallest head size ONNX Runtime's CPU GroupQueryAttention runs. Every build runs the real
onnxruntime-genai model builder (a subprocess, ~7 s); builds are shared per (family, dtype).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime_genai")

from hfcompress.artifact import load_state, save_state  # noqa: E402
from hfcompress.errors import BadInputError  # noqa: E402
from hfcompress.plugin import ModelState, ModelTarget, StepContext  # noqa: E402

TEXTS = [
    "a great film with a moving story", "dull, slow and far too long", "the actors seemed bored",
    "one of the best movies of the year", "I laughed, I cried, I loved it", "a complete waste of time",
    "beautifully shot but empty inside", "the ending surprised everyone in the room",
]
PROMPTS = ["the movie was", "a story about two friends who travel across the country"]
NEW_TOKENS = 16
FAMILIES = ("llama", "qwen2", "mistral", "phi3", "gemma2")
MIN_INT8_AGREEMENT = 0.95  # the bar for int8 greedy agreement with the PyTorch model (measured: 1.0)


def make_tiny_causal_lm(family: str, path: Path, seed: int = 0) -> Path:
    """A 2-layer causal LM of ``family`` (hidden 64, 4 query heads, 2 KV heads, head_dim 16)."""
    import torch
    import transformers as tf

    from hfcompress.testing.models import _minilm_tokenizer

    torch.manual_seed(seed)
    tokenizer = _minilm_tokenizer()
    common: dict[str, Any] = dict(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )
    config_cls, model_cls, extra = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {"head_dim": 16, "tie_word_embeddings": False}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {"tie_word_embeddings": False}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"head_dim": 16, "sliding_window": None,
                                                              "tie_word_embeddings": False}),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {"original_max_position_embeddings": 256,
                                                     "tie_word_embeddings": False}),
        # sliding window 64 on layer 0, global attention on layer 1; tied embeddings (Gemma's default)
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {"head_dim": 16, "query_pre_attn_scalar": 16,
                                                           "sliding_window": 64}),
    }[family]
    model = model_cls(config_cls(**common, **extra))
    model.config.architectures = [model_cls.__name__]
    _fit(model, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def _fit(model: Any, tokenizer: Any, steps: int = 40) -> None:
    """A few optimizer steps on TEXTS (~2 s). A freshly initialized LM's next-token logits over
    30k tokens are nearly flat (top-2 margins down to 5e-4 at std 0.16), so int8's ~0.1% rounding
    noise flips greedy choices at random and one flip changes the rest of the sequence; a fitted
    model has the clear preferences that greedy agreement is meant to measure."""
    import torch

    # One running text without special tokens, so the model learns to continue (not to stop).
    stream = tokenizer(" ".join(TEXTS + PROMPTS), add_special_tokens=False)["input_ids"]
    width = 24
    ids = torch.tensor([stream[i: i + width] for i in range(0, len(stream) - width, width // 2)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()


def _load(path: Path) -> ModelState:
    from hfcompress.models import ModelSource, load_model

    return load_model(ModelSource(str(path), str(path)), "text-generation")


def _config(**kwargs: Any) -> Any:
    from hfcompress_plugins.quantization import QuantizationConfig

    return QuantizationConfig.model_validate(kwargs)


def _ctx(work: Path) -> StepContext:
    import datasets
    from accelerate import Accelerator

    return StepContext(teacher=lambda: None, train_data=datasets.Dataset.from_dict({"text": TEXTS}),
                       accelerator=Accelerator(cpu=True), seed=0, work_dir=work)


def _prompt_ids(tokenizer: Any, text: str) -> Any:
    # no [CLS]/[SEP]: [SEP] is the tiny models' EOS, and a prompt is not a finished text
    return tokenizer([text], add_special_tokens=False, return_tensors="pt")["input_ids"]


def _agreement(reference: Any, got: Any, prompt_len: int) -> float:
    ref, new = reference[0, prompt_len:].tolist(), got[0, prompt_len:].tolist()
    return sum(a == b for a, b in zip(ref, new, strict=False)) / max(len(ref), 1)


class Built:
    def __init__(self, src: Path, out: Path, changes: dict[str, Any]) -> None:
        self.src, self.out, self.changes = src, out, changes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """build(family, dtype): the tiny model quantized with the backend and saved with save_state (cached)."""
    from hfcompress_plugins.quantization import Quantization

    cache: dict[tuple[str, str], Built] = {}
    root = tmp_path_factory.mktemp("genai")

    def build(family: str, dtype: str) -> Built:
        if (family, dtype) not in cache:
            src = root / family / "src"
            if not src.exists():
                make_tiny_causal_lm(family, src)
            state = _load(src)
            result = Quantization().apply(state, _config(backend="onnxruntime-genai", dtype=dtype),
                                          _ctx(root / family / f"work-{dtype}"))
            out = root / family / f"out-{dtype}"
            save_state(result.state, out)
            cache[family, dtype] = Built(src, out, result.changes)
        return cache[family, dtype]

    return build


# -- the whole path, every family -----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_folder_reloads_and_generates_like_transformers(family: str, built: Any) -> None:
    import torch

    import hfcompress

    b = built(family, "int8")
    names = {p.name for p in b.out.iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "config.json", "tokenizer.json"} <= names
    marker = json.loads((b.out / "config.json").read_text())["hfcompress"]
    assert marker["format"] == "onnx-genai" and marker["loader"] == "quantization"
    assert marker["info"]["quantization"]["dtype"] == "int8" and marker["info"]["quantization"]["kv_cache"] is True
    genai = json.loads((b.out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1  # config.threads
    assert b.changes["fidelity_to_input"]["top1_agreement"] >= 0.95

    reference = _load(b.src)
    model = hfcompress.load(b.out)
    assert type(model).__name__ == "GenaiModel"
    for text in PROMPTS:
        ids = _prompt_ids(reference.tokenizer, text)
        with torch.no_grad():
            expected = reference.model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        got = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert got.dtype == torch.long and got.shape == expected.shape == (1, ids.shape[1] + NEW_TOKENS)
        assert torch.equal(got[:, : ids.shape[1]], ids)
        agreement = _agreement(expected, got, ids.shape[1])
        print(f"{family} int8 greedy agreement on {text!r}: {agreement:.4f}")
        assert agreement >= MIN_INT8_AGREEMENT, (expected.tolist(), got.tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_int4_builds_runs_and_is_smaller(family: str, built: Any) -> None:
    import torch

    import hfcompress

    b4, b8 = built(family, "int4"), built(family, "int8")
    assert b4.changes["dtype"] == "int4" and b4.changes["size_bytes"] < b8.changes["size_bytes"]
    reference = _load(b4.src)
    ids = _prompt_ids(reference.tokenizer, PROMPTS[1])
    with torch.no_grad():
        expected = reference.model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    got = hfcompress.load(b4.out).generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert got.shape == (1, ids.shape[1] + NEW_TOKENS)
    assert int(got.max()) < reference.model.config.vocab_size
    # Random tiny weights give near-tied logits: int4 rounding changes greedy paths, so this is
    # reported, not bounded (the real model's perplexity is the measure that matters).
    print(f"{family} int4 greedy agreement: {_agreement(expected, got, ids.shape[1]):.4f}, "
          f"top-1 on calibration texts: {b4.changes['fidelity_to_input']['top1_agreement']}")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_scoring_logits_match_pytorch_with_right_and_left_padding(family: str, built: Any) -> None:
    import torch

    import hfcompress

    b = built(family, "int8")
    reference = _load(b.src)
    model = hfcompress.load(b.out)
    batch = reference.tokenizer(TEXTS[:4], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.model(**batch).logits
    got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert got.shape == expected.shape == (4, 16, reference.model.config.vocab_size)
    valid = batch["attention_mask"].bool()
    assert float((got.argmax(-1) == expected.argmax(-1))[valid].float().mean()) >= 0.95
    assert torch.allclose(got[valid], expected[valid], atol=0.05)
    # the same rows left-padded: the real tokens' logits do not move
    lengths = batch["attention_mask"].sum(1)
    left_ids, left_mask = torch.zeros_like(batch["input_ids"]), torch.zeros_like(batch["attention_mask"])
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, 16 - n:] = batch["input_ids"][i, :n]
        left_mask[i, 16 - n:] = 1
    left = model(input_ids=left_ids, attention_mask=left_mask).logits
    for i, n in enumerate(lengths.tolist()):
        assert torch.allclose(left[i, 16 - n:], got[i, :n], atol=1e-4)


def test_hfcompress_evaluators_score_the_folder(built: Any) -> None:
    """The model_io forward/reduce path (fidelity, perplexity) and parameter counting work on it."""
    from hfcompress.model_io import forward, reduce_output, tokenize

    b = built("llama", "int8")
    state = load_state(b.out)
    reference = _load(b.src)
    assert state.format == "onnx-genai" and state.task == "text-generation"
    batch = tokenize(state, TEXTS, 16)
    out = reduce_output(state, forward(state, batch), batch["attention_mask"])
    ref = reduce_output(reference, forward(reference, batch), batch["attention_mask"])
    assert out.shape == ref.shape == (len(TEXTS), reference.model.config.vocab_size)
    assert float((out.argmax(-1) == ref.argmax(-1)).float().mean()) == 1.0
    # logical parameters: MatMulNBits weights count K x N; the builder adds rotary cos/sin caches
    torch_params = sum(p.numel() for p in reference.model.parameters())
    assert abs(state.model.num_parameters - torch_params) / torch_params < 0.01


def test_size_evaluator_counts_the_external_weights(built: Any) -> None:
    from hfcompress_plugins.eval_size import folder_bytes

    b = built("llama", "int8")
    total, weights = folder_bytes(b.out)
    onnx_bytes = sum((b.out / name).stat().st_size for name in ("model.onnx", "model.onnx.data"))
    assert weights == onnx_bytes and total > weights


def test_save_state_of_a_reloaded_folder_round_trips(built: Any, tmp_path: Path) -> None:
    import torch

    b = built("qwen2", "int8")
    state = load_state(b.out)
    save_state(state, tmp_path / "again")
    again = load_state(tmp_path / "again")
    ids = _prompt_ids(state.tokenizer, PROMPTS[0])
    assert torch.equal(again.model.generate(ids, max_new_tokens=8), state.model.generate(ids, max_new_tokens=8))


# -- the folder runs with onnxruntime-genai alone ---------------------------------------------------
BARE_SCRIPT = r"""
import json, sys
sys.modules["hfcompress"] = None          # the folder must not need hfcompress ...
sys.modules["hfcompress_plugins"] = None  # ... nor its plugins
import numpy as np
import onnxruntime_genai as og

folder, ids, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = og.Model(folder)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=len(ids) + new)
generator = og.Generator(model, params)
generator.append_tokens(np.array([ids], dtype=np.int32))
while not generator.is_done():
    generator.generate_next_token()
print(json.dumps([int(t) for t in generator.get_sequence(0)]))
"""


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_awq_int4_is_calibrated_mixed_and_runs_with_the_runtime_alone(family: str, tmp_path: Path) -> None:
    """algorithm awq: NNCF's calibrated int4 for part of the matmuls, int8 MatMulNBits for the rest, no
    float matmul left, every one on the int8-activation kernel; the folder generates with bare
    onnxruntime-genai exactly as hfcompress.load does."""
    import onnx
    import torch
    from hfcompress_plugins.quantization import Quantization

    import hfcompress

    src = make_tiny_causal_lm(family, tmp_path / "src")
    state = _load(src)
    result = Quantization().apply(state, _config(backend="onnxruntime-genai", dtype="int4", algorithm="awq",
                                                 int4_ratio=0.5), _ctx(tmp_path / "work"))
    out = tmp_path / "out"
    save_state(result.state, out)
    changes = result.changes
    assert changes["dtype"] == "int4" and changes["nncf"] and changes["calibration_texts"] == len(TEXTS)
    assert changes["matmuls_int4"] > 0 and changes["matmuls_int8"] > 0
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and set(n.input) & constants]
    # int4: blocked DequantizeLinear of 4-bit weights (opset 22; ONNX Runtime fuses it into MatMulNBits)
    int4 = [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"]
    weights = {init.name: init.data_type for init in graph.initializer}
    assert len(int4) == changes["matmuls_int4"]
    assert {weights[name] for name in int4} <= {onnx.TensorProto.UINT4, onnx.TensorProto.INT4}
    nbits = [{a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == changes["matmuls_int8"] and {(a["bits"], a["accuracy_level"]) for a in nbits} == {(8, 4)}
    ids = _prompt_ids(state.tokenizer, PROMPTS[1])
    ours = hfcompress.load(out).generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert ours.shape == (1, ids.shape[1] + NEW_TOKENS)
    proc = subprocess.run([sys.executable, "-c", BARE_SCRIPT, str(out), json.dumps(ids[0].tolist()), str(NEW_TOKENS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ours[0].tolist()
    with torch.no_grad():
        reference = state.model(input_ids=ids).logits
    got = hfcompress.load(out)(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0) > 0.9


def _generates_like_pytorch_and_the_bare_runtime(family: str, state: ModelState, out: Path) -> Any:
    """``hfcompress.load(out).generate``: greedy agreement >= MIN_INT8_AGREEMENT with the PyTorch
    model, and the same tokens from bare onnxruntime-genai. Returns the prompt ids."""
    import torch

    import hfcompress

    ids = _prompt_ids(state.tokenizer, PROMPTS[1])
    ours = hfcompress.load(out).generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    if family != "gemma2":  # BARE_SCRIPT sizes the KV buffer to the prompt + new tokens, below Gemma-2's window
        proc = subprocess.run([sys.executable, "-c", BARE_SCRIPT, str(out), json.dumps(ids[0].tolist()),
                               str(NEW_TOKENS)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == ours[0].tolist()
    with torch.no_grad():
        expected = state.model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert _agreement(expected, ours, ids.shape[1]) >= MIN_INT8_AGREEMENT, (expected.tolist(), ours.tolist())
    return ids


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: tied LM head and soft-capped logits
def test_int8_with_its_own_lm_head_block_size(family: str, tmp_path: Path) -> None:
    """lm_head_group_size: the LM head's MatMulNBits alone gets the larger block; every other matmul
    keeps group_size; the folder generates with bare onnxruntime-genai as hfcompress.load does, and
    greedily like the PyTorch model."""
    import onnx
    from hfcompress_plugins.quantization import Quantization


    src = make_tiny_causal_lm(family, tmp_path / "src")
    state = _load(src)
    result = Quantization().apply(state, _config(backend="onnxruntime-genai", dtype="int8", group_size=16,
                                                 lm_head_group_size=64), _ctx(tmp_path / "work"))
    out = tmp_path / "out"
    save_state(result.state, out)
    assert (result.changes["dtype"], result.changes["lm_head_group_size"], result.changes["group_size"]) == ("int8", 64, 16)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and set(n.input) & constants]
    blocks = {n.name: {a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"}
    assert len(blocks) == result.changes["matmuls_int8"] and {a["bits"] for a in blocks.values()} == {8}
    head = result.changes["lm_head"]
    assert blocks[head]["block_size"] == 64 and blocks[head]["N"] == state.model.config.vocab_size
    assert {a["block_size"] for name, a in blocks.items() if name != head} == {16}
    _generates_like_pytorch_and_the_bare_runtime(family, state, out)


def _round_to_block_min_grid(model: Any, block: int) -> None:
    """Put every linear weight on the Q4_1 grid (what a model converted from a Q4_1 GGUF has)."""
    import torch
    from hfcompress_plugins.quantization.genai_block_min import quantize_block_min

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.shape[1] % block == 0:
                q, scale, minimum = quantize_block_min(module.weight.T.numpy(), block)
                grid = q * scale[..., None] + minimum[..., None]  # (out, blocks, block)
                module.weight.copy_(torch.from_numpy(grid.reshape(module.weight.shape[0], -1)))


def test_block_min_quantization_is_exact_on_the_grid_and_pads_a_partial_block() -> None:
    import numpy as np
    from hfcompress_plugins.quantization.genai_block_min import quantize_block_min

    rng = np.random.default_rng(0)
    k, n, block = 40, 3, 16  # 40 = 2 blocks + a partial one of 8
    scale = rng.uniform(0.01, 0.1, (n, 3)).astype(np.float32)
    minimum = rng.uniform(-1, 0, (n, 3)).astype(np.float32)
    q = rng.integers(0, 16, (n, 3, block)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # each block spans the whole range, as Q4_1 writes it
    weight = (q * scale[..., None] + minimum[..., None]).reshape(n, -1)[:, :k].T  # (K, N)
    got_q, got_scale, got_min = quantize_block_min(weight, block)
    assert got_q.shape == (n, 3, block) and got_q.max() <= 15
    back = (got_q * got_scale[..., None] + got_min[..., None]).reshape(n, -1)[:, :k].T
    assert np.abs(back - weight).max() < 1e-6
    assert np.array_equal(got_q[:, :2], q[:, :2].astype(np.uint8))


@pytest.mark.parametrize("family", FAMILIES)  # gemma2: tied LM head and soft-capped logits
def test_block_min_int4_runs_on_the_int4_kernel_and_keeps_a_q4_1_model(family: str, tmp_path: Path) -> None:
    """algorithm block_min: every matmul but the LM head is int4 MatMulNBits without zero points plus
    the block-minimum correction, the LM head int8; on a model whose weights sit on the Q4_1 grid the
    folder generates greedily like the PyTorch model, and bare onnxruntime-genai like hfcompress.load."""
    import onnx
    import torch
    from hfcompress_plugins.quantization import Quantization

    import hfcompress

    src = make_tiny_causal_lm(family, tmp_path / "src")
    state = _load(src)
    _round_to_block_min_grid(state.model, 16)
    result = Quantization().apply(state, _config(backend="onnxruntime-genai", dtype="int4", algorithm="block_min",
                                                 group_size=16), _ctx(tmp_path / "work"))
    out = tmp_path / "out"
    save_state(result.state, out)
    changes = result.changes
    assert (changes["dtype"], changes["algorithm"], changes["matmuls_int8"]) == ("int4", "block_min", 1)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    nbits = {n.name: ({a.name: a.i for a in n.attribute}, len(n.input)) for n in graph.node if n.op_type == "MatMulNBits"}
    head = changes["lm_head"]
    assert nbits[head][0]["bits"] == 8
    int4 = {name: value for name, value in nbits.items() if name != head}
    assert len(int4) == changes["matmuls_int4"] > 0
    # 3 inputs: no zero points, so ONNX Runtime keeps its int8-activation kernel (float ones leave it)
    assert {(a["bits"], a["block_size"], a["accuracy_level"], inputs) for a, inputs in int4.values()} == {(4, 16, 4, 3)}
    assert len([n for n in graph.node if n.op_type == "Add" and n.name.endswith("/AddBlockMin")]) == len(int4)
    ids = _generates_like_pytorch_and_the_bare_runtime(family, state, out)
    with torch.no_grad():
        reference = state.model(input_ids=ids).logits
    got = hfcompress.load(out)(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_folder_generates_with_onnxruntime_genai_alone(family: str, built: Any) -> None:
    import hfcompress

    b = built(family, "int8")
    tokenizer = _load(b.src).tokenizer
    ids = _prompt_ids(tokenizer, PROMPTS[1])
    proc = subprocess.run([sys.executable, "-c", BARE_SCRIPT, str(b.out), json.dumps(ids[0].tolist()), str(NEW_TOKENS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bare = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = hfcompress.load(b.out).generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert bare == ours[0].tolist()


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: the KV buffer must hold its sliding window
def test_card_usage_snippet_runs_as_written(family: str, built: Any) -> None:
    """The card shows the runtime's own API for this format (a bare ORT session lacks the KV-cache
    feeds), and the code it shows runs as written, without hfcompress."""
    import re

    from hfcompress.card import _snippet

    b = built(family, "int8")
    card = "\n".join(_snippet(b.out, "text-generation", None, b.out.name))
    assert "og.Model(folder)" in card and "InferenceSession" not in card
    hub_card = "\n".join(_snippet(b.out, "text-generation", "alice/tiny-llama", b.out.name))
    assert 'folder = snapshot_download("alice/tiny-llama")' in hub_card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)  # type: ignore[union-attr]
    code = code.replace(f'"./{b.out.name}"', repr(str(b.out)))
    code = "import sys\nsys.modules['hfcompress'] = None\n" + code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


# -- bad input: refused in check, before any work ---------------------------------------------------
def _target(config: Any, task: str = "text-generation") -> ModelTarget:
    return ModelTarget(config=config, task=task, has_data=True)


def _check(config: Any, task: str = "text-generation", **step: Any) -> None:
    from hfcompress_plugins.quantization import Quantization

    Quantization().check(_config(backend="onnxruntime-genai", **step), _target(config, task))


def test_check_refuses_non_causal_lm_tasks() -> None:
    from transformers import BertConfig

    config = BertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128)
    config.architectures = ["BertModel"]
    with pytest.raises(BadInputError, match="causal LMs .* only; the task is 'feature-extraction'"):
        _check(config, "feature-extraction")


def test_check_refuses_architectures_the_builder_cannot_export_with_the_list() -> None:
    from transformers import GPT2Config

    config = GPT2Config(n_embd=64, n_head=4, n_layer=2)
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(BadInputError) as err:
        _check(config)
    message = str(err.value)
    assert "GPT2LMHeadModel" in message and "no exporter" in message
    for supported in ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM",
                      "Gemma2ForCausalLM"):
        assert supported in message


def test_check_refuses_head_sizes_the_cpu_attention_kernel_rejects(tmp_path: Path) -> None:
    from transformers import AutoConfig

    from hfcompress.testing.models import make_tiny_llama

    config = AutoConfig.from_pretrained(str(make_tiny_llama(tmp_path / "llama")))  # head_dim 8
    with pytest.raises(BadInputError, match="head_dim 8: .*multiple of 16"):
        _check(config)
    config.head_dim = 16
    _check(config)  # accepted


def test_check_refuses_custom_modeling_code() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16)
    config.architectures = ["LlamaForCausalLM"]
    config.auto_map = {"AutoModelForCausalLM": "modeling_x.X"}
    with pytest.raises(BadInputError, match="custom modeling code"):
        _check(config)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"dtype": "fp8"}, "allowed: int4, int8"),
        ({"dtype": "bf16"}, "allowed: int4, int8"),
        ({"exclude": ["lm_head", "model.layers.0.*"]}, "exclude is a quanto/onnxruntime option"),
        ({"mode": "static"}, "onnxruntime options"),
        ({"activations": "int8"}, "activations is a quanto option"),
        ({"algorithm": "awq", "dtype": "int8"}, "awq calibrates int4 weights"),
        ({"algorithm": "awq", "dtype": "int4", "int8_layers": ["last_matmul"]}, "set int4_ratio instead"),
        ({"dtype": "int4", "int4_ratio": 0.5}, "int4_ratio is an algorithm awq option"),
        ({"dtype": "int4", "lm_head_group_size": 128}, "lm_head_group_size is an int8 round-to-nearest option"),
        ({"algorithm": "k_quant", "lm_head_group_size": 128}, "algorithm 'k_quant'"),
        ({"algorithm": "block_min"}, "block_min writes int4 weights; dtype is 'int8'"),
        ({"algorithm": "block_min", "dtype": "int4", "int8_layers": ["last_matmul"]}, "keeps the LM head int8"),
    ],
)
def test_bad_config_is_refused(step: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        _config(backend="onnxruntime-genai", **step)


def test_named_candidates_format_and_auto_skip() -> None:
    import torch
    from hfcompress_plugins.quantization import CANDIDATES, DEFAULT_CANDIDATES, Quantization
    from hfcompress_plugins.quantization.auto import skip_reason
    from transformers import BertConfig

    assert {"onnxruntime-genai:int4", "onnxruntime-genai:int8"} <= set(CANDIDATES)
    assert not any(n.startswith("onnxruntime-genai") for names in DEFAULT_CANDIDATES.values() for n in names)
    assert Quantization().output_format(_config(backend="onnxruntime-genai")) == "onnx-genai"
    assert _config(backend="onnxruntime-genai").resolved_dtype() == "int8"
    auto = _config(backend="auto", candidates=["torch:bf16", "onnxruntime-genai:int4"])
    assert Quantization().output_format(auto) == "onnx-genai"
    assert auto.for_candidate("onnxruntime-genai:int4").backend == "onnxruntime-genai"

    class Encoder:
        config = BertConfig()

    state = ModelState(Encoder(), None, "feature-extraction")
    reason = skip_reason("onnxruntime-genai:int8", torch.device("cpu"), state)
    assert reason is not None and "causal LMs only" in reason
