"""Running a search: trials as ``compress()`` runs, Optuna choosing the next, the final evaluation.

Each trial is :func:`hfcompress.compress` on the recipe with the knobs' values written into its
steps, into a scratch folder under ``$HFCOMPRESS_CACHE/search/<study>/``, with the step cache on
(trials that share a recipe prefix share its steps) and scored on the ``search`` half of the
held-out data. With screening on, a trial first runs at the screening level (training fields
scaled by ``screening.fraction``, ``screening.max_samples`` samples) and goes to the full level only
when its result could still pass (and, with one objective, still win). The chosen trial is then
evaluated once more, at the full level, on the ``final`` half (its steps come from the cache), and
that run is the output folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ..cache import cache_dir, fingerprint
from ..errors import BadInputError, GateFailedError, HfCompressError
from ..plugin import Metric
from ..recipe import GateConfig, Recipe
from . import report
from .config import (
    Knob,
    SearchConfig,
    apply_overrides,
    distinct_candidates,
    effective_overrides,
    resolve_knobs,
    resolve_requires,
    screened_steps,
)
from .split import select_eval_part
from .study import (
    WORKER,
    default_storage,
    host_lock,
    live_worker,
    make_sampler,
    make_storage,
    masked,
    study_name,
    take_over_orphans,
)

log = logging.getLogger("hfcompress.search")

POLL_S = 2.0
MAX_DUPLICATES = 20
"""Consecutive proposals of parameters already tried, after which the space counts as exhausted."""


def _merged_constraints(recipe: Recipe) -> dict[str, dict[str, float]]:
    """The recipe's gate (and --max-drop) and the search's constraints: both must hold."""
    assert recipe.search is not None
    out: dict[str, dict[str, float]] = {"max_drop": {}, "min": {}}
    for source in (recipe.gate.model_dump() if recipe.gate else {}, recipe.search.constraints.model_dump()):
        for section in ("max_drop", "min"):
            out[section].update(source.get(section) or {})
    return out


def _check_metrics(recipe: Recipe, constraints: dict[str, Any]) -> dict[str, Metric]:
    """Constraints and objectives name metrics that an evaluator which will run declares."""
    from ..evaluation import check_metrics, evaluator_declarations, metric_declarations
    from ..gate import check_gate_metrics

    assert recipe.search is not None
    check_metrics(recipe.evaluate)
    declared_by = evaluator_declarations(recipe.evaluate)
    try:
        check_gate_metrics(constraints, declared_by)
    except BadInputError as exc:
        raise BadInputError(str(exc).replace("gate.", "search.constraints (or gate).")) from None
    metrics = metric_declarations(recipe.evaluate)
    measured = [n for n, m in metrics.items() if not m.setting]
    for name in recipe.search.objectives:
        if name not in metrics or metrics[name].setting:
            listing = "; ".join(f"{e}: {', '.join(m.name for m in ms if not m.setting)}" for e, ms in declared_by.items())
            raise BadInputError(
                f"search.objective: {name!r} is not a metric that an evaluator which will run declares "
                f"(latency_ms needs `speed`, size_bytes needs `size` in evaluate.evaluators). Measured metrics: "
                f"{', '.join(measured) or 'none'} ({listing})"
            )
    if len(set(recipe.search.objectives)) != len(recipe.search.objectives):
        raise BadInputError("search.objective: a metric is listed twice")
    return metrics


def _check_candidates(recipe: Recipe, knobs: list[Knob], p: Any) -> None:
    """Each listed knob value passes its technique's ``check`` on this model (before any work)."""
    from ..models import load_config
    from ..plugin import ModelTarget
    from ..registry import get_registry

    registry = get_registry()
    config = load_config(p.source)
    fmt = "pytorch"
    for i, step in enumerate(recipe.steps):
        technique = registry.technique(step.technique)
        for knob in (k for k in knobs if k.index == i and k.choices is not None and not k.toggle):
            for value in knob.choices or ():
                cfg = technique.Config.model_validate({**step.config.model_dump(mode="json"), knob.field: value})
                target = ModelTarget(config=config, task=p.task, format=fmt, has_labels=p.splits.has_labels,
                                     has_data=True)
                try:
                    technique.check(cfg, target)
                except BadInputError as exc:
                    raise BadInputError(f"search.knobs.{knob.name}: the value {value!r}: steps[{i}] "
                                        f"({step.technique}): {exc}") from None
        fmt = technique.output_format(step.config)


