"""Exceptions that map to the CLI's exit codes (docs/contract.md: 2 bad input, 3 gate failed)."""

from __future__ import annotations


class HfCompressError(Exception):
    """Base class; the CLI exits with ``exit_code``."""

    exit_code = 1


class BadInputError(HfCompressError, ValueError):
    """Bad usage, recipe, data spec or incompatible model, detected before any heavy work.

    The message must name what was wrong (the field) and how to fix it.
    """

    exit_code = 2


class GateFailedError(HfCompressError):
    """A quality gate failed: nothing was pushed, the output folder says why."""

    exit_code = 3

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class PluginError(HfCompressError):
    """A plugin is broken or conflicts with another one."""
