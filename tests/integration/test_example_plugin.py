"""The example third-party plugin (examples/hfcompress-layerdrop), installed with pip like a user would.

The plugin is installed with ``pip install -e`` into a throwaway virtual environment layered over
the project's: ``venv --without-pip`` plus a ``.pth`` that adds the project's site-packages, and
the project's pip driving it (``pip --python``). That takes seconds, unlike a fresh venv with
torch, and, unlike installing into the project venv, it cannot leak a third-party plugin into
other test runs sharing that venv, or be left behind when a test run is killed. The plugin must
then appear in ``hfcompress plugins --json`` under its own distribution name and work in a
recipe through the CLI, next to a built-in technique.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfcompress.testing.models import make_tiny_bert
from hfcompress.testing.samples import write_jsonl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hfcompress-layerdrop"
DISTRIBUTION = "hfcompress-layerdrop"


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Python whose environment is the project's plus ``pip install -e examples/hfcompress-layerdrop``."""
    venv = tmp_path_factory.mktemp("plugin-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir (not a bare path line) so the project's own .pth files run too: hfcompress is
    # an editable install found through one of them.
    (Path(purelib) / "_project_overlay.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    proc = _pip(python, "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield python
    proc = _pip(python, "uninstall", "-y", DISTRIBUTION)
    assert proc.returncode == 0, proc.stderr


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HFCOMPRESS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _hfcompress(python: Path, args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "hfcompress", *args], capture_output=True, text=True,
                          env=_env(cache), cwd=cwd, timeout=1800)


def test_pip_installed_plugin_is_listed_under_its_distribution(plugin_python: Path, tmp_path: Path) -> None:
    proc = _hfcompress(plugin_python, ["plugins", "--json"], tmp_path / "cache", tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    rows = {row["name"]: row for row in listing["techniques"]}
    assert rows["layer-drop"] == {
        "name": "layer-drop",
        "distribution": DISTRIBUTION,
        "version": "0.1.0",
        "summary": "remove whole transformer layers, by index or the least important by block influence (BERT, Llama)",
        "accepts_formats": ["pytorch"],
        "produces_formats": ["pytorch"],
        "conflict": False,
    }
    assert rows["quantization"]["distribution"] == "hfcompress"  # built-ins are listed the same way
    assert listing["broken"] == []


def _run_recipe(python: Path, tmp_path: Path, recipe: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "out"
    proc = _hfcompress(python, ["run", "recipe.yaml", "--output", str(out), "--json", "--no-cache", "--quiet"],
                       tmp_path / "cache", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), out


def _layer_params(model_dir: Path) -> tuple[int, list[int]]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    return model.num_parameters(), [sum(p.numel() for p in layer.parameters()) for layer in model.encoder.layer]


def _assert_bf16_checkpoint(out: Path) -> None:
    import torch
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert dtypes == {"BF16"}, dtypes
    assert json.loads((out / "config.json").read_text())["dtype"] == str(torch.bfloat16).removeprefix("torch.")


def test_recipe_with_plugin_and_builtin_on_tiny_bert(plugin_python: Path, tmp_path: Path) -> None:
    """layer-drop (third party) then quantization (built in), through the CLI, on a tiny BERT."""
    model_dir = make_tiny_bert(tmp_path / "tiny-bert")
    total, per_layer = _layer_params(model_dir)
    recipe = {
        "model": str(model_dir),
        "data": str(write_jsonl(tmp_path / "sample.jsonl")),
        "steps": [{"layer-drop": {"keep": 1, "max_samples": 16, "sequence_length": 32}},
                  {"quantization": {"backend": "torch", "dtype": "bf16", "calibration_samples": 8,
                                    "sequence_length": 32}}],
        # fidelity only: the size/speed evaluators start subprocesses and time runs, which the slow
        # MiniLM test below covers; here the parameter count is checked on the reloaded folder.
        "evaluate": {"evaluators": ["fidelity"], "max_samples": 8, "batch_size": 8, "sequence_length": 32},
    }
    results, out = _run_recipe(plugin_python, tmp_path, recipe)

    drop, quant = results["steps"]
    assert (drop["technique"], quant["technique"]) == ("layer-drop", "quantization")
    assert (drop["changes"]["layers_before"], drop["changes"]["layers_after"]) == (2, 1)
    [dropped] = drop["changes"]["dropped"]
    assert drop["changes"]["parameters_after"] == total - per_layer[dropped]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    reloaded_total, reloaded_layers = _layer_params(out)
    assert (reloaded_total, len(reloaded_layers)) == (total - per_layer[dropped], 1)
    assert 0.0 < results["compressed"]["metrics"]["fidelity_cosine_mean"] <= 1.0
    _assert_bf16_checkpoint(out)


@pytest.mark.slow
def test_recipe_with_plugin_and_builtin_on_minilm(plugin_python: Path, tmp_path: Path, minilm_path: str) -> None:
    """The real all-MiniLM-L6-v2: keep 4 of 6 layers chosen by block influence, then bf16."""
    total, per_layer = _layer_params(Path(minilm_path))
    recipe = {
        "model": "builtin:all-MiniLM-L6-v2",
        "data": str(write_jsonl(tmp_path / "sample.jsonl")),
        "steps": [{"layer-drop": {"keep": 4, "max_samples": 32, "sequence_length": 64}},
                  {"quantization": {"backend": "torch", "dtype": "bf16", "calibration_samples": 16,
                                    "sequence_length": 64}}],
        "evaluate": {"max_samples": 16, "batch_size": 8, "sequence_length": 32, "warmup": 1, "repeats": 2},
    }
    results, out = _run_recipe(plugin_python, tmp_path, recipe)
    changes = results["steps"][0]["changes"]
    assert len(changes["dropped"]) == 2 and changes["layers_after"] == 4
    scores = changes["block_influence"]
    # the dropped layers are exactly the two with the lowest block influence
    assert sorted(changes["dropped"]) == sorted(sorted(range(6), key=lambda i: scores[str(i)])[:2])
    expected = total - sum(per_layer[i] for i in changes["dropped"])
    assert total == 22_713_216
    assert results["compressed"]["num_parameters"] == expected == _layer_params(out)[0]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    _assert_bf16_checkpoint(out)
    # two of six layers gone without recovery training: still clearly the same embedding space
    assert 0.5 < results["compressed"]["metrics"]["fidelity_cosine_mean"] < 1.0


@pytest.mark.slow
def test_example_plugin_own_test_suite_passes(plugin_python: Path, tmp_path: Path) -> None:
    """The example's tests (conformance kit included) pass against the pip-installed plugin."""
    proc = subprocess.run([str(plugin_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                          capture_output=True, text=True, env=_env(tmp_path / "cache"), cwd=EXAMPLE, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