class Search:
    """One worker's view of a search: the study, the trials it runs, the final choice."""

    def __init__(self, recipe: Recipe, storage: str | None, device: str | None) -> None:
        assert recipe.search is not None
        self.recipe = recipe
        self.config: SearchConfig = recipe.search
        self.device = device
        self.knobs = resolve_knobs(recipe)
        self.requires = resolve_requires(recipe)
        self.constraints = _merged_constraints(recipe)
        self.has_constraints = any(self.constraints.values())
        self.metrics = _check_metrics(recipe, self.constraints)
        self.objectives = self.config.objectives
        self.name = study_name(recipe)
        self.storage_url = storage or default_storage(self.name)
        self.work = cache_dir("search", self.name)
        base = recipe.to_dict()
        for key in ("search", "gate", "push", "provenance"):
            base.pop(key, None)
        self.base_dict = base
        self.space_size = distinct_candidates(self.knobs, self.requires)
        self.duplicates = 0
        self.exhausted = False
        self.started = time.monotonic()
        self.study: Any = None
        self.quality: str | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Model, data, both halves of the held-out split and every listed value, before any work."""
        from ..pipeline import plan

        p = plan(Recipe.from_dict(self.base_dict))
        for part in ("search", "final"):
            select_eval_part(p.splits.eval, part)
        _check_candidates(self.recipe, self.knobs, p)

    def open(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions: list[Literal["minimize", "maximize"]] = [
            "maximize" if self.metrics[n].higher_is_better else "minimize" for n in self.objectives]
        sampler = make_sampler(self.knobs, len(self.objectives), self.recipe.seed, self.config.max_trials)
        # Workers on this machine starting together would race to create the tables and the study.
        with host_lock(f"storage-{fingerprint(self.storage_url)}"):
            storage = make_storage(self.storage_url)
            self.study = optuna.create_study(study_name=self.name, storage=storage, sampler=sampler,
                                             directions=directions, load_if_exists=True)
        self.study.set_user_attr("knobs", [k.name for k in self.knobs])
        log.info("search: study %s in %s (%s, %s)", self.name, masked(self.storage_url), type(sampler).__name__,
                 " and ".join(f"{d} {n}" for d, n in zip(directions, self.objectives, strict=True)))

    # -- bookkeeping over the storage ----------------------------------------------------------
    def _trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def records(self) -> list[dict[str, Any]]:
        """Every trial that ran to the end (all workers), by number."""
        from optuna.trial import TrialState

        return [t.user_attrs["record"] for t in self._trials()
                if t.state == TrialState.COMPLETE and "record" in t.user_attrs]

    def _counted(self, below: int | None = None) -> int:
        """Trials that count toward max_trials: finished ones and live running ones (below a number)."""
        from optuna.trial import TrialState

        n = 0
        for t in self._trials():
            if below is not None and t.number >= below or t.user_attrs.get("skipped"):
                continue
            if t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and live_worker(t)):
                n += 1
        return n

    def _duplicate_of(self, number: int, params: dict[str, Any]) -> int | None:
        from optuna.trial import TrialState

        for t in self._trials():
            if t.number >= number or t.user_attrs.get("skipped"):
                continue
            if effective_overrides(self.knobs, t.params, self.requires) != params:  # the same candidate, as it acts
                continue
            if (t.state == TrialState.COMPLETE and "record" in t.user_attrs) or t.state == TrialState.RUNNING:
                return int(t.number)
        return None

    def _time_left(self) -> float | None:
        if not self.config.max_minutes:
            return None
        return self.config.max_minutes * 60 - (time.monotonic() - self.started)

    def more_to_do(self) -> bool:
        left = self._time_left()
        if left is not None and left <= 0:
            return False
        if self.config.max_trials and self._counted() >= self.config.max_trials:
            return False
        if self.space_size is not None and len({json.dumps(r["overrides"], sort_keys=True)
                                                for r in self.records()}) >= self.space_size:
            self.exhausted = True
        return not self.exhausted

    # -- one trial ------------------------------------------------------------------------------
    def objective(self, trial: Any) -> Any:
        import optuna

        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("interrupted", False)
        overrides = effective_overrides(self.knobs, {k.name: k.suggest(trial) for k in self.knobs}, self.requires)
        if self.config.max_trials and self._counted(below=trial.number) >= self.config.max_trials:
            trial.set_user_attr("skipped", "max_trials reached by other trials")
            self.study.stop()
            raise optuna.TrialPruned("max_trials reached")
        duplicate = self._duplicate_of(trial.number, overrides)
        if duplicate is not None:
            trial.set_user_attr("skipped", f"same parameters as trial {duplicate}")
            trial.set_user_attr("duplicate_of", duplicate)
            self.duplicates += 1
            if self.duplicates >= MAX_DUPLICATES:
                self.exhausted = True
                self.study.stop()
            raise optuna.TrialPruned(f"same parameters as trial {duplicate}")
        self.duplicates = 0
        try:
            record = self.run_trial(trial.number, overrides)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # the next run queues it again
            raise
        if trial.user_attrs.get("resumed_from"):
            record["resumed_from"] = trial.user_attrs["resumed_from"]
        retry_of = self.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        if retry_of is not None:
            record["retry_of"] = retry_of
        trial.set_user_attr("record", record)
        trial.set_user_attr("constraint", [record["violation"]])
        values = report.objective_values(record, self.objectives, self.metrics)
        return values[0] if len(values) == 1 else values

    def _trial_recipe(self, overrides: dict[str, Any], level: str) -> tuple[Recipe, bool]:
        d = apply_overrides(self.base_dict, self.knobs, overrides, self.requires)
        screening = self.config.screening
        steps, changed = screened_steps(d["steps"], screening)
        if level == "screening":
            d["steps"] = steps
            evaluate = dict(d.get("evaluate") or {})
            evaluate["max_samples"] = min(screening.max_samples, self.recipe.evaluate.max_samples)
            d["evaluate"] = evaluate
        return Recipe.from_dict(d), changed and screening.enabled

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """A trial's own progress lines (steps, evaluation) only with --verbose."""
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            yield
            return
        names = ("hfcompress", "hfcompress_plugins")
        saved = {n: logging.getLogger(n).level for n in names}
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)

    def _run_level(self, number: int, overrides: dict[str, Any], level: str) -> tuple[dict[str, Any] | None, str | None]:
        from ..pipeline import compress

        recipe, _ = self._trial_recipe(overrides, level)
        folder = self.work / "trials" / f"{number}-{level}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            with self._quiet():
                result = compress(recipe=recipe, output_dir=folder, device=self.device, use_cache=True,
                                  eval_part="search")
            return result.results, None
        except HfCompressError as exc:
            return None, str(exc)
        except Exception as exc:  # one candidate failing does not end the search; it is recorded
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the numbers are in the storage, the steps in the cache

    def _summary(self, results: dict[str, Any] | None, error: str | None, level: str) -> dict[str, Any]:
        if results is None:
            return {**{k: None for k in report.SUMMARY_KEYS}, "metrics": {}, "objective": {}, "passed": False,
                    "failures": [f"the {level} run failed: {error}"], "violation": 1e6, "error": error}
        return {**report.summarize(results, self.constraints, self.metrics, self.objectives), "error": None}

    def run_trial(self, number: int, overrides: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"number": number, "overrides": overrides, "worker": WORKER, "screening": None}
        _, screened = self._trial_recipe(overrides, "screening")
        screening = self.config.screening
        if screened:
            t0 = time.perf_counter()
            results, error = self._run_level(number, overrides, "screening")
            summary = {**self._summary(results, error, "screening"), "seconds": round(time.perf_counter() - t0, 3)}
            record["screening"] = summary
            reasons: list[str] = []
            if results is None:
                reasons = summary["failures"]
            elif self.has_constraints:
                prefix = f"screening ({screening.fraction:g}x training, loosened by {screening.slack:g}): "
                reasons = [prefix + f for f in report.check_gate(results, report.loosened(self.constraints, screening.slack),
                                                                 self.metrics)]
            if not reasons:
                reasons = self._cannot_win(summary)
            if reasons:
                record.update({**summary, "level": "screening", "passed": False, "failures": reasons,
                               "violation": max(summary["violation"], 0.0)})
                record["seconds"] = round(time.perf_counter() - start, 3)
                return record
        results, error = self._run_level(number, overrides, "full")
        record.update({**self._summary(results, error, "full"), "level": "full"})
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record

    def _cannot_win(self, summary: dict[str, Any]) -> list[str]:
        """With one objective: a screened value clearly worse than the best passing full trial's."""
        if len(self.objectives) != 1:
            return []
        name = self.objectives[0]
        better_high = self.metrics[name].higher_is_better
        value = report.value_of(summary, name)
        best = [report.value_of(r, name) for r in self.records() if r.get("level") == "full" and r.get("passed")]
        best = [b for b in best if isinstance(b, (int, float))]
        if not isinstance(value, (int, float)) or not best:
            return []
        top = max(best) if better_high else min(best)
        tol = self.config.screening.tolerance * abs(top)
        worse = value < top - tol if better_high else value > top + tol
        if worse:
            return [f"screening: {name} = {value:g} cannot beat the best passing trial's {top:g} "
                    f"(tolerance {self.config.screening.tolerance:g})"]
        return []

    # -- the loop -------------------------------------------------------------------------------
    def best(self) -> dict[str, Any] | None:
        records = self.records()
        chosen, _ = report.choose(records, self.objectives, self._quality(records), self.metrics)
        return next((r for r in records if r["number"] == chosen), None) if chosen is not None else None

    def _quality(self, records: list[dict[str, Any]]) -> str | None:
        if self.quality is None:
            self.quality = report.quality_metric(records, self.metrics, self.objectives)
        return self.quality

    def after_trial(self, study: Any, frozen: Any) -> None:
        record = frozen.user_attrs.get("record")
        if record is not None and frozen.state.name == "COMPLETE":
            done = len(self.records())
            log.info("%s", report.progress_line(
                record, self.best(), done, self.config.max_trials, time.monotonic() - self.started,
                self.config.max_minutes, self.objectives, self._quality(self.records()),
                list(dict.fromkeys([*self.constraints["max_drop"], *self.constraints["min"]])),
            ))
        if not self.more_to_do():
            study.stop()

    def _run_adopted(self, trial_id: int) -> None:
        import optuna
        from optuna.trial import TrialState

        try:
            from optuna.storages._heartbeat import get_heartbeat_thread

            beating: Any = get_heartbeat_thread(trial_id, self.study._storage)
        except ImportError:  # pragma: no cover - older/newer Optuna layout
            beating = contextlib.nullcontext()
        trial = optuna.trial.Trial(self.study, trial_id)
        try:
            with beating:
                values = self.objective(trial)
        except optuna.TrialPruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        frozen = self.study.tell(trial, values)
        self.after_trial(self.study, frozen)

    def drive(self) -> None:
        """Run trials until the budget is spent (all workers' trials count), then wait for the
        trials other workers are still running, so every worker's output sees all of them. A trial
        that stops counting meanwhile (its worker died) is made up for: adopted, re-queued or replaced."""
        import optuna
        from optuna.trial import TrialState

        waited = False
        while True:
            left = self._time_left()
            if left is None or left > 0:
                for trial_id in take_over_orphans(self.study, self.knobs):
                    self._run_adopted(trial_id)
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" in Optuna's terms
                optuna.storages.fail_stale_trials(self.study)  # lost machines: fail and re-queue their trials
            if self.more_to_do():
                self.study.optimize(self.objective, timeout=self._time_left(), callbacks=[self.after_trial],
                                    gc_after_trial=True)
                continue
            running = [t.number for t in self._trials()
                       if t.state == TrialState.RUNNING and live_worker(t) and t.user_attrs.get("worker") != WORKER]
            if not running:
                return
            if not waited:
                log.info("search: waiting for trial(s) %s of other workers", ", ".join(map(str, running)))
                waited = True
            time.sleep(POLL_S)

    # -- the outcome ----------------------------------------------------------------------------
    def block(self, chosen: int | None, closest: int | None, final_samples: int | None) -> dict[str, Any]:
        from optuna.trial import TrialState

        records = sorted(self.records(), key=lambda r: r["number"])
        quality = self._quality(records)
        trials = self._trials()
        return {
            "study": self.name,
            "storage": masked(self.storage_url),
            "sampler": type(self.study.sampler).__name__,
            "objective": self.objectives,
            "directions": [d.name.lower() for d in self.study.directions],
            "quality_metric": quality,
            "constraints": self.constraints,
            "knobs": {k.name: (list(k.choices) if k.choices is not None else
                               (k.range.model_dump(exclude_none=True) if k.range else None)) for k in self.knobs},
            "max_trials": self.config.max_trials,
            "max_minutes": self.config.max_minutes,
            "screening": self.config.screening.model_dump(),
            "eval_split": {"search": "scored by every trial", "final": "the chosen trial's final evaluation only",
                           "final_samples": final_samples},
            "trials": records,
            "chosen": chosen,
            "closest": closest,
            "frontier": report.frontier(records, self.objectives, quality, self.metrics),
            "skipped": sorted(t.number for t in trials if t.state == TrialState.PRUNED),
            "failed": sorted(t.number for t in trials if t.state == TrialState.FAIL),
        }

    def finish(self, out: Path, push_to: str | None) -> Any:
        """Evaluate the chosen trial (or, when none passed, the closest) on the final split into ``out``."""
        from ..card import write_card
        from ..pipeline import Result, compress

        records = self.records()
        if not records:
            raise HfCompressError("search: no trial finished (see the log above); nothing to write")
        chosen, closest = report.choose(records, self.objectives, self._quality(records), self.metrics)
        pick = next(r for r in records if r["number"] == (chosen if chosen is not None else closest))
        recipe, _ = self._trial_recipe(pick["overrides"], "full")
        if self.has_constraints:
            recipe.gate = GateConfig(**self.constraints)
        if chosen is None:
            log.warning("search: no trial passed the constraints; writing the closest, trial %d (%s)",
                        closest, "; ".join(pick.get("failures") or []))
        else:
            log.info("search: chosen trial %d (%s); final evaluation on held-out data the search never scored",
                     chosen, report.overrides_text(pick["overrides"]))
        failures: list[str] = []
        try:
            compress(recipe=recipe, output_dir=out, device=self.device, use_cache=True, eval_part="final")
        except GateFailedError as exc:
            failures = list(exc.failures)
        results = json.loads((out / "results.json").read_text())
        results.setdefault("data", {})["eval_part"] = "final"
        results["search"] = self.block(chosen, closest, (results.get("data") or {}).get("evaluated_samples"))
        if chosen is None:
            reasons = [f"search: no trial passed the constraints on the search split; this is the closest, "
                       f"trial {closest}: " + "; ".join(pick.get("failures") or [])]
            failures = reasons + failures
            gate = results.get("gate") or {}
            results["gate"] = {**gate, "passed": False, "failures": failures, "config": self.constraints}
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        import yaml

        recipe_dict = yaml.safe_load((out / "hfcompress.yaml").read_text())
        write_card(out, results, recipe_dict, metrics=self.metrics, repo_id=push_to)
        result = Result(output_dir=out, results=results, recipe=recipe, gate_failures=failures)
        if failures:
            head = "" if chosen is None else f"search: the chosen trial {chosen} failed on the final split: "
            raise GateFailedError(head + "; ".join(failures) + f" (see {out / 'results.json'})", failures)
        if push_to:
            from ..hub import push_to_hub

            push_cfg = self.recipe.push
            result.push = push_to_hub(
                out, push_to, private=bool(push_cfg and push_cfg.private),
                revision=push_cfg.revision if push_cfg else None, create_pr=bool(push_cfg and push_cfg.create_pr),
            )
        return result


