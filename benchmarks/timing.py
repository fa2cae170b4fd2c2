"""The one timing routine every variant goes through: fixed threads, warm-up, repeats, median.

Baselines and hfcompress outputs are timed by this same function on the same token batches, in
the same process and run, so machine noise (this machine is shared) affects all of them alike
and the ratios between them are what the results mean.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SHAPES", "Timing", "make_batches", "summarize", "time_call", "timed_ms"]

# name -> (batch, sequence length); every batch is padded to exactly this length.
SHAPES: dict[str, tuple[int, int]] = {"b8xs128": (8, 128), "b1xs32": (1, 32)}


@dataclass(frozen=True)
class Timing:
    warmup: int
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "repeats": self.repeats, "statistic": "median"}


def make_batches(tokenizer: Any, texts: list[str], shapes: dict[str, tuple[int, int]] = SHAPES) -> dict[str, dict[str, Any]]:
    """Token batches for each shape from real held-out sentences, padded to ``max_length``.

    The first ``batch`` texts are used, so every variant (same tokenizer) sees identical ids.
    """
    from hfcompress.model_io import MODEL_INPUTS

    out = {}
    for name, (batch, seq) in shapes.items():
        chunk = (texts * batch)[:batch]
        enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        out[name] = {k: v for k, v in enc.items() if k in MODEL_INPUTS}
    return out


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """Median, p10 and p90 of wall times in milliseconds."""
    ordered = sorted(samples_ms)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"median": statistics.median(ordered), "p10": pct(0.1), "p90": pct(0.9)}


def timed_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def time_call(fn: Callable[[], Any], timing: Timing) -> dict[str, float]:
    """Median, p10 and p90 wall time of ``fn()`` in milliseconds after ``timing.warmup`` calls."""
    for _ in range(timing.warmup):
        fn()
    return summarize([timed_ms(fn) for _ in range(timing.repeats)])
