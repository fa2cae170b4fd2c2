"""Meta-tests: every hook has a test and a documentation entry; plugins use only the public API.

Modelled on datasette's meta-tests. The per-hook tests below run the examples from
``docs/plugins.md`` themselves, so the documentation cannot drift from what works.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hfcompress import hookspecs
from hfcompress.plugin import __all__ as PUBLIC_API

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "hfcompress-layerdrop"

# The public surface a plugin may import from hfcompress (docs/plugins.md, "The five-minute version").
# Never imported at a plugin module's top level: `hfcompress plugins` imports every plugin.
HEAVY = {"torch", "transformers", "datasets", "onnx", "onnxruntime", "optimum", "accelerate", "evaluate",
         "safetensors", "numpy", "scipy", "sklearn", "matplotlib", "huggingface_hub", "gguf", "openvino", "nncf"}


def hook_names() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if hasattr(fn, f"{hookspecs.PROJECT}_spec"))


def doc_section(name: str) -> str:
    """The docs/plugins.md section of hook ``name``: from its heading to the next heading."""
    text = DOCS.read_text()
    match = re.search(rf"^### `{name}\(.*?$(.*?)(?=^##)", text, flags=re.M | re.S)
    assert match, f"docs/plugins.md has no '### `{name}(...)`' section"
    return match.group(0)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.fixture()
def doc_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import the first python block of a hook's doc section as a real module on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def load(hook: str) -> ModuleType:
        module = f"docs_example_{hook}"
        (tmp_path / f"{module}.py").write_text(python_blocks(doc_section(hook))[0])
        importlib.invalidate_caches()
        names.append(module)
        return importlib.import_module(module)

    yield load
    for name in names:
        sys.modules.pop(name, None)


def call_hook(registry: Any, hook: str) -> list[Any]:
    """Call ``hook`` through pluggy on every registered plugin; return everything registered."""
    found: list[Any] = []
    getattr(registry.pm.hook, hook)(register=found.append)
    return found


# -- one test per hook: call it, and run the documented example for real --------------------------


def test_hook_hfcompress_register_techniques(doc_example: Any, tmp_path: Path) -> None:
    from hfcompress.registry import extra_plugins
    from hfcompress.testing.conformance import check_technique

    module = doc_example("hfcompress_register_techniques")
    with extra_plugins(module, distribution="docs-example") as registry:
        registered = call_hook(registry, "hfcompress_register_techniques")
        assert module.MagnitudePruning in registered
        assert registry.techniques["magnitude-pruning"].plugin.distribution == "docs-example"
        assert {"distillation", "quantization"} <= set(registry.techniques)  # built-ins answer the same hook
        report = check_technique(
            module.MagnitudePruning,
            configs=[{"sparsity": 0.5}, {"sparsity": 0.9, "skip": []}],
            bad_configs=[{"sparsity": 1.0}, {"sparsity": 0.5, "skip": "lm_head"}, {"sparsity": 0.5, "sparse": 1}],
            tmp_path=tmp_path,
        )
    assert len(report.accepted()) == 6
    for case in report.accepted():
        assert abs(case.changes["sparsity"] - case.config["sparsity"]) < 0.01


def test_hook_hfcompress_register_evaluators(doc_example: Any, tmp_path: Path) -> None:
    import datasets

    from hfcompress.evaluation import evaluate_state
    from hfcompress.models import ModelSource, load_model
    from hfcompress.plugin import EvalSettings
    from hfcompress.registry import extra_plugins
    from hfcompress.testing.models import make_tiny_bert

    techniques = doc_example("hfcompress_register_techniques")
    module = doc_example("hfcompress_register_evaluators")
    with extra_plugins(techniques, module, distribution="docs-example") as registry:
        registered = call_hook(registry, "hfcompress_register_evaluators")
        assert module.WeightSparsity in registered
        assert {"fidelity", "size", "speed", "task-metrics"} <= {cls.name for cls in registered}
        path = make_tiny_bert(tmp_path / "tiny-bert")
        state = load_model(ModelSource(str(path), str(path)), "feature-extraction")
        data = datasets.Dataset.from_dict({"text": ["a short sentence", "another one"]})
        settings = EvalSettings(evaluators=["weight-sparsity"])
        base, _ = evaluate_state(state, data, settings)
        assert base["metrics"] == {"weight_sparsity": 0.0}  # random init: no exact zeros
        result = techniques.MagnitudePruning().apply(state, techniques.MagnitudePruningConfig(sparsity=0.5), None)
        pruned, _ = evaluate_state(result.state, data, settings)
    # the evaluator counts exactly what the technique zeroed (BertModel has no skipped module)
    assert pruned["metrics"]["weight_sparsity"] == pytest.approx(result.changes["sparsity"], abs=1e-6)
    assert 0.49 < pruned["metrics"]["weight_sparsity"] < 0.51


def test_hook_hfcompress_register_data_sources(doc_example: Any) -> None:
    from hfcompress.data import DataConfig, load_data
    from hfcompress.errors import BadInputError
    from hfcompress.registry import extra_plugins

    module = doc_example("hfcompress_register_data_sources")
    with extra_plugins(module, distribution="docs-example") as registry:
        registered = call_hook(registry, "hfcompress_register_data_sources")
        assert module.PydocSource in registered and registry.data_sources["pydoc"].cls is module.PydocSource
        splits = load_data(DataConfig.model_validate("pydoc:json"))
        again = load_data(DataConfig.model_validate("pydoc:json"))
        with pytest.raises(BadInputError, match="no module named 'no_such_module_xyz'"):
            load_data(DataConfig.model_validate("pydoc:no_such_module_xyz"))
    assert len(splits.train) > 10 and len(splits.eval) > 0
    assert all(len(t) > 40 for t in splits.train["text"])
    assert splits.fingerprint == again.fingerprint  # deterministic
    assert not set(splits.train["text"]) & set(splits.eval["text"])


# -- the meta-tests -------------------------------------------------------------------------------


def test_builtin_evaluators_declare_exactly_what_they_return(tmp_path: Path) -> None:
    """Every name a built-in evaluator returns is declared (the card and the gate read its label and
    direction from the declaration), and every declaration is returned for some model and data."""
    import datasets

    from hfcompress.artifact import load_state
    from hfcompress.plugin import EvalContext, EvalSettings
    from hfcompress.registry import get_registry
    from hfcompress.testing.models import make_tiny_bert, make_tiny_llama

    registry = get_registry()
    builtins = sorted(n for n, r in registry.evaluators.items() if r.plugin.distribution == "hfcompress")
    assert builtins == ["fidelity", "generation", "size", "speed", "sts", "task-metrics", "transfer-probes"]
    settings = EvalSettings(batch_size=4, sequence_length=16, warmup=0, repeats=1)
    texts = [f"sentence number {i} is {'good' if i % 2 else 'bad'}" for i in range(12)]
    # binary labels give f1, three classes f1_macro; an encoder gives the probe, an LM perplexity
    cases = [
        (make_tiny_bert(tmp_path / "encoder"), [i % 2 for i in range(12)]),
        (make_tiny_bert(tmp_path / "binary", task="text-classification"), [i % 2 for i in range(12)]),
        (make_tiny_bert(tmp_path / "three", task="text-classification", num_labels=3), [i % 3 for i in range(12)]),
        (make_tiny_llama(tmp_path / "lm"), [i % 2 for i in range(12)]),
    ]
    produced: dict[str, set[str]] = {name: set() for name in builtins}
    for i, (folder, labels) in enumerate(cases):
        data = datasets.Dataset.from_dict({"text": texts, "label": labels})
        base = EvalContext(state=load_state(folder), data=data, settings=settings, artifact_dir=folder)
        compressed = EvalContext(state=load_state(folder), data=data, settings=settings, artifact_dir=folder,
                                 reference=base)
        for ctx in (base, compressed):
            for name in builtins:
                if name == "size" and (i or ctx is compressed):  # its names do not depend on the model; ~5 s a run
                    continue
                evaluator = registry.evaluator(name)
                if evaluator.applies_to(ctx):
                    produced[name] |= set(evaluator.evaluate(ctx))
    for name in builtins:
        declared = [m.name for m in registry.evaluator(name).declared_metrics(settings)]
        assert len(declared) == len(set(declared)), f"{name} declares a metric twice: {declared}"
        assert produced[name] <= set(declared), f"{name} returns undeclared metrics {produced[name] - set(declared)}"
        assert set(declared) <= produced[name], f"{name} declares metrics it never returns {set(declared) - produced[name]}"


def test_there_are_hooks() -> None:
    assert hook_names() == ["hfcompress_register_data_sources", "hfcompress_register_evaluators",
                            "hfcompress_register_techniques"]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test_that_calls_it(hook: str) -> None:
    test = globals().get(f"test_hook_{hook}")
    assert test is not None, f"hook {hook} has no test: add test_hook_{hook} to {__file__}"
    assert f'call_hook(registry, "{hook}")' in inspect.getsource(test), f"test_hook_{hook} does not call the hook"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented_with_signature_and_example(hook: str) -> None:
    signature = inspect.signature(getattr(hookspecs, hook))
    params = ", ".join(signature.parameters)
    section = doc_section(hook)
    assert section.startswith(f"### `{hook}({params})`"), f"docs heading must show the signature {hook}({params})"
    blocks = python_blocks(section)
    assert blocks and "@hookimpl" in blocks[0] and f"def {hook}(" in blocks[0], \
        f"the {hook} section needs a complete python example implementing the hook"


def test_public_api_is_documented() -> None:
    text = DOCS.read_text()
    missing = [name for name in PUBLIC_API if f"`{name}`" not in text]
    assert not missing, f"names in hfcompress.plugin.__all__ not documented in docs/plugins.md: {missing}"


def test_docs_python_blocks_compile() -> None:
    blocks = python_blocks(DOCS.read_text())
    assert len(blocks) >= 5
    for block in blocks:
        compile(block.replace("    ...\n", "    pass\n"), str(DOCS), "exec")


# -- built-in plugins use only the public API ------------------------------------------------------


def plugin_files() -> list[Path]:
    files = sorted((ROOT / "plugins").rglob("*.py")) + sorted((EXAMPLE / "src").rglob("*.py"))
    assert files
    return files


def hfcompress_imports(tree: ast.AST) -> list[tuple[int, str, str]]:
    """Every ``hfcompress...`` import anywhere in the file (also inside functions): line, module, name."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, "*") for alias in node.names if alias.name.split(".")[0] == "hfcompress"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hfcompress":
            out += [(node.lineno, str(node.module), alias.name) for alias in node.names]
    return out


