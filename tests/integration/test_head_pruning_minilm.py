"""head-pruning on the packaged models with real data: MiniLM (vader:movie) and SmolLM2 (slow)."""

from __future__ import annotations

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

import hfcompress
from hfcompress.artifact import save_state
from hfcompress.data import DataConfig, load_data
from hfcompress.models import load_model, resolve_model
from hfcompress.plugin import ModelState, ModelTarget, StepContext
from hfcompress.testing.isolation import BLOCK_HFCOMPRESS

pytestmark = pytest.mark.integration

MINILM_PARAMETERS = 22_713_216


@pytest.fixture(scope="module")
def movie(hf_cache: str) -> Any:
    return load_data(DataConfig.model_validate("vader:movie"))


def _ctx(tmp_path: Path, train: Any) -> StepContext:
    return StepContext(
        teacher=lambda: None,  # type: ignore[arg-type,return-value]
        train_data=train,
        accelerator=SimpleNamespace(device=torch.device("cpu")),  # type: ignore[arg-type]
        seed=0,
        work_dir=tmp_path,
    )


def _encode(state: ModelState, texts: list[str]) -> dict[str, Any]:
    enc = state.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    keep = ("input_ids", "attention_mask") if state.task == "text-generation" else (
        "input_ids", "attention_mask", "token_type_ids")
    return {k: v for k, v in enc.items() if k in keep}


BLOCKED = BLOCK_HFCOMPRESS + r"""
import torch
from transformers import AutoModel, AutoTokenizer
folder, inputs_file, out_file = sys.argv[1:4]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    torch.save(model(**torch.load(inputs_file)).last_hidden_state, out_file)
print(type(model).__module__, type(model).__name__)
"""


@pytest.fixture(scope="module")
def pruned_minilm(movie: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelState, dict[str, Any]]:
    """MiniLM with a third of its heads removed by gradient importance on vader:movie (pruned once)."""
    state = load_model(resolve_model("builtin:all-MiniLM-L6-v2"), "feature-extraction")
    assert sum(p.numel() for p in state.model.parameters()) == MINILM_PARAMETERS
    cfg = HeadPruningConfig(ratio=1 / 3, calibration_samples=64)
    HeadPruning().check(cfg, ModelTarget(config=state.model.config, task="feature-extraction", has_data=True))
    result = HeadPruning().apply(state, cfg, _ctx(tmp_path_factory.mktemp("prune"), movie.train))
    return result.state, result.changes


def test_minilm_third_of_heads_drops_exactly_the_head_slices(pruned_minilm: Any, movie: Any, tmp_path: Path) -> None:
    pruned, changes = pruned_minilm
    # 12 heads x 6 layers, a third removed; each head owns 32 rows (+ biases) of Q, K and V and
    # 32 input columns of the attention output projection (hidden 384, head size 384 / 12 = 32)
    removed_heads = 24
    per_head = 3 * (384 * 32 + 32) + 384 * 32
    expected = MINILM_PARAMETERS - removed_heads * per_head
    assert expected == 21_531_264
    assert sum(p.numel() for p in pruned.model.parameters()) == expected
    assert changes["num_parameters_after"] == expected
    assert sum(changes["heads_per_layer"]) == 48 and min(changes["heads_per_layer"]) >= 1
    assert sum(len(r) for r in changes["removed_heads"]) == removed_heads
    for layer, heads in zip(pruned.model.encoder.layer, changes["heads_per_layer"], strict=True):
        assert layer.attention.self.query.out_features == heads * 32
        assert layer.attention.output.dense.in_features == heads * 32
    assert all(layer.intermediate.dense.out_features == 1536 for layer in pruned.model.encoder.layer)

    out = tmp_path / "pruned"
    save_state(pruned, out)
    config = json.loads((out / "config.json").read_text())
    assert config["hfcompress_removed_heads"] == changes["removed_heads"]
    assert config["auto_map"]["AutoModel"] == "modeling_hfcompress_pruned.PrunedBertModel"
    # hfcompress.load needs no trust_remote_code and reproduces the in-memory model
    inputs = _encode(pruned, list(movie.eval["text"][:8]))
    model = hfcompress.load(out)
    with torch.no_grad():
        diff = (model(**inputs).last_hidden_state - pruned.model(**inputs).last_hidden_state).abs().max().item()
    assert diff <= 1e-5


