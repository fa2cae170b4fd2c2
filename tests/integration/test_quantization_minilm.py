"""quantization on the packaged MiniLM with real data (vader:movie): the must-show numbers.

- onnxruntime dynamic int8: model.onnx < 30 MB (fp32 safetensors: 90.9 MB), mean-pooled cosine
  to the base >= 0.98 on held-out sentences, and the folder runs in plain onnxruntime in a
  process where hfcompress cannot be imported.
- quanto int8: save -> reload in a fresh process -> outputs equal to the in-memory model.
- auto: every default CPU candidate is measured and recorded, the choice is the fastest passing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hfcompress.artifact import save_state
from hfcompress.data import DataConfig, load_data
from hfcompress.models import load_model, resolve_model
from hfcompress.plugin import ModelState, StepContext

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELD_OUT = 256  # held-out sentences for fidelity (evaluation split, never used for calibration)


@pytest.fixture(scope="module")
def movie(hf_cache: str) -> Any:
    return load_data(DataConfig.model_validate("vader:movie"))


def _minilm() -> ModelState:
    return load_model(resolve_model("builtin:all-MiniLM-L6-v2"), "feature-extraction")


def _ctx(tmp_path: Path, train: Any) -> StepContext:
    from accelerate import Accelerator

    return StepContext(teacher=_minilm, train_data=train, accelerator=Accelerator(cpu=True), seed=0,
                       work_dir=tmp_path / "work")


def _pooled(state: ModelState, texts: list[str]) -> Any:
    import torch

    from hfcompress.model_io import forward, reduce_output

    outs = []
    for i in range(0, len(texts), 32):
        enc = state.tokenizer(texts[i: i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        outs.append(reduce_output(state, forward(state, batch), batch["attention_mask"]))
    return torch.cat(outs)


PLAIN_ORT = r"""
import sys
sys.modules["hfcompress"] = None          # make sure nothing of hfcompress can be used
sys.modules["hfcompress_plugins"] = None
import json
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer
folder, texts_file, out_file = sys.argv[1:4]
texts = json.load(open(texts_file))
tokenizer = AutoTokenizer.from_pretrained(folder)
import glob
# a bare session, no options: the graph in the file is the graph that was evaluated
session = ort.InferenceSession(sorted(glob.glob(folder + "/**/*.onnx", recursive=True))[0])
pooled = []
for i in range(0, len(texts), 32):
    enc = tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="np")
    hidden = session.run(None, dict(enc))[0]
    mask = enc["attention_mask"][..., None].astype(np.float32)
    pooled.append((hidden * mask).sum(1) / mask.sum(1))
