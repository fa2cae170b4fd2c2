"""The console script: help, plugins listing, exit codes for bad input (before any work)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hfcompress.testing.distributions import make_distribution

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
    assert data["broken"] == [] and data["conflicts"] == []
    formats = {name: (techniques[name]["accepts_formats"], techniques[name]["produces_formats"])
               for name in ("head-pruning", "distillation", "quantization")}
    assert formats == {"head-pruning": (["pytorch"], ["pytorch"]), "distillation": (["pytorch"], ["pytorch"]),
                       "quantization": (["pytorch"], ["pytorch", "quanto", "onnx", "openvino", "onnx-genai"])}


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


@pytest.mark.parametrize("where", ["recipe", "--max-drop"])
def test_gate_on_a_metric_no_evaluator_produces_exits_2_before_work(where: str, tiny_bert_dir: Path,
                                                                     tmp_path: Path) -> None:
    import yaml

    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"review {i}", "label": i % 2}) for i in range(40)))
    recipe: dict[str, object] = {"model": str(tiny_bert_dir), "data": str(data), "steps": [],
                                 "evaluate": {"evaluators": ["task-metrics", "speed"]}}
    extra: list[str] = []
    if where == "recipe":
        recipe["gate"] = {"max_drop": {"no_such_metric": 0.1}}
    else:
        extra = ["--max-drop", "no_such_metric=0.1"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    proc = run("run", str(tmp_path / "recipe.yaml"), "--output", str(out), "--no-cache", *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "gate.max_drop.no_such_metric" in proc.stderr and "'no_such_metric'" in proc.stderr
    # the evaluators that will run, with what they declare: enough to fix the name
    assert "task-metrics: accuracy, f1" in proc.stderr and "speed: latency_ms" in proc.stderr
    assert "loading" not in proc.stderr and "evaluating" not in proc.stderr  # no weights loaded, nothing measured
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "reviews.jsonl",
                                                                              "tiny-bert"]


# -- plugin authors' mistakes, as the CLI reports them ----------------------------------------

TECHNIQUE = """
from hfcompress.plugin import Technique, hookimpl

class {cls}(Technique):
    name = "{name}"
    summary = "{summary}"

@hookimpl
def {hook}(register):
    register({cls}{call})
"""


def _plugin(cls: str, name: str, hook: str = "hfcompress_register_techniques", call: str = "",
            summary: str = "a third-party technique") -> str:
    return TECHNIQUE.format(cls=cls, name=name, hook=hook, call=call, summary=summary)


@pytest.fixture()
def mistakes(tmp_path: Path) -> Path:
    """One folder of installed-looking distributions: a misspelled hook, an instance passed to
    register(), two distributions claiming the same technique name, and a healthy one."""
    site = tmp_path / "site"
    make_distribution(site, "hfcompress-typo", {"typo": "hfc_cli_typo"},
                      {"hfc_cli_typo": _plugin("Typo", "typo", hook="hfcompress_register_technique")})
    make_distribution(site, "hfcompress-oops", {"oops": "hfc_cli_oops"},
                      {"hfc_cli_oops": _plugin("Oops", "oops", call="()")})
    make_distribution(site, "hfcompress-first", {"first": "hfc_cli_first"},
                      {"hfc_cli_first": _plugin("Same", "same", summary="the first one")}, version="1.2")
    make_distribution(site, "hfcompress-second", {"second": "hfc_cli_second"},
                      {"hfc_cli_second": _plugin("Same", "same", summary="the second one")}, version="0.4")
    make_distribution(site, "hfcompress-healthy", {"healthy": "hfc_cli_healthy"},
                      {"hfc_cli_healthy": _plugin("Healthy", "healthy")})
    return site


def test_plugins_lists_broken_and_conflicting_plugins(mistakes: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(mistakes), os.environ.get("PYTHONPATH")]))}
    proc = run("plugins", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "broken plugin typo (hfcompress-typo 1.0): 'hfcompress_register_technique' is not an hfcompress hook" \
        in proc.stderr
    assert "did you mean 'hfcompress_register_techniques'?" in proc.stderr
    assert "broken plugin oops (hfcompress-oops 1.0): register() takes the class, not an instance: " \
        "write register(Oops), not register(Oops())" in proc.stderr
    assert "conflict: technique 'same' is registered by 2 plugins: distribution 'hfcompress-first' 1.2" in proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("  same ")}
    assert set(lines) == {"hfcompress-first", "hfcompress-second"}
    assert all("CONFLICT" in line for line in lines.values())
    assert any(line.split()[:2] == ["healthy", "hfcompress-healthy"] for line in proc.stdout.splitlines())
    quantization = next(line for line in proc.stdout.splitlines() if line.startswith("  quantization "))
    assert quantization.endswith("[pytorch -> pytorch, quanto, onnx, openvino, onnx-genai]")

    data = json.loads(run("plugins", "--json", env=env).stdout)
    assert {row["name"] for row in data["broken"]} == {"typo", "oops"}
    assert [(r["distribution"], r["conflict"]) for r in data["techniques"] if r["name"] == "same"] == [
        ("hfcompress-first", True), ("hfcompress-second", True)]
    assert [c["name"] for c in data["conflicts"]] == ["same"]


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger, process-wide: undo it after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture()
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next get_registry() rediscovers entry points (the test's distributions included)."""
    import hfcompress.registry

    monkeypatch.setattr(hfcompress.registry, "_REGISTRY", None)


