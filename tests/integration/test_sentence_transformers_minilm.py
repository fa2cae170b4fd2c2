"""The packaged all-MiniLM-L6-v2 is a sentence-transformers model; every output stays one.

Through the whole pipeline (``compress``, step cache, ``save_state``), for a plain PyTorch output
(uniform FFN pruning: stock config), a head-pruned output (ships its modeling code) and an ONNX
int8 output: ``SentenceTransformer(DIR[, trust_remote_code=True][, backend="onnx"]).encode`` equals
the base model's pipeline (mean pooling + normalize, as its modules.json says) applied to
``hfcompress.load(DIR)`` (cosine >= 0.9999), with unit-norm vectors like the base's.

``SentenceTransformer(DIR, backend="onnx")`` needs optimum-onnx, which cannot be installed beside
transformers 5 (optimum-onnx 0.1.0 requires transformers < 4.58 and fails to import on 5.x:
``cannot import name 'is_offline_mode' from 'transformers.utils'``). That check runs in this process
when ``optimum.onnxruntime`` imports, or in the interpreter named by ``HFCOMPRESS_ST_ONNX_PYTHON``
(an environment with transformers 4.57, sentence-transformers 5.1 and optimum-onnx 0.1), else it skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from hfcompress import compress
from hfcompress.artifact import load_state
from hfcompress.sentence_pipeline import embed
from hfcompress.testing.samples import rows, write_jsonl

pytestmark = pytest.mark.integration
sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = [str(r["text"]) for r in rows()][:32]
ONNX_PYTHON = os.environ.get("HFCOMPRESS_ST_ONNX_PYTHON")
STEPS: dict[str, list[dict[str, Any]]] = {
    # uniform FFN pruning keeps stock config fields: a plain PyTorch output, no remote code
    "pytorch": [{"head-pruning": {"ffn_ratio": 0.25, "scope": "per-layer", "importance": "magnitude"}}],
    "pruned": [{"head-pruning": {"ratio": 0.25, "importance": "magnitude"}}],
    "onnx": [{"quantization": {"backend": "onnxruntime", "graph_optimization": "none"}}],
}


def _compress(kind: str, root: Path) -> Path:
    recipe = {"model": "builtin:all-MiniLM-L6-v2", "data": str(write_jsonl(root / "data.jsonl")), "steps": STEPS[kind],
              "evaluate": {"max_samples": 16, "repeats": 1, "warmup": 1, "sequence_length": 64,
                           "evaluators": ["fidelity"]}}
    out = compress(recipe=recipe, output_dir=root / kind).output_dir
    assert out is not None
    return out


def _encode(folder: str | Path, **kwargs: Any) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    return torch.from_numpy(SentenceTransformer(str(folder), device="cpu", **kwargs).encode(TEXTS))


def _base_pipeline_on(folder: str | Path, base: str) -> torch.Tensor:
    with torch.no_grad():
        return embed(load_state(folder), TEXTS, base)


def _check(kind: str, got: torch.Tensor, folder: Path, base: str) -> None:
    want = _base_pipeline_on(folder, base)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    to_base = torch.nn.functional.cosine_similarity(got, _encode(base), dim=-1)
    print(f"MiniLM {kind}: SentenceTransformer(DIR).encode vs base pipeline on hfcompress.load(DIR): cosine "
          f"min {cosine.min():.6f}; vs the base model's own encode: mean {to_base.mean():.4f}; norms "
          f"{got.norm(dim=-1).min():.6f}..{got.norm(dim=-1).max():.6f}")
    assert float(cosine.min()) >= 0.9999
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_our_pipeline_is_sentence_transformers_pipeline(minilm_path: str) -> None:
    """The reference used below: hfcompress's pooling + normalize equals sentence-transformers' own."""
    got, want = _encode(minilm_path), _base_pipeline_on(minilm_path, minilm_path)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(want.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_pytorch_output_is_a_sentence_transformer(hf_cache: str, minilm_path: str, tmp_path: Path) -> None:
    folder = _compress("pytorch", tmp_path)
    assert not (folder / "modeling_hfcompress_pruned.py").exists()
    _check("pytorch (FFN -25%)", _encode(folder), folder, minilm_path)


def test_head_pruned_output_is_a_sentence_transformer_with_trust_remote_code(hf_cache: str, minilm_path: str,
                                                                              tmp_path: Path) -> None:
    folder = _compress("pruned", tmp_path)
    assert (folder / "modeling_hfcompress_pruned.py").is_file()
    _check("head-pruned (-25% heads)", _encode(folder, trust_remote_code=True), folder, minilm_path)


@pytest.fixture(scope="module")
def onnx_output(hf_cache: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compress("onnx", tmp_path_factory.mktemp("minilm-onnx"))


def test_onnx_int8_output_has_the_onnx_backend_layout(onnx_output: Path, minilm_path: str) -> None:
    from sentence_transformers.backend.utils import backend_should_export
    from transformers import AutoConfig

    assert (onnx_output / "onnx" / "model.onnx").is_file() and not (onnx_output / "model.onnx").exists()
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"):
        assert (onnx_output / name).read_bytes() == (Path(minilm_path) / name).read_bytes()
    assert AutoConfig.from_pretrained(onnx_output).model_type == "bert"
    assert backend_should_export(onnx_output, True, {}, "model.onnx", "*.onnx", "ONNX") == (
        False, {"subfolder": "onnx", "file_name": "model.onnx"})
    # int8 through the base pipeline, against the base model's own sentence-transformers embeddings
    cosine = torch.nn.functional.cosine_similarity(_base_pipeline_on(onnx_output, minilm_path), _encode(minilm_path))
    print(f"MiniLM ONNX int8 through the base pipeline vs the base model: cosine mean {cosine.mean():.4f}")
    assert float(cosine.mean()) >= 0.98


ST_ONNX = r"""
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
folder, texts_file, out_file = sys.argv[1:4]
model = SentenceTransformer(folder, backend="onnx", device="cpu")
np.save(out_file, model.encode(json.load(open(texts_file))))
"""


@pytest.mark.skipif(importlib.util.find_spec("optimum.onnxruntime") is None and not ONNX_PYTHON,
                    reason="SentenceTransformer(DIR, backend='onnx') needs optimum-onnx, which cannot be installed "
                           "beside transformers 5; set HFCOMPRESS_ST_ONNX_PYTHON to an interpreter that has it")
def test_onnx_int8_output_encodes_with_the_onnx_backend(onnx_output: Path, minilm_path: str, tmp_path: Path) -> None:
    import numpy as np

    if importlib.util.find_spec("optimum.onnxruntime") is not None:
        got = _encode(onnx_output, backend="onnx")
    else:
        assert ONNX_PYTHON is not None
        (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([ONNX_PYTHON, "-c", ST_ONNX, str(onnx_output), str(tmp_path / "texts.json"),
                               str(tmp_path / "st.npy")], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = torch.from_numpy(np.load(tmp_path / "st.npy"))
    _check("ONNX int8 (backend='onnx')", got, onnx_output, minilm_path)
