"""End to end through the console script on the packaged MiniLM and real vader:movie data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = """\
model: builtin:all-MiniLM-L6-v2
data: vader:movie
steps:
  - head-pruning: {ratio: 0.25, importance: magnitude}
  - quantization: {backend: onnxruntime}
evaluate: {max_samples: 64, repeats: 3, warmup: 1}
"""


@pytest.mark.integration
def test_cli_run_prune_then_onnx_int8(tmp_path: Path, hf_cache: str) -> None:
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "hfcompress", "run", "recipe.yaml", "--output", str(out), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HFCOMPRESS_CACHE": hf_cache})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/2] head-pruning" in proc.stderr and "[2/2] quantization" in proc.stderr  # progress shown
    results = json.loads(proc.stdout)
    assert results["base"]["num_parameters"] == 22_713_216
    assert results["base"]["size_bytes"] > 85e6
    assert results["compressed"]["size_bytes"] < 25e6  # 25% of heads gone, int8 weights
    assert results["compressed"]["metrics"]["fidelity_cosine_mean"] > 0.8
    assert [s["technique"] for s in results["steps"]] == ["head-pruning", "quantization"]
    assert results["environment"]["threads"] == 1 and results["data"]["evaluated_samples"] == 64
    # MiniLM is a sentence-transformers model: its pipeline files stay, and the graph sits where
    # SentenceTransformer(out, backend="onnx") looks for it
    for name in ("config.json", "onnx/model.onnx", "tokenizer.json", "README.md", "results.json", "hfcompress.yaml",
                 "modules.json", "1_Pooling/config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["compressed"] == results["compressed"]
