"""The recipe's `search` section (issue 17): parsing, bad knobs, constraints, the choice, resume, workers.

Trials run a test technique, `knob`, whose config carries the numbers its evaluator reports
(`knob_cost`, lower is better; `knob_quality`, scaled down by short training), so the right answer
of every search here is known in advance. Each computation (not a cache hit) appends a line to
$KNOB_LOG, which tells whether a trial was computed twice, across processes too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfcompress.errors import BadInputError
from hfcompress.recipe import Recipe
from hfcompress.registry import extra_plugins

PLUGIN = textwrap.dedent('''
    """A technique whose config is its own score, and the evaluator that reads it (tests only)."""
    import json
    import os
    import time

    from pydantic import Field

    from hfcompress.plugin import Evaluator, Metric, StepResult, Technique, TechniqueConfig, hookimpl


    class KnobConfig(TechniqueConfig):
        cost: float = Field(1.0, gt=0)
        quality: float = Field(1.0, ge=0, le=1)
        max_steps: int = Field(100, gt=0)
        sleep: float = 0.0


    class KnobTechnique(Technique[KnobConfig]):
        name = "knob"
        summary = "records its config; the knob-metrics evaluator reports it (tests)"
        Config = KnobConfig

        def apply(self, state, config, ctx):
            time.sleep(config.sleep)
            log = os.environ.get("KNOB_LOG")
            if log:
                with open(log, "a") as handle:
                    handle.write(json.dumps({"pid": os.getpid(), **config.model_dump()}) + "\\n")
            state.info = {**state.info, "knob": config.model_dump()}
            return StepResult(state, {"cost": config.cost})


    class KnobMetrics(Evaluator):
        name = "knob-metrics"
        metrics = (Metric("knob_cost", label="Cost", higher_is_better=False),
                   Metric("knob_quality", label="Quality", role="quality"))

        def evaluate(self, ctx):
            knob = ctx.state.info.get("knob")
            if knob is None:
                return {"knob_cost": 10.0, "knob_quality": 1.0}
            return {"knob_cost": knob["cost"], "knob_quality": knob["quality"] * min(1.0, knob["max_steps"] / 100)}


    @hookimpl
    def hfcompress_register_techniques(register):
        register(KnobTechnique)


    @hookimpl
    def hfcompress_register_evaluators(register):
        register(KnobMetrics)
''')

RUNNER = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    import knob_plugin
    from hfcompress.cli import main
    from hfcompress.registry import extra_plugins
    with extra_plugins(knob_plugin):
        code = main(sys.argv[2:])
    sys.exit(code)
''')


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "knob_plugin.py").write_text(PLUGIN)
    (folder / "runner.py").write_text(RUNNER)
    return folder


@pytest.fixture(scope="module")
def knob_plugin(plugin_dir: Path) -> Any:
    spec = importlib.util.spec_from_file_location("knob_plugin", plugin_dir / "knob_plugin.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["knob_plugin"] = module  # the step cache hashes a technique's source file
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hfcompress.testing.models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"sentence number {i} of the search test data", "label": i % 2})
                              for i in range(160)))
    return str(path)


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, knob_plugin: Any):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HFCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KNOB_LOG", str(tmp_path / "knob.log"))
    with extra_plugins(knob_plugin):
        yield


def computed(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "knob.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def recipe(model: Path, data: str, search: dict[str, Any], **knob: Any) -> dict[str, Any]:
    return {
        "model": str(model), "data": data, "steps": [{"knob": {"max_steps": 100, **knob}}],
        "evaluate": {"evaluators": ["knob-metrics", "speed"], "batch_size": 2, "sequence_length": 8,
                     "warmup": 0, "repeats": 1, "max_samples": 64},
        "search": search,
    }


GRID: dict[str, list[Any]] = {"knob.cost": [3, 1, 2, 4], "knob.quality": [0.5, 0.95]}
MIN_QUALITY = {"min": {"knob_quality": 0.9}}


# -- parsing ------------------------------------------------------------------------------------------


def test_search_section_parses_resolves_and_round_trips(tiny: Path, data_file: str, tmp_path: Path) -> None:
    from hfcompress.recipe_search.config import resolve_knobs

    r = Recipe.from_dict(recipe(tiny, data_file, {
        "knobs": {"knob.cost": {"low": 0.5, "high": 4.0}, "knob.max_steps": {"low": 20, "high": 100, "step": 20},
                  "knob.quality": [0.5, 0.95]},
        "objective": ["knob_cost", "latency_ms"], "constraints": MIN_QUALITY, "max_trials": 6, "max_minutes": 5,
    }))
    knobs = {k.name: k for k in resolve_knobs(r)}
    assert knobs["knob.cost"].range is not None and not knobs["knob.cost"].range.is_int
    assert knobs["knob.max_steps"].range is not None and knobs["knob.max_steps"].range.is_int
    assert knobs["knob.quality"].choices == (0.5, 0.95)
    assert {k.index for k in knobs.values()} == {0} and {k.field for k in knobs.values()} == {"cost", "max_steps", "quality"}
    assert r.search is not None and r.search.objectives == ["knob_cost", "latency_ms"]
    r.dump(tmp_path / "r.yaml")
    assert Recipe.load(tmp_path / "r.yaml") == r


@pytest.mark.parametrize(("knobs", "needles"), [
    ({"knob-x.cost": [1, 2]}, ["search.knobs.knob-x.cost", "no step 'knob-x'", "did you mean 'knob'", "steps[0] knob"]),
    ({"knob.cots": [1, 2]}, ["search.knobs.knob.cots", "steps[0] (knob) has no field 'cots'", "did you mean 'cost'",
                             "cost, quality, max_steps"]),
    ({"knob.cost": [1, -2]}, ["search.knobs.knob.cost", "-2", "steps[0] (knob).cost", "greater than 0"]),
    ({"knob.quality": {"low": 0.5, "high": 2}}, ["search.knobs.knob.quality", "2", "less than or equal to 1"]),
    ({"knob.cost": {"low": 3, "high": 1}}, ["search.knobs.knob.cost", "low (3) must be below high (1)"]),
    ({"knob.cost": 2}, ["search.knobs.knob.cost", "a list of values", "a range"]),
    ({"cost": [1]}, ["search.knobs.cost", "STEP.FIELD"]),
    ({"steps[3].cost": [1]}, ["no steps[3]"]),
    ({}, ["search.knobs: give at least one knob"]),
    ({"knob.enabled": [1, 0]}, ["search.knobs.knob.enabled", "switches steps[0] (knob) on or off", "[true, false]"]),
    ({"knob.enabled": {"low": 0, "high": 1}}, ["search.knobs.knob.enabled", "a list of booleans"]),
    ({"knob.enabled": [True, False], "steps[0].enabled": [False]},
     ["search.knobs.steps[0].enabled", "switches the same step as search.knobs.knob.enabled"]),
])
def test_bad_knobs_name_the_step_and_the_field(tiny: Path, data_file: str, knobs: dict[str, Any],
                                               needles: list[str]) -> None:
    with pytest.raises(BadInputError) as info:
        Recipe.from_dict(recipe(tiny, data_file, {"knobs": knobs, "objective": "knob_cost", "max_trials": 2}))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


@pytest.mark.parametrize(("requires", "needles"), [
    ({"knob": "knob"}, ["search.requires.knob", "cannot require itself"]),
    ({"pruning": "knob"}, ["search.requires.pruning", "no step 'pruning'", "steps[0] knob"]),
    ({"knob": ["steps[4]"]}, ["search.requires.knob", "no step 'steps[4]'"]),
])
def test_bad_requires_name_the_step(tiny: Path, data_file: str, requires: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(BadInputError) as info:
        Recipe.from_dict(recipe(tiny, data_file, {"knobs": {"knob.enabled": [True, False]}, "requires": requires,
                                                  "objective": "knob_cost", "max_trials": 2}))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_bad_search_sections_exit_2_before_any_work(tiny: Path, data_file: str, tmp_path: Path) -> None:
    from hfcompress.cli import main

    cases = [
        ({"knobs": {"knob.cost": [1]}, "objective": "knob_cost"}, "give a budget"),
        ({"knobs": {"knob.cost": [1]}, "max_trials": 2, "objective": "latency"}, "search.objective: 'latency'"),
        ({"knobs": {"knob.cost": [1]}, "max_trials": 2, "objective": "knob_cost",
          "constraints": {"min": {"knob_qualty": 0.5}}}, "did you mean 'knob_quality'"),
        ({"knobs": {"knob.cost": [1]}, "max_trials": 2, "objective": "knob_cost", "budget": 3},
         "unknown field 'budget'"),
        ({"knobs": {"knob.cost": [1]}, "max_trials": 2, "screening": {"fractoin": 0.5}},
         "unknown field 'screening.fractoin'"),
    ]
    for search, needle in cases:
        file = tmp_path / "r.yaml"
        file.write_text(yaml.safe_dump(recipe(tiny, data_file, search)))
        out = tmp_path / "out"
        with pytest.raises(BadInputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            from hfcompress.recipe_search import search as run_search

            run_search(recipe=file, output_dir=out)
        assert main(["run", str(file), "--output", str(out), "--quiet"]) == 2
        assert not out.exists() and computed(tmp_path) == []
    plain = recipe(tiny, data_file, {})
    plain.pop("search")
    file.write_text(yaml.safe_dump(plain))
    assert main(["run", str(file), "--output", str(out), "--storage", "sqlite:///x.db", "--quiet"]) == 2


def test_the_search_and_final_parts_split_the_held_out_data() -> None:
    import datasets

    from hfcompress.recipe_search.split import select_eval_part

    texts = [f"held-out text {i}" for i in range(200)] + ["held-out text 3"]  # a duplicate
    ds = datasets.Dataset.from_dict({"text": texts})
    search, final = (set(select_eval_part(ds, part)["text"]) for part in ("search", "final"))
    assert search and final and not search & final and search | final == set(texts)
    assert 60 < len(search) < 140
    assert select_eval_part(ds, "search")["text"] == select_eval_part(ds, "search")["text"]  # deterministic


# -- searches ---------------------------------------------------------------------------------------


def test_chosen_is_the_best_candidate_that_passes_and_results_hold_the_search(
    tiny: Path, data_file: str, tmp_path: Path
) -> None:
    from hfcompress import search

    out = tmp_path / "out"
    r = recipe(tiny, data_file, {"knobs": GRID, "objective": "knob_cost", "constraints": MIN_QUALITY,
                                 "max_trials": 8, "screening": False})
    result = search(recipe=r, output_dir=out)
    block = result.results["search"]
    trials = {t["number"]: t for t in block["trials"]}
    assert sorted(trials) == list(range(8))
    assert sorted((t["overrides"]["knob.cost"], t["overrides"]["knob.quality"]) for t in trials.values()) == sorted(
        (c, q) for c in GRID["knob.cost"] for q in GRID["knob.quality"])
    chosen = trials[block["chosen"]]
    assert chosen["overrides"] == {"knob.cost": 1, "knob.quality": 0.95} and chosen["passed"]
    for t in trials.values():
        assert {"overrides", "metrics", "latency_ms", "size_bytes", "passed", "failures", "seconds", "level",
                "objective", "worker"} <= set(t)
        assert t["level"] == "full" and t["latency_ms"] > 0
        assert t["passed"] == (t["overrides"]["knob.quality"] >= 0.9)
        if not t["passed"]:
            assert any("knob_quality = 0.5 is below gate.min.knob_quality = 0.9" in f for f in t["failures"])
    assert block["objective"] == ["knob_cost"] and block["quality_metric"] == "knob_quality"
    assert block["frontier"] == [block["chosen"]]  # cost 1 at quality 0.95: nothing is better on either axis
    assert block["storage"].startswith("sqlite:///") and block["study"].startswith("hfcompress-")
    # the output is the chosen candidate, evaluated on the final half, which no trial scored
    saved = json.loads((out / "results.json").read_text())
    assert saved["search"]["chosen"] == block["chosen"] and saved["gate"]["passed"] is True
    assert saved["compressed"]["metrics"]["knob_cost"] == 1 and saved["data"]["eval_part"] == "final"
    from hfcompress.data import DataConfig, load_data
    from hfcompress.recipe_search.split import select_eval_part

    held_out = load_data(DataConfig.model_validate(data_file)).eval
    assert chosen["eval_samples"] == len(select_eval_part(held_out, "search"))
    assert saved["data"]["evaluated_samples"] == len(select_eval_part(held_out, "final"))
    final_recipe = Recipe.load(out / "hfcompress.yaml")
    assert final_recipe.search is None and final_recipe.steps[0].config.model_dump()["cost"] == 1
    card = (out / "README.md").read_text()
    assert "## Search" in card and f"{block['chosen']} (chosen)" in card
    assert len(computed(tmp_path)) == 8  # each candidate computed once; the final run came from the step cache


def test_an_enabled_knob_switches_a_step_off_and_its_other_knobs_stop_counting(
    tiny: Path, data_file: str, tmp_path: Path
) -> None:
    from hfcompress import search

    r = recipe(tiny, data_file, {"knobs": {"steps[1].enabled": [True, False], "steps[1].quality": [0.5, 0.6]},
                                 "objective": "knob_cost", "constraints": MIN_QUALITY, "max_trials": 4,
                                 "screening": False})
    # the first step passes on its own (quality 0.95, cost 2); the second is cheaper but loses quality
    r["steps"] = [{"knob": {"cost": 2, "quality": 0.95}}, {"knob": {"cost": 1, "quality": 0.5}}]
    result = search(recipe=r, output_dir=tmp_path / "out")
    block = result.results["search"]
    overrides = sorted(json.dumps(t["overrides"], sort_keys=True) for t in block["trials"])
    # four grid points, three candidates: with the step off, its quality knob changes nothing
    assert overrides == sorted(json.dumps(o, sort_keys=True) for o in (
        {"steps[1].enabled": True, "steps[1].quality": 0.5}, {"steps[1].enabled": True, "steps[1].quality": 0.6},
        {"steps[1].enabled": False}))
    assert len(block["skipped"]) == 1
    chosen = next(t for t in block["trials"] if t["number"] == block["chosen"])
    assert chosen["overrides"] == {"steps[1].enabled": False} and chosen["metrics"]["knob_cost"] == 2
    final = Recipe.load(tmp_path / "out" / "hfcompress.yaml")
    assert [s.technique for s in final.steps] == ["knob"] and final.steps[0].config.model_dump()["cost"] == 2
    assert result.results["compressed"]["metrics"]["knob_cost"] == 2
    assert sorted(c["quality"] for c in computed(tmp_path)) == [0.5, 0.6, 0.95]  # the first step once: cached


def test_requires_switches_a_step_off_with_the_step_it_needs(tiny: Path, data_file: str, tmp_path: Path) -> None:
    from hfcompress import search

    r = recipe(tiny, data_file, {"knobs": {"steps[0].enabled": [True, False], "steps[1].enabled": [True, False]},
                                 "requires": {"steps[1]": "steps[0]"}, "objective": "knob_cost", "max_trials": 4,
                                 "screening": False})
    r["steps"] = [{"knob": {"cost": 2, "quality": 0.95}}, {"knob": {"cost": 1, "quality": 0.5}}]
    result = search(recipe=r, output_dir=tmp_path / "out")
    block = result.results["search"]
    # four grid points, three candidates: without steps[0], steps[1] does not run either
    assert sorted(json.dumps(t["overrides"], sort_keys=True) for t in block["trials"]) == sorted(
        json.dumps(o, sort_keys=True) for o in ({"steps[0].enabled": True, "steps[1].enabled": True},
                                                {"steps[0].enabled": True, "steps[1].enabled": False},
                                                {"steps[0].enabled": False, "steps[1].enabled": False}))
    assert len(block["skipped"]) == 1
    ran = {json.dumps(t["overrides"], sort_keys=True): t["metrics"]["knob_cost"] for t in block["trials"]}
    assert ran[json.dumps({"steps[0].enabled": False, "steps[1].enabled": False}, sort_keys=True)] == 10.0  # no step ran
    assert sorted(c["cost"] for c in computed(tmp_path)) == [1, 2]  # each step computed once (cache)


def test_screening_promotes_only_candidates_that_could_still_pass(tiny: Path, data_file: str, tmp_path: Path) -> None:
    from hfcompress import search

    r = recipe(tiny, data_file, {"knobs": {"knob.quality": [0.5, 0.95]}, "objective": "knob_cost",
                                 "constraints": MIN_QUALITY, "max_trials": 2,
                                 "screening": {"fraction": 0.5, "slack": 0.45, "max_samples": 8}})
    result = search(recipe=r, output_dir=tmp_path / "out")
    trials = {t["overrides"]["knob.quality"]: t for t in result.results["search"]["trials"]}
    low, high = trials[0.5], trials[0.95]
    # screening: max_steps 50, so quality is halved: 0.25 cannot reach 0.9 - 0.45; 0.475 can
    assert low["level"] == "screening" and not low["passed"] and "screening" in low["failures"][0]
    assert low["screening"]["metrics"]["knob_quality"] == 0.25 and low["screening"]["eval_samples"] == 8
    assert high["level"] == "full" and high["passed"] and high["screening"]["metrics"]["knob_quality"] == 0.475
    assert high["metrics"]["knob_quality"] == 0.95
    assert sorted(c["max_steps"] for c in computed(tmp_path)) == [50, 50, 100]
    assert result.results["search"]["chosen"] == high["number"]


def test_no_candidate_passes_exit_3_writes_the_closest_and_pushes_nothing(
    tiny: Path, data_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hfcompress.hub
    from hfcompress.cli import main

    pushed: list[Any] = []
    monkeypatch.setattr(hfcompress.hub, "push_to_hub", lambda *a, **k: (pushed.append(a), {})[1])
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump(recipe(tiny, data_file, {
        "knobs": {"knob.quality": [0.5, 0.8, 0.6]}, "objective": "knob_cost",
        "constraints": {"min": {"knob_quality": 0.9}}, "max_trials": 3, "screening": False})))
    out = tmp_path / "out"
    assert main(["run", str(file), "--output", str(out), "--push-to", "org/never", "--quiet"]) == 3
    assert pushed == []
    results = json.loads((out / "results.json").read_text())
    block = results["search"]
    assert block["chosen"] is None
    closest = next(t for t in block["trials"] if t["number"] == block["closest"])
    assert closest["overrides"] == {"knob.quality": 0.8}  # the smallest violation (0.1)
    assert results["gate"]["passed"] is False
    assert f"closest, trial {block['closest']}" in results["gate"]["failures"][0]
    assert "knob_quality = 0.8 is below gate.min.knob_quality = 0.9" in results["gate"]["failures"][0]
    card = (out / "README.md").read_text()
    assert "No candidate passed the constraints" in card and "(closest)" in card


def test_a_second_run_resumes_the_study_and_reruns_nothing(tiny: Path, data_file: str, tmp_path: Path) -> None:
    from hfcompress import search

    first = search(recipe=recipe(tiny, data_file, {"knobs": GRID, "objective": "knob_cost", "max_trials": 2,
                                                   "screening": False}), output_dir=tmp_path / "o1")
    again = search(recipe=recipe(tiny, data_file, {"knobs": GRID, "objective": "knob_cost", "max_trials": 4,
                                                   "screening": False}), output_dir=tmp_path / "o2")
    before = first.results["search"]["trials"]
    after = again.results["search"]["trials"]
    assert [t["number"] for t in before] == [0, 1] and [t["number"] for t in after] == [0, 1, 2, 3]
    assert after[:2] == before  # the same records: not run again
    assert again.results["search"]["study"] == first.results["search"]["study"]
    assert len(computed(tmp_path)) == 4
    assert len({json.dumps(t["overrides"], sort_keys=True) for t in after}) == 4


# -- several processes --------------------------------------------------------------------------------


def _worker(plugin_dir: Path, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(plugin_dir / "runner.py"), str(plugin_dir), "run", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)


def _trials(storage: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        summaries = optuna.get_all_study_summaries(storage)
        if not summaries:
            return []
        return optuna.load_study(study_name=summaries[0].study_name, storage=storage).get_trials()
    except Exception:  # the worker is still creating the tables
        return []


# Each starts several hfcompress processes: they run in `make test-all` and are kept out of
# the default suite so that it stays under 15 minutes.
@pytest.mark.slow
def test_two_workers_share_one_storage_and_never_run_a_trial_twice(
    tiny: Path, data_file: str, tmp_path: Path, plugin_dir: Path
) -> None:
    from optuna.trial import TrialState

    grid = {"knob.cost": [1, 2, 3, 4, 5, 6], "knob.quality": [0.5, 0.95]}
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump(recipe(tiny, data_file, {"knobs": grid, "objective": "knob_cost",
                                                            "max_trials": 8, "screening": False}, sleep=1.0)))
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [_worker(plugin_dir, tmp_path, str(file), "--output", str(tmp_path / f"out{i}"), "--storage", storage)
               for i in (1, 2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    done = [t for t in _trials(storage) if t.state == TrialState.COMPLETE]
    assert len(done) == 8
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 8
    assert len({t.user_attrs["worker"] for t in done}) == 2, "both workers ran trials"
    runs = computed(tmp_path)
    assert len(runs) == 8 and len({(r["cost"], r["quality"]) for r in runs}) == 8  # nothing computed twice
    for i in (1, 2):
        block = json.loads((tmp_path / f"out{i}" / "results.json").read_text())["search"]
        assert len(block["trials"]) == 8 and block["storage"] == storage
    assert all("search: trial" in log and "trials" in log for log in logs)  # one progress line per trial


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_and_finishes_the_same_trials(
    tiny: Path, data_file: str, tmp_path: Path, plugin_dir: Path
) -> None:
    from optuna.trial import TrialState

    from hfcompress import search

    grid = {"knob.cost": [1, 2, 3, 4, 5]}
    spec = {"knobs": grid, "objective": "knob_cost", "max_trials": 3, "screening": False}
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump(recipe(tiny, data_file, spec, sleep=2.0)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker = _worker(plugin_dir, tmp_path, str(file), "--output", str(tmp_path / "out"), "--storage", storage)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        trials = _trials(storage) if (tmp_path / "study.db").exists() else []
        states = [t.state for t in trials]
        if TrialState.COMPLETE in states and any(t.state == TrialState.RUNNING and t.params for t in trials):
            break
        assert worker.poll() is None, worker.communicate()[0]
        time.sleep(0.2)
    else:
        pytest.fail("the worker never reached its second trial")
    os.kill(worker.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the storage
    worker.wait()
    killed = next(t for t in _trials(storage) if t.state == TrialState.RUNNING)
    before = {t.number: t.user_attrs["record"] for t in _trials(storage) if t.state == TrialState.COMPLETE}

    resumed = _worker(plugin_dir, tmp_path, str(file), "--output", str(tmp_path / "out"), "--storage", storage)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"trial {killed.number} was left unfinished" in output
    done = {t.number: t for t in _trials(storage) if t.state == TrialState.COMPLETE}
    assert sorted(done) == [0, 1, 2] and not [t for t in _trials(storage) if t.state != TrialState.COMPLETE]
    assert done[killed.number].params == killed.params and done[killed.number].user_attrs["record"]["resumed_from"]
    for number, record in before.items():
        assert done[number].user_attrs["record"] == record  # finished trials were not run again
    assert len(computed(tmp_path)) == 3  # the killed trial died before it finished computing

    # the same set of trials as a search that was never interrupted (same grid, same seed)
    uninterrupted = search(recipe=recipe(tiny, data_file, spec, sleep=0.0), output_dir=tmp_path / "again")
    assert sorted(t["overrides"]["knob.cost"] for t in uninterrupted.results["search"]["trials"]) == sorted(
        t.params["knob.cost"] for t in done.values())

