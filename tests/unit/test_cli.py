"""The console script: help, plugins listing, exit codes for bad input (before any work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = [sys.executable, "-m", "hfcompress"]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIN, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)


def test_help_exits_zero() -> None:
    proc = run("--help")
    assert proc.returncode == 0 and "run" in proc.stdout and "plugins" in proc.stdout


def test_no_command_is_usage_error() -> None:
    assert run().returncode == 2


def test_plugins_json_lists_builtins_with_distribution() -> None:
    proc = run("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"techniques", "evaluators", "data_sources"}
    techniques = {row["name"]: row for row in data["techniques"]}
    for name in ("head-pruning", "distillation", "quantization"):
        assert techniques[name]["distribution"] == "hfcompress", name
        assert techniques[name]["version"] and techniques[name]["summary"]
    assert {row["name"] for row in data["data_sources"]} >= {"vader"}
    assert data["broken"] == []


def test_misspelled_field_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: builtin:all-MiniLM-L6-v2\nsteps:\n  - head-pruning: {ratoi: 0.33}\n")
    proc = run("run", str(recipe), "--output", str(tmp_path / "out"), "--json")
    assert proc.returncode == 2
    assert "'ratoi'" in proc.stderr and "ratio" in proc.stderr and "steps[0] (head-pruning)" in proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 2
    assert not (tmp_path / "out").exists()


def test_unknown_technique_exits_2_and_lists_available(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: builtin:all-MiniLM-L6-v2\nsteps:\n  - sparsify-magic: {}\n")
    proc = run("run", str(recipe), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "unknown technique 'sparsify-magic'" in proc.stderr
    for name in ("distillation", "head-pruning", "quantization"):
        assert name in proc.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--model", "/no/such/folder"], "no such folder"),
    (["run", "--data", "vader:films"], "unknown subset 'films'"),
    (["run", "--max-drop", "accuracy"], "METRIC=VALUE"),
    (["run", "--device", "cuda"], "no CUDA GPU"),
])
def test_bad_input_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    proc = run(*args, "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_on_missing_folder_exits_2(tmp_path: Path) -> None:
    proc = run("evaluate", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr
