"""What the conformance kit reports: :class:`ConformanceError`, :class:`CaseResult`,
:class:`ConformanceReport`, and the constants every check shares."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

FAMILIES: tuple[str, ...] = ("bert", "bert-classifier", "llama")
"""Tiny model families every technique is tried on: (task) feature-extraction BERT, a BERT
sequence classifier, and a Llama causal LM with grouped-query attention."""

FAMILY_TASKS = {"bert": "feature-extraction", "bert-classifier": "text-classification", "llama": "text-generation"}

HEAVY_MODULES: tuple[str, ...] = ("torch", "transformers", "datasets", "onnx", "onnxruntime", "accelerate",
                                  "optimum", "evaluate")
"""Modules a plugin must not import at import time (import them inside ``apply``)."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
UNKNOWN_FIELD = "no_such_field_conformance"
OUTPUT_TEXTS = 4
OUTPUT_SEQUENCE_LENGTH = 32


class ConformanceError(AssertionError):
    """A technique plugin breaks the plugin contract; the message says what and how to fix it."""

    def __init__(self, technique: Any, problem: str, fix: str = "") -> None:
        cls = technique if isinstance(technique, (type, str)) else type(technique)
        name = getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls))
        where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"
        message = f"technique {name!r} ({where}): {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)
        self.problem = problem


@dataclass
class CaseResult:
    """One (config, model family) pair: whether ``check`` accepted it and what ``apply`` did."""

    config: dict[str, Any]
    family: str
    accepted: bool
    rejection: str | None = None
    changes: dict[str, Any] | None = None
    format: str | None = None
    max_abs_diff: float | None = None
    """Largest difference between the in-memory outputs and the outputs after save/reload."""
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    technique: str
    cases: list[CaseResult] = field(default_factory=list)
    bad_configs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    """(bad config, the BadInputError message it produced)."""
    end_to_end: dict[str, Any] | None = None
    """results.json of the ``compress`` run, when ``end_to_end`` was requested."""

    def accepted(self, family: str | None = None) -> list[CaseResult]:
        return [c for c in self.cases if c.accepted and (family is None or c.family == family)]

    def summary(self) -> str:
        lines = [f"conformance of {self.technique!r}:"]
        for c in self.cases:
            if c.accepted:
                lines.append(f"  {c.family:<16} {json.dumps(c.config)}: ok, format {c.format}, "
                             f"reload max |diff| {c.max_abs_diff:.3g}, {c.seconds:.2f} s")
            else:
                lines.append(f"  {c.family:<16} {json.dumps(c.config)}: rejected by check: {c.rejection}")
        for bad, message in self.bad_configs:
            lines.append(f"  bad {json.dumps(bad)}: rejected: {message.splitlines()[0][:120]}")
        return "\n".join(lines)