def _allowed(module: str, name: str) -> bool:
    import hfcompress.errors
    import hfcompress.plugin

    if module == "hfcompress.plugin":
        return name in hfcompress.plugin.__all__
    return module == "hfcompress.errors" and name in vars(hfcompress.errors)


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [f"line {line}: from {module} import {name}" for line, module, name in hfcompress_imports(tree)
           if not _allowed(module, name)]
    assert not bad, (f"{path.relative_to(ROOT)} imports names outside the public plugin API: {bad}; plugins may "
                     "import only names in hfcompress.plugin.__all__ (or ask for a public helper)")


def entry_point_modules() -> dict[str, Path]:
    """Entry-point module → source file, from this project's and the example's pyproject.toml."""
    out = {}
    for pyproject, package_dirs in ((ROOT / "pyproject.toml", {"hfcompress_plugins": ROOT / "plugins"}),
                                    (EXAMPLE / "pyproject.toml", {"hfcompress_layerdrop": EXAMPLE / "src" / "hfcompress_layerdrop"})):
        group = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["hfcompress"]
        for target in group.values():
            module = target.split(":")[0]
            package, _, rest = module.partition(".")
            base = package_dirs[package]
            # a plugin module is either a file (plugins/vader.py) or a package (plugins/head_pruning/)
            folder = base / rest.replace(".", "/")
            out[module] = folder.with_suffix(".py") if rest and not folder.is_dir() else folder / "__init__.py"
    return out


def top_level_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Imports executed at import time: module body, outside ``if TYPE_CHECKING:`` blocks."""
    def walk(body: list[ast.stmt]) -> Iterator[tuple[int, str]]:
        for node in body:
            if isinstance(node, ast.Import):
                yield from ((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.lineno, node.module
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    yield from walk(part)
    yield from walk(tree.body)


@pytest.mark.parametrize("module", sorted(entry_point_modules()))
def test_entry_point_modules_import_nothing_heavy_at_top_level(module: str) -> None:
    path = entry_point_modules()[module]
    assert path.is_file(), f"entry point {module} has no source file {path}"
    heavy = [f"line {line}: import {name}" for line, name in top_level_imports(ast.parse(path.read_text()))
             if name.split(".")[0] in HEAVY]
    assert not heavy, f"{path.relative_to(ROOT)} imports heavy libraries at import time: {heavy}; import them inside functions"


def test_entry_point_modules_stay_light_when_imported() -> None:
    """The AST test misses transitive imports; import each built-in plugin in a fresh interpreter."""
    modules = sorted(m for m in entry_point_modules() if m.startswith("hfcompress_plugins"))
    code = ("import importlib, json, sys\nout = {}\nheavy = set(sys.argv[1].split(','))\n"
            "for m in sys.argv[2:]:\n    importlib.import_module(m)\n"
            "    out[m] = sorted(h for h in heavy if h in sys.modules)\nprint(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code, ",".join(sorted(HEAVY)), *modules],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded == {m: [] for m in modules}, f"heavy modules present after importing each plugin (cumulative): {loaded}"
