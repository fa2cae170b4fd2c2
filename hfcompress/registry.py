"""Plugin discovery through pluggy and the ``hfcompress`` entry-point group.

We do not use ``PluginManager.load_setuptools_entrypoints``: it stops at the first plugin that
fails to import. Here every entry point is loaded on its own, so a broken plugin is reported by
name and the others keep working. ``HFCOMPRESS_BLOCK_PLUGINS`` (comma-separated entry-point or
distribution names) blocks plugins, like pytest's ``-p no:NAME``.

Mistakes plugin authors make are reported against their plugin, never silently ignored: a hook
function whose name is not one of ours (``hfcompress_register_technique``, singular), a
``register(Technique())`` call with an instance, and a name two distributions both register (a
*conflict*: listed by ``hfcompress plugins``, and an error only for recipes that use the name).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import BadInputError, PluginError

ENTRY_POINT_GROUP = "hfcompress"
BLOCK_ENV = "HFCOMPRESS_BLOCK_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    error: str | None = None

    def fail(self, problem: str) -> None:
        """Record a problem; a plugin can have several (a misspelled hook and a bad register call).
        They share the first line, which ``hfcompress plugins`` shows; later lines are tracebacks."""
        self.error = problem if not self.error else f"{self.error}; {problem}"


@dataclass
class Registered:
    cls: Any
    plugin: PluginInfo

    @property
    def summary(self) -> str:
        return str(getattr(self.cls, "summary", "") or (self.cls.__doc__ or "").strip().split("\n")[0])


# Registry table → what one entry is called in messages.
_KINDS = {"techniques": "technique", "evaluators": "evaluator", "data_sources": "data source"}


@dataclass
class Conflict:
    """A name registered by more than one plugin. The first stays in the table (so listings and
    ``name in registry.techniques`` keep working), but using the name is a :class:`BadInputError`:
    hfcompress cannot know which implementation the recipe means."""

    table: str
    name: str
    claimants: list[Registered]

    @property
    def message(self) -> str:
        who = " and ".join(f"distribution {r.plugin.distribution!r} {r.plugin.version} (plugin {r.plugin.name!r})"
                           for r in self.claimants)
        blocks = " or ".join(f"{BLOCK_ENV}={r.plugin.name}" for r in self.claimants)
        # Uninstalling hfcompress itself would remove everything: suggest the other distributions.
        removable = dict.fromkeys(r.plugin.distribution for r in self.claimants
                                  if r.plugin.distribution not in ("hfcompress", "unknown"))
        uninstall = f" ({' or '.join(f'pip uninstall {d}' for d in removable)})" if removable else ""
        return (
            f"{_KINDS[self.table]} {self.name!r} is registered by {len(self.claimants)} plugins: {who}, so hfcompress "
            f"cannot tell which one to use. Uninstall one of them{uninstall}, or block one with {blocks}."
        )


@dataclass
class Registry:
    plugins: list[PluginInfo] = field(default_factory=list)
    techniques: dict[str, Registered] = field(default_factory=dict)
    evaluators: dict[str, Registered] = field(default_factory=dict)
    data_sources: dict[str, Registered] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    pm: pluggy.PluginManager | None = None

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def conflict(self, table: str, name: str) -> Conflict | None:
        return next((c for c in self.conflicts if c.table == table and c.name == name), None)

    def _check_conflict(self, table: str, name: str) -> None:
        conflict = self.conflict(table, name)
        if conflict is not None:
            raise BadInputError(conflict.message)

    def technique(self, name: str) -> Any:
        """An instance of the technique called ``name``; a BadInputError listing the known ones, or
        naming both distributions when two register ``name`` (recipes resolve steps through here)."""
        if name not in self.techniques:
            raise BadInputError(
                f"unknown technique {name!r}; available techniques: {', '.join(sorted(self.techniques)) or 'none'}. "
                "Install the plugin that provides it, or fix the name in the recipe."
            )
        self._check_conflict("techniques", name)
        return self.techniques[name].cls()

    def evaluator(self, name: str) -> Any:
        if name not in self.evaluators:
            raise BadInputError(
                f"unknown evaluator {name!r}; available evaluators: {', '.join(sorted(self.evaluators))}."
            )
        self._check_conflict("evaluators", name)
        return self.evaluators[name].cls()

    def as_json(self) -> dict[str, Any]:
        """What ``hfcompress plugins --json`` prints. Every registration is listed, conflicting
        ones too (one row per claimant, ``"conflict": true``); ``conflicts`` says what clashes."""

        def row(table_name: str, name: str, reg: Registered, conflict: bool) -> dict[str, Any]:
            out: dict[str, Any] = {
                "name": name,
                "distribution": reg.plugin.distribution,
                "version": reg.plugin.version,
                "summary": reg.summary,
            }
            if table_name == "techniques":  # which steps can follow which (formats only move forward)
                out["accepts_formats"] = list(getattr(reg.cls, "accepts_formats", ("pytorch",)))
                out["produces_formats"] = list(getattr(reg.cls, "produces_formats", ("pytorch",)))
            out["conflict"] = conflict
            return out

        def rows(table_name: str) -> list[dict[str, Any]]:
            out = []
            for name, reg in sorted(getattr(self, table_name).items()):
                conflict = self.conflict(table_name, name)
                for claimant in conflict.claimants if conflict else [reg]:
                    out.append(row(table_name, name, claimant, conflict is not None))
            return out

        return {
            "techniques": rows("techniques"),
            "evaluators": rows("evaluators"),
            "data_sources": rows("data_sources"),
            "broken": [{"name": p.name, "distribution": p.distribution, "version": p.version, "error": p.error}
                       for p in self.broken],
            "conflicts": [
                {
                    "kind": _KINDS[c.table],
                    "name": c.name,
                    "distributions": [{"distribution": r.plugin.distribution, "version": r.plugin.version,
                                       "plugin": r.plugin.name} for r in c.claimants],
                    "message": c.message,
                }
                for c in self.conflicts
            ],
        }


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def _plugin_info(ep: EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(
        name=ep.name,
        distribution=dist.metadata["Name"] if dist is not None else "unknown",
        version=dist.version if dist is not None else "unknown",
    )


def build_registry(extra_plugins: list[tuple[Any, PluginInfo]] | None = None) -> Registry:
    """Discover plugins from entry points (plus ``extra_plugins``, used by tests and notebooks)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm=pm)
    blocked = _blocked()

    candidates: list[tuple[Any, PluginInfo]] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        info = _plugin_info(ep)
        if info.name in blocked or info.distribution in blocked:
            pm.set_blocked(info.name)
            continue
        try:
            candidates.append((ep.load(), info))
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"failed to import: {type(exc).__name__}: {exc}"
            info.error += "\n" + traceback.format_exc(limit=3)
            registry.plugins.append(info)
    candidates.extend(extra_plugins or [])

    for module, info in candidates:
        registry.plugins.append(info)
        try:
            pm.register(module, name=info.name)
        except Exception as exc:
            info.error = f"failed to register: {type(exc).__name__}: {exc}"
            continue
        _check_hook_names(pm, module, info)
        _collect(registry, module, info)
    return registry