np.save(out_file, np.concatenate(pooled))
print("hfcompress" in sys.modules and sys.modules["hfcompress"] is not None)
"""


def test_onnxruntime_dynamic_int8_is_small_faithful_and_runs_without_hfcompress(movie: Any, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from hfcompress_plugins.quantization import Quantization, QuantizationConfig

    base = _minilm()
    texts = list(movie.eval["text"][:HELD_OUT])
    reference = _pooled(base, texts)
    result = Quantization().apply(base, QuantizationConfig(backend="onnxruntime"), _ctx(tmp_path, movie.train))
    out = tmp_path / "out"
    save_state(result.state, out)

    size = (out / "model.onnx").stat().st_size
    assert size < 30_000_000, f"model.onnx is {size / 1e6:.1f} MB"
    assert result.changes["per_channel"] is True and result.changes["mode"] == "dynamic"

    (tmp_path / "texts.json").write_text(json.dumps(texts))
    proc = subprocess.run([sys.executable, "-c", PLAIN_ORT, str(out), str(tmp_path / "texts.json"),
                           str(tmp_path / "pooled.npy")], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    plain = torch.from_numpy(np.load(tmp_path / "pooled.npy"))
    cosine = torch.nn.functional.cosine_similarity(plain, reference, dim=-1)
    print(f"MiniLM onnxruntime dynamic int8: {size / 1e6:.1f} MB, held-out cosine mean {cosine.mean():.4f} "
          f"min {cosine.min():.4f}, graph {result.changes['graph_optimization']}")
    assert float(cosine.mean()) >= 0.98
    # The hfcompress wrapper gives the same numbers as plain onnxruntime.
    ours = _pooled(result.state, texts)
    assert torch.allclose(ours, plain, atol=1e-5)


FRESH_LOAD = r"""
import sys, json, torch
import hfcompress
from hfcompress.model_io import forward, reduce_output
folder, texts_file, out_file = sys.argv[1:4]
from transformers import AutoTokenizer
model = hfcompress.load(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
texts = json.load(open(texts_file))
enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
with torch.no_grad():
    hidden = model(**enc).last_hidden_state
torch.save({"hidden": hidden, "class": type(model).__name__}, out_file)
"""


def test_quanto_int8_reloads_in_a_fresh_process_with_equal_outputs(movie: Any, tmp_path: Path) -> None:
    import torch
    from hfcompress_plugins.quantization import Quantization, QuantizationConfig
    from optimum.quanto.nn import QLinear

    base = _minilm()
    result = Quantization().apply(base, QuantizationConfig(backend="quanto", dtype="int8"), _ctx(tmp_path, movie.train))
    assert result.changes["quantized_modules"] == 6 * 6 + 1  # 6 linears per layer + pooler
    out = tmp_path / "out"
    save_state(result.state, out)
    texts = list(movie.eval["text"][:16])
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    subprocess.run([sys.executable, "-c", FRESH_LOAD, str(out), str(tmp_path / "texts.json"), str(tmp_path / "o.pt")],
                   check=True)
    enc = result.state.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        in_memory = result.state.model(**enc).last_hidden_state
    fresh = torch.load(tmp_path / "o.pt")
    assert fresh["class"] == "BertModel"
    assert torch.equal(fresh["hidden"], in_memory)
    assert sum(isinstance(m, QLinear) for m in result.state.model.modules()) == 37
    weights = (out / "model.safetensors").stat().st_size
    # quanto quantizes Linear layers only: the 11.9M-parameter embedding tables stay fp32 (47.7 MB),
    # the 10.6M linear weights become int8 (~10.7 MB with scales); fp32 safetensors: 90.9 MB.
    assert 55_000_000 < weights < 60_000_000, f"quanto int8 weights are {weights / 1e6:.1f} MB"


def test_auto_measures_default_cpu_candidates_and_keeps_the_fastest_passing(movie: Any, tmp_path: Path) -> None:
    from hfcompress_plugins.quantization import DEFAULT_CANDIDATES, Quantization, QuantizationConfig

    base = _minilm()
    result = Quantization().apply(base, QuantizationConfig(backend="auto", calibration_samples=32),
                                  _ctx(tmp_path, movie.train))
    rows = {r["candidate"]: r for r in result.changes["candidates"]}
    print(json.dumps(result.changes, indent=1))
    assert list(rows) == DEFAULT_CANDIDATES["cpu"]
    passed = {k: r for k, r in rows.items() if r["status"] == "passed"}
    assert passed, "on MiniLM at least bf16 and dynamic int8 keep cosine >= 0.98"
    for row in passed.values():
        assert row["fidelity"]["cosine_mean"] >= 0.98 and row["latency_ms"]["min"] > 0
    assert result.changes["chosen"] == min(passed, key=lambda k: passed[k]["latency_ms"]["median"])
    save_state(result.state, tmp_path / "out")
    marker = json.loads((tmp_path / "out" / "config.json").read_text())["hfcompress"]
    assert marker["info"]["quantization"]["auto"]["chosen"] == result.changes["chosen"]


# -- Llama family: the packaged SmolLM2-135M ----------------------------------------------------
def _last_token_logits(state: ModelState, texts: list[str]) -> Any:
    import torch

    from hfcompress.model_io import forward, reduce_output, tokenize

    outs = []
    for i in range(0, len(texts), 8):
        batch = tokenize(state, texts[i: i + 8], 32)
        outs.append(reduce_output(state, forward(state, batch), batch["attention_mask"]))
    return torch.cat(outs)


@pytest.mark.parametrize("backend", ["onnxruntime", "quanto"])
def test_smollm2_quantizes_and_reloads(backend: str, movie: Any, tmp_path: Path) -> None:
    import torch
    from hfcompress_plugins.quantization import Quantization, QuantizationConfig

    from hfcompress.artifact import load_state

    base = load_model(resolve_model("builtin:SmolLM2-135M"), "text-generation")
    texts = list(movie.eval["text"][:32])
    reference = _last_token_logits(base, texts)
    config = QuantizationConfig(backend=backend, calibration_samples=16)
    result = Quantization().apply(base, config, _ctx(tmp_path, movie.train))
    out = tmp_path / "out"
    save_state(result.state, out)
    reloaded = load_state(out)
    got = _last_token_logits(reloaded, texts)
    assert torch.equal(got, _last_token_logits(result.state, texts))
    agreement = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
    cosine = float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).mean())
    size = sum(p.stat().st_size for p in out.iterdir() if p.name in ("model.onnx", "model.safetensors"))
    print(f"SmolLM2 {backend}: {size / 1e6:.1f} MB, next-token top-1 agreement {agreement:.3f}, cosine {cosine:.4f}")
    fp32_size = (Path(resolve_model("builtin:SmolLM2-135M").path) / "model.safetensors").stat().st_size
    assert size < 0.5 * fp32_size  # int8 layers; lm_head (tied to the embedding) excluded, stays fp32
    if backend == "quanto":
        assert agreement >= 0.9 and cosine >= 0.99  # measured 0.969 / 0.999
    else:
        # Measured 0.78 / 0.74: dynamic int8 quantizes each activation tensor with one scale, and
        # Llama activations have outliers; documented in docs/techniques/quantization.md, and
        # auto's min_agreement (0.9) rejects it. This bound catches a broken export, not a style.
        assert agreement >= 0.6 and cosine >= 0.6
        assert result.changes["kv_cache"] is False and reloaded.model.input_names == ["input_ids", "attention_mask"]


def test_onnxruntime_after_default_head_pruning_of_minilm(movie: Any, tmp_path: Path) -> None:
    """The default recipe prunes before quantizing: the pruned custom-code BERT exports and quantizes."""
    import torch
    from hfcompress_plugins.head_pruning import HeadPruning, HeadPruningConfig
    from hfcompress_plugins.quantization import Quantization, QuantizationConfig

    from hfcompress.artifact import load_state

    pruned = HeadPruning().apply(_minilm(), HeadPruningConfig(ratio=0.33, ffn_ratio=0.5, importance="magnitude"),
                                 _ctx(tmp_path, movie.train)).state
    texts = list(movie.eval["text"][:64])
    reference = _pooled(pruned, texts)
    result = Quantization().apply(pruned, QuantizationConfig(backend="onnxruntime"), _ctx(tmp_path, movie.train))
    save_state(result.state, tmp_path / "out")
    got = _pooled(load_state(tmp_path / "out"), texts)
    cosine = float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).mean())
    size = (tmp_path / "out" / "model.onnx").stat().st_size
    print(f"pruned MiniLM -> onnxruntime dynamic int8: {size / 1e6:.1f} MB, cosine to the pruned model {cosine:.4f}, "
          f"fused {result.changes.get('fused_operators')}, graph {result.changes['graph_optimization']}")
    assert cosine >= 0.98
    assert size < 23_000_000  # smaller than the unpruned int8 graph (23.0 MB)