def test_run_fails_only_for_recipes_using_a_conflicting_name(
        mistakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None,
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    from hfcompress.cli import main

    monkeypatch.syspath_prepend(str(mistakes))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: builtin:all-MiniLM-L6-v2\nsteps:\n  - same: {}\n")
    assert main(["run", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad input: technique 'same' is registered by 2 plugins" in err
    assert "'hfcompress-first' 1.2" in err and "'hfcompress-second' 0.4" in err
    assert "(pip uninstall hfcompress-first or pip uninstall hfcompress-second)" in err
    assert "HFCOMPRESS_BLOCK_PLUGINS=first or HFCOMPRESS_BLOCK_PLUGINS=second" in err
    assert not (tmp_path / "out").exists()
    # A recipe that does not use the name is validated as usual: it gets its own error, not the clash.
    recipe.write_text("model: builtin:all-MiniLM-L6-v2\nsteps:\n  - healthy: {bogus: 1}\n")
    assert main(["run", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "steps[0] (healthy): unknown field 'bogus'" in err and "same" not in err


FAILING = """
from hfcompress.plugin import BadInputError, Technique, TechniqueConfig, hookimpl

class LowRankConfig(TechniqueConfig):
    rank: int = 99
    fail_as: str = "value-error"

class LowRank(Technique[LowRankConfig]):
    name = "low-rank"
    summary = "factorize Linear layers (always fails, for tests)"
    Config = LowRankConfig

    def apply(self, state, config, ctx):
        if config.fail_as == "bad-input":
            raise BadInputError(f"rank {config.rank} is larger than the hidden size")
        raise ValueError(f"rank {config.rank} exceeds the matrix size")

@hookimpl
def hfcompress_register_techniques(register):
    register(LowRank)
"""


@pytest.fixture()
def failing_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None,
                   tiny_bert_dir: Path) -> Path:
    """A recipe whose one step is a third-party technique whose apply raises."""
    make_distribution(tmp_path / "site", "hfcompress-lowrank", {"low-rank": "hfc_cli_lowrank"},
                      {"hfc_cli_lowrank": FAILING}, version="0.1.0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HFCOMPRESS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"sentence number {i} of the test data"}) for i in range(40)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_bert_dir}\ndata: {data}\ndevice: cpu\nsteps:\n  - low-rank: {{}}\n")
    return recipe


def test_failing_apply_names_technique_and_distribution(
        failing_plugin: Path, tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    from hfcompress.cli import main

    out = str(tmp_path / "out")
    assert main(["run", str(failing_plugin), "--output", out, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert ("hfcompress: error: steps[0]: technique 'low-rank' (distribution hfcompress-lowrank 0.1.0) failed in "
            "apply: ValueError: rank 99 exceeds the matrix size") in err
    assert "Traceback" not in err and "--verbose" in err

    assert main(["run", str(failing_plugin), "--output", out, "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "failed in apply: ValueError" in err
    assert "Traceback" in err and 'raise ValueError(f"rank {config.rank} exceeds the matrix size")' in err
    assert "The above exception was the direct cause" in err  # the plugin's exception is chained


def test_failing_apply_with_our_error_keeps_its_exit_code(
        failing_plugin: Path, tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    from hfcompress.cli import main

    failing_plugin.write_text(failing_plugin.read_text().replace("low-rank: {}", "low-rank: {fail_as: bad-input}"))
    assert main(["run", str(failing_plugin), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hfcompress: bad input: steps[0] (low-rank): rank 99 is larger than the hidden size" in err


def test_logging_shows_our_progress_and_hides_library_chatter(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    from hfcompress.pipeline import configure_logging

    def emit() -> str:
        logging.getLogger("hfcompress").info("loading the model")
        logging.getLogger("hfcompress_plugins.quantization").info("quantization: timing candidates")
        logging.getLogger("hfcompress_layerdrop").info("layer-drop: keeping 4 layers")
        logging.info("get_tensor_type returns DefaultTensorType")  # onnxruntime.quantization, on the root logger
        logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
        logging.getLogger("some.library").warning("disk almost full")
        return capsys.readouterr().err

    configure_logging()
    err = emit()
    assert "hfcompress: loading the model" in err
    assert "hfcompress: quantization: timing candidates" in err and "hfcompress: layer-drop: keeping 4 layers" in err
    assert "get_tensor_type" not in err and "fontManager" not in err
    assert "some.library: warning: disk almost full" in err

    configure_logging(progress=False)  # --quiet
    err = emit()
    assert "loading the model" not in err and "get_tensor_type" not in err and "disk almost full" in err

    configure_logging(verbose=True)  # --verbose: everything
    err = emit()
    assert "hfcompress: loading the model" in err
    assert "root: info: get_tensor_type returns DefaultTensorType" in err
    assert "matplotlib.font_manager: info: generated new fontManager" in err
    assert err.count("loading the model") == 1  # reconfiguring replaced the handler, did not add one


def test_json_stdout_holds_only_the_document_when_a_library_prints(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """NNCF draws progress bars on stdout; with --json they must not break the document."""
    from hfcompress import cli

    def noisy(args: Any) -> int:
        print("Statistics collection ━━━━ 100%")
        cli._emit_json({"ok": True})
        return 0

    monkeypatch.setitem(cli.COMMANDS, "plugins", noisy)
    assert cli.main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": True}
    assert "Statistics collection" in err
    assert cli.main(["plugins"]) == 0  # without --json, stdout is left alone
    assert "Statistics collection" in capsys.readouterr().out
