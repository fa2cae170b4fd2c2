"""Plugin discovery through pluggy and the ``hfcompress`` entry-point group.

We do not use ``PluginManager.load_setuptools_entrypoints``: it stops at the first plugin that
fails to import. Here every entry point is loaded on its own, so a broken plugin is reported by
name and the others keep working. ``HFCOMPRESS_BLOCK_PLUGINS`` (comma-separated entry-point or
distribution names) blocks plugins, like pytest's ``-p no:NAME``.
"""

from __future__ import annotations

import contextlib
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


@dataclass
class Registered:
    cls: Any
    plugin: PluginInfo

    @property
    def summary(self) -> str:
        return str(getattr(self.cls, "summary", "") or (self.cls.__doc__ or "").strip().split("\n")[0])


@dataclass
class Registry:
    plugins: list[PluginInfo] = field(default_factory=list)
    techniques: dict[str, Registered] = field(default_factory=dict)
    evaluators: dict[str, Registered] = field(default_factory=dict)
    data_sources: dict[str, Registered] = field(default_factory=dict)
    pm: pluggy.PluginManager | None = None

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def technique(self, name: str) -> Any:
        """An instance of the technique called ``name``, or a BadInputError listing the known ones."""
        if name not in self.techniques:
            raise BadInputError(
                f"unknown technique {name!r}; available techniques: {', '.join(sorted(self.techniques)) or 'none'}. "
                "Install the plugin that provides it, or fix the name in the recipe."
            )
        return self.techniques[name].cls()

    def evaluator(self, name: str) -> Any:
        if name not in self.evaluators:
            raise BadInputError(
                f"unknown evaluator {name!r}; available evaluators: {', '.join(sorted(self.evaluators))}."
            )
        return self.evaluators[name].cls()

    def as_json(self) -> dict[str, Any]:
        def rows(table: dict[str, Registered]) -> list[dict[str, str]]:
            return [
                {
                    "name": name,
                    "distribution": reg.plugin.distribution,
                    "version": reg.plugin.version,
                    "summary": reg.summary,
                }
                for name, reg in sorted(table.items())
            ]

        return {
            "techniques": rows(self.techniques),
            "evaluators": rows(self.evaluators),
            "data_sources": rows(self.data_sources),
            "broken": [{"name": p.name, "distribution": p.distribution, "error": p.error} for p in self.broken],
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
        _collect(registry, module, info)
    return registry


_HOOKS = {
    "hfcompress_register_techniques": "techniques",
    "hfcompress_register_evaluators": "evaluators",
    "hfcompress_register_data_sources": "data_sources",
}


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

        def register(cls: Any, _found: list[tuple[str, Registered]] = found) -> None:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"{cls!r} has no string attribute 'name'")
            _found.append((name, Registered(cls, info)))

        try:
            impl(register=register)
        except Exception as exc:
            info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
            return
        for name, reg in found:
            if name in table:
                other = table[name].plugin
                raise PluginError(
                    f"{table_name[:-1].replace('_', ' ')} {name!r} is registered twice: by distribution "
                    f"{other.distribution!r} (plugin {other.name!r}) and by distribution {info.distribution!r} "
                    f"(plugin {info.name!r}). Uninstall one of them or block one with {BLOCK_ENV}={info.name}."
                )
            table[name] = reg


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