def search(
    model: str | None = None,
    recipe: Recipe | str | Path | dict[str, Any] | None = None,
    *,
    data: str | dict[str, Any] | None = None,
    output_dir: str | Path | None = None,
    storage: str | None = None,
    push_to: str | None = None,
    device: str | None = None,
    use_cache: bool = True,
) -> Any:
    """Run the recipe's ``search``: trials, the chosen candidate's final evaluation, ``output_dir``.

    ``storage``: an Optuna storage URL (default: SQLite under the cache) that several workers may
    share; running again resumes the study. Returns a :class:`hfcompress.Result` whose
    ``results["search"]`` holds every trial, ``chosen`` and the ``frontier``. Raises
    :class:`BadInputError` (exit 2) before any work for a bad search section, and
    :class:`GateFailedError` (exit 3, the closest candidate written, nothing pushed) when no
    candidate passes the constraints.
    """
    from ..pipeline import _check_output_dir, _resolve_recipe

    resolved = _resolve_recipe(model, recipe, data)
    if device is not None:
        resolved.device = device  # type: ignore[assignment]
    if resolved.search is None:
        raise BadInputError("search: the recipe has no `search` section (knobs, objective, constraints, max_trials); "
                            "see docs/search.md, or use hfcompress.compress for a single run")
    if not use_cache:
        raise BadInputError("--no-cache: a search reuses the step cache (trials sharing a recipe prefix, and the "
                            "chosen trial's final evaluation); run it without --no-cache")
    out = Path(output_dir or "hfcompress-output").resolve()
    _check_output_dir(out)
    push_to = push_to or (resolved.push.repo_id if resolved.push else None)
    if push_to:
        from ..hub import check_repo_id

        check_repo_id(push_to)
    worker = Search(resolved, storage, device)
    worker.preflight()
    worker.open()
    worker.drive()
    return worker.finish(out, push_to)