def test_pruned_minilm_reloads_where_hfcompress_cannot_be_imported(pruned_minilm: Any, movie: Any,
                                                                    tmp_path: Path) -> None:
    pruned, _ = pruned_minilm
    out = tmp_path / "pruned"
    save_state(pruned, out)
    inputs = _encode(pruned, list(movie.eval["text"][:8]))
    with torch.no_grad():
        in_memory = pruned.model(**inputs).last_hidden_state
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("transformers_modules.") and "PrunedBertModel" in proc.stdout
    assert (torch.load(tmp_path / "out.pt") - in_memory).abs().max().item() <= 1e-5


def test_default_recipe_pruning_of_minilm_exports_to_onnx(movie: Any, tmp_path: Path) -> None:
    import onnxruntime as ort

    state = load_model(resolve_model("builtin:all-MiniLM-L6-v2"), "feature-extraction")
    texts = list(movie.eval["text"][:16])
    reference = _encode(state, texts)
    with torch.no_grad():
        base = state.model(**reference).last_hidden_state
    cfg = HeadPruningConfig.model_validate({"ratio": 0.33, "ffn_ratio": 0.5, "importance": "magnitude"})
    pruned = HeadPruning().apply(state, cfg, _ctx(tmp_path, movie.train)).state
    widths = pruned.model.config.pruned_layout["intermediate_size"]
    # global scope: half of all 9,216 FFN neurons, spread unevenly, every width a multiple of 8
    assert abs(sum(widths) - 4608) <= 6 * 4 and all(w % 8 == 0 and 8 <= w < 1536 for w in widths)

    class KeywordCall(torch.nn.Module):
        def __init__(self, inner: Any, names: list[str]) -> None:
            super().__init__()
            self.inner, self.names = inner, names

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(self.names, tensors, strict=True))).last_hidden_state

    pruned.model.set_attn_implementation("eager")
    names = list(reference)
    torch.onnx.export(
        KeywordCall(pruned.model, names).eval(), tuple(reference[n][:4] for n in names), str(tmp_path / "m.onnx"),
        input_names=names, output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, opset_version=17, dynamo=False,
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["last_hidden_state"], {n: reference[n].numpy() for n in names})
    with torch.no_grad():
        want = pruned.model(**reference).last_hidden_state
    assert abs(got - want.numpy()).max() <= 1e-4

    # pruning a third of the heads and half the FFN without any training keeps the embeddings
    # recognisably the same (measured ~0.9; recovery is distillation's job)
    mask = reference["attention_mask"].unsqueeze(-1).float()
    pool = lambda h: (h * mask).sum(1) / mask.sum(1)  # noqa: E731
    cos = torch.nn.functional.cosine_similarity(pool(want), pool(base)).mean().item()
    assert 0.5 < cos < 0.9999


@pytest.mark.slow
def test_smollm2_heads_and_ffn_pruned_reload_with_plain_from_pretrained(hf_cache: str, movie: Any,
                                                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = load_model(resolve_model("builtin:SmolLM2-135M"), "text-generation")
    before = sum(p.numel() for p in state.model.parameters())
    cfg = HeadPruningConfig(ratio=1 / 3, ffn_ratio=0.25, scope="per-layer", calibration_samples=32)
    result = HeadPruning().apply(state, cfg, _ctx(tmp_path, movie.train))
    ch = result.changes
    # 9 query heads in 3 KV groups: one query head leaves every group, all 3 KV heads stay
    assert ch["heads_per_layer"] == [6] * 30 and ch["kv_heads_per_layer"] == [3] * 30
    assert ch["ffn_neurons_per_layer"] == [1152] * 30
    per_layer = 3 * (576 * 64) * 2 + 384 * 3 * 576  # 3 heads: q rows + o columns; 384 neurons: gate/up/down
    assert ch["num_parameters_after"] == before - 30 * per_layer
    assert result.state.loader is None

    out = tmp_path / "smol"
    save_state(result.state, out)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
            config["intermediate_size"]) == (6, 3, 64, 1152)
    assert "auto_map" not in config and not (out / "modeling_hfcompress_pruned.py").exists()
    assert len(config["hfcompress_removed_heads"]) == 30

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    inputs = tok(["The movie was"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(plain(**inputs).logits, result.state.model(**inputs).logits)
        generated = plain.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 8
    assert tok.decode(generated[0, inputs["input_ids"].shape[1]:]).strip() != ""