_HOOKS = {
    "hfcompress_register_techniques": "techniques",
    "hfcompress_register_evaluators": "evaluators",
    "hfcompress_register_data_sources": "data_sources",
}


def _check_hook_names(pm: pluggy.PluginManager, module: Any, info: PluginInfo) -> None:
    """Mark the plugin broken when it defines a hook that does not exist (a misspelling).

    pluggy's ``check_pending()`` finds ``@hookimpl`` functions without a hookspec, but for the
    whole manager at once and by raising; here the same test (a hook caller with no spec) runs
    per plugin, so the problem is attributed to this plugin and the others are untouched. An
    undecorated ``hfcompress_register...`` function counts too: ``_collect`` would call it under
    the right name, so under a wrong one it is just as surely a mistake.
    """
    unknown = {caller.name for caller in pm.get_hookcallers(module) or [] if not caller.has_spec()}
    for attr in dir(module):
        if attr.startswith("hfcompress_register") and attr not in _HOOKS and inspect.isfunction(getattr(module, attr)):
            unknown.add(attr)
    for name in sorted(unknown):
        near = difflib.get_close_matches(name, list(_HOOKS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        info.fail(f"{name!r} is not an hfcompress hook, so it would never be called{hint}; "
                  f"the hooks are: {', '.join(sorted(_HOOKS))}")


class _BadRegistration(PluginError):
    """A ``register(...)`` call with something that cannot be registered."""


def _collect(registry: Registry, module: Any, info: PluginInfo) -> None:
    """Call this plugin's hooks with a ``register`` callback bound to its distribution.

    Hooks are called per plugin (not through ``pm.hook``) so that each registration is
    attributed to the distribution that made it, and one plugin's exception stays its own.
    """
    for hook_name, table_name in _HOOKS.items():
        impl = getattr(module, hook_name, None)
        if impl is None:
            continue
        table: dict[str, Registered] = getattr(registry, table_name)
        found: list[tuple[str, Registered]] = []
        bad: list[str] = []

        def register(cls: Any, _found: list[tuple[str, Registered]] = found, _bad: list[str] = bad,
                     hook_name: str = hook_name) -> None:
            # Checked here, not when the class is first used: an instance would otherwise be
            # "called" much later as `cls()` and fail with "'X' object is not callable".
            if not isinstance(cls, type):
                what = type(cls).__name__
                _bad.append(f"register() takes the class, not an instance: write register({what}), not "
                            f"register({what}()) (in {hook_name})")
                raise _BadRegistration(_bad[-1])
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                _bad.append(f"register({cls.__name__}): the class has no string attribute 'name' (in {hook_name})")
                raise _BadRegistration(_bad[-1])
            _found.append((name, Registered(cls, info)))

        try:
            impl(register=register)
        except _BadRegistration:
            pass  # recorded in `bad`; even if the plugin swallowed the exception
        except Exception as exc:
            info.fail(f"{hook_name} raised {type(exc).__name__}: {exc}")
            return
        if bad:
            for problem in bad:
                info.fail(problem)
            return
        for name, reg in found:
            _add(registry, table_name, table, name, reg)


def _add(registry: Registry, table_name: str, table: dict[str, Registered], name: str, reg: Registered) -> None:
    """Add a registration; a second plugin claiming the same name makes a :class:`Conflict`."""
    existing = table.get(name)
    if existing is None:
        table[name] = reg
        return
    if existing.cls is reg.cls:  # the same class registered twice (e.g. by two entry points): harmless
        return
    conflict = registry.conflict(table_name, name)
    if conflict is None:
        registry.conflicts.append(Conflict(table_name, name, [existing, reg]))
    else:
        conflict.claimants.append(reg)


_REGISTRY: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = build_registry()
    return _REGISTRY


@contextlib.contextmanager
def extra_plugins(*modules: Any, distribution: str = "__main__") -> Iterator[Registry]:
    """Use entry-point plugins plus ``modules`` (objects with hook functions) inside the block.

    For notebooks and tests that define a technique without packaging it.
    """
    global _REGISTRY
    saved = _REGISTRY
    extra = [(m, PluginInfo(name=getattr(m, "__name__", repr(m)), distribution=distribution, version="0"))
             for m in modules]
    _REGISTRY = build_registry(extra)
    try:
        yield _REGISTRY
    finally:
        _REGISTRY = saved
