"""The Optuna side of a search: storage, study, sampler, workers, resuming.

- The study's name is a fingerprint of the recipe (its search section without the budget), so
  running the same recipe again, with the same or a larger budget, resumes the same study.
- The storage defaults to SQLite under the cache (``$HFCOMPRESS_CACHE/search/<study>.db``);
  ``--storage URL`` (any SQLAlchemy URL Optuna's ``RDBStorage`` takes) lets several workers share
  one study. The storage hands out trial numbers, so two workers never run the same trial.
- Heartbeats: a trial whose worker stops beating (a machine lost) is failed by the next worker
  and re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``). A trial whose
  worker died on this machine (killed, power cut) is adopted by the next worker that starts: it
  finishes that same trial, same number, same parameters; a trial interrupted with Ctrl-C is
  re-queued with its parameters.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import cache_dir, fingerprint
from ..errors import BadInputError
from .config import Knob

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from ..recipe import Recipe

log = logging.getLogger("hfcompress.search")

HEARTBEAT_S = 20
GRACE_S = 90
WORKER = f"{socket.gethostname()}:{os.getpid()}"
"""This process, as recorded in each trial it runs (user attribute ``worker``)."""


def study_name(recipe: Recipe) -> str:
    """``hfcompress-<fingerprint>`` of the recipe without its budget, push target and provenance."""
    d = recipe.to_dict()
    for key in ("provenance", "push"):
        d.pop(key, None)
    search = dict(d.get("search") or {})
    for key in ("max_trials", "max_minutes"):
        search.pop(key, None)
    d["search"] = search
    return f"hfcompress-{fingerprint(d)}"


def default_storage(name: str) -> str:
    return f"sqlite:///{cache_dir('search') / name}.db"


def masked(url: str) -> str:
    """The URL without a password, for results.json and log lines."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: say nothing more than its scheme
        return url.split("://", 1)[0] + "://…"


def _retry_callback() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
        except ImportError:  # optuna < 4.9
            from optuna.storages import RetryFailedTrialCallback as Retry
        return Retry(max_retry=3)


def make_storage(url: str) -> Any:
    """An Optuna ``RDBStorage`` with heartbeats; a bad URL is a :class:`BadInputError`."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise BadInputError(f"--storage {url}: the folder {Path(path).parent} does not exist; create it first")
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    callback_kw = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna's terms
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                **{callback_kw: _retry_callback()},
            )
    except Exception as exc:
        raise BadInputError(
            f"--storage {masked(url)}: Optuna could not open it ({type(exc).__name__}: {exc}). Give an SQLAlchemy URL "
            "such as sqlite:////shared/search.db or postgresql://user@host/db (its driver installed)"
        ) from None


def worker_seed(seed: int) -> int:
    """A sampler seed per worker: identical seeds would make two workers propose identical trials."""
    return int(fingerprint([seed, WORKER]), 16) % (2**31)


def make_sampler(knobs: list[Knob], n_objectives: int, seed: int, max_trials: int | None) -> Any:
    """GridSampler when every knob is a list (the same seed in every worker: the grid order is
    shared and trial number i is grid point i), else TPE (one objective) or NSGA-II (Pareto),
    both honouring the constraints through ``constraints_func``."""
    import optuna

    if all(k.choices is not None for k in knobs):
        return optuna.samplers.GridSampler({k.name: list(k.choices or ()) for k in knobs}, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constraints_func is "experimental" in Optuna's terms
        if n_objectives == 1:
            startup = max(3, min(10, (max_trials or 40) // 4))
            return optuna.samplers.TPESampler(seed=worker_seed(seed), n_startup_trials=startup,
                                              constraints_func=constraints_of)
        population = max(4, min(50, (max_trials or 60) // 3))
        return optuna.samplers.NSGAIISampler(seed=worker_seed(seed), population_size=population,
                                             constraints_func=constraints_of)


def constraints_of(trial: Any) -> list[float]:
    """Optuna's constraint values (<= 0 is feasible): the trial's total violation of the constraints."""
    return list(trial.user_attrs.get("constraint", [0.0]))


@contextlib.contextmanager
def host_lock(name: str) -> Iterator[None]:
    """Serialise the workers of one study on this machine (adopting orphaned trials)."""
    path = cache_dir("search") / f"{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_local_worker(worker: Any) -> bool:
    """Whether ``worker`` ("host:pid") ran on this machine and its process is gone."""
    host, _, pid = str(worker or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def live_worker(trial: Any) -> bool:
    """A RUNNING trial some live process works on (this machine: its pid; elsewhere: heartbeats)."""
    worker = trial.user_attrs.get("worker")
    return not dead_local_worker(worker)


def take_over_orphans(study: optuna.Study, knobs: list[Knob]) -> list[int]:
    """Adopt the RUNNING trials of dead workers on this machine (their ids, to finish them now);
    re-queue trials stopped by Ctrl-C. Under a per-machine lock, so two workers adopt each once."""
    from optuna.trial import TrialState

    adopted: list[int] = []
    storage = study._storage
    names = {k.name for k in knobs}
    with host_lock(study.study_name):
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        for t in trials:
            if t.state == TrialState.RUNNING and dead_local_worker(t.user_attrs.get("worker")):
                if set(t.params) >= names:
                    storage.set_trial_user_attr(t._trial_id, "resumed_from", t.user_attrs.get("worker"))
                    storage.set_trial_user_attr(t._trial_id, "worker", WORKER)
                    adopted.append(t._trial_id)
                    log.info("search: trial %d was left unfinished by %s; finishing it here",
                             t.number, t.user_attrs.get("worker"))
                else:  # died before its parameters were drawn: nothing to resume, fail it
                    with contextlib.suppress(Exception):
                        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            elif t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
                _retry_callback()(study, t)
                log.info("search: trial %d was interrupted; queued again with the same parameters", t.number)
    return adopted
