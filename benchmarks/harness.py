"""Runs a suite's variants one after another, the same way, and collects one record per variant.

A suite supplies :class:`VariantSpec` objects (a name, the tool a reader would recognise, and a
``build`` function returning a :class:`Built`), the token batches, and a ``quality`` function.
The harness builds each variant, times it with :func:`benchmarks.timing.time_call` at every
thread count, counts its FLOPs, asks the suite for its quality metrics, and records the result.
A variant that fails is recorded with its error and the run goes on: one broken tool must not
cost the numbers of the others.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .flops import count_flops, gemm_peak
from .timing import Timing, summarize, time_call, timed_ms

log = logging.getLogger("benchmarks")

__all__ = ["Built", "Suite", "VariantSpec", "add_fractions", "best_peaks", "build_and_score", "run_variant", "set_threads",
           "time_round_robin"]


@dataclass
class Built:
    """A ready-to-run variant.

    ``forward(batch)`` runs one batch (a dict of token tensors) and returns the model output;
    ``set_threads(n)`` pins the variant's runtime (ONNX Runtime sessions are recreated with
    ``intra_op_num_threads=n``; PyTorch is pinned by the harness). ``compute_dtype`` says which
    GEMM peak applies (``fp32``, ``bf16`` or ``int8``).
    """

    forward: Callable[[dict[str, Any]], Any]
    size_bytes: int
    num_parameters: int
    shapes: dict[str, tuple[int, int]]
    compute_dtype: str
    set_threads: Callable[[int], None] = lambda n: None
    model: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantSpec:
    name: str
    tool: str
    description: str
    build: Callable[[], Built]
    group: str = "baseline"  # baseline | hfcompress | task


class Suite(Protocol):
    name: str
    batches: dict[str, dict[str, Any]]

    def quality(self, spec: VariantSpec, built: Built) -> dict[str, float]: ...

    def extra_timings(self, spec: VariantSpec, built: Built, threads: int) -> dict[str, float]: ...


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _new_record(spec: VariantSpec) -> dict[str, Any]:
    return {
        "name": spec.name, "tool": spec.tool, "group": spec.group, "description": spec.description,
        "size_bytes": None, "num_parameters": None, "latency_ms": {}, "latency_spread_ms": {}, "metrics": {},
        "flops_per_batch": {}, "achieved_gflops": {}, "fraction_of_peak": {}, "gemm_peak_at_timing": {},
        "compute_dtype": None, "error": None,
    }


def _fail(record: dict[str, Any], stage: str, exc: BaseException, name: str) -> None:
    record["error"] = f"{stage}: {type(exc).__name__}: {exc}"
    record["traceback"] = traceback.format_exc(limit=8)[-3000:]
    log.warning("[%s] FAILED at %s: %s: %s", name, stage, type(exc).__name__, exc)


def _build(suite: Suite, spec: VariantSpec, threads: list[int], record: dict[str, Any]) -> Built:
    """Build a variant and record its build time, size, parameters and FLOPs per batch shape."""
    log.info("[%s] building", spec.name)
    start = time.perf_counter()
    set_threads(max(threads))  # building (export, quantization, distillation) may use all threads
    built = spec.build()
    record["build_seconds"] = round(time.perf_counter() - start, 2)
    record.update(size_bytes=built.size_bytes, num_parameters=built.num_parameters,
                  compute_dtype=built.compute_dtype, info=built.info)
    for shape, batch in suite.batches.items():
        b, s = batch["input_ids"].shape
        record["flops_per_batch"][shape] = count_flops(built.shapes, int(b), int(s))
    return built


def build_and_score(suite: Suite, spec: VariantSpec, threads: list[int]) -> tuple[dict[str, Any], Built | None]:
    """Build one variant, count its FLOPs and measure its quality (no timing); never raises.

    Returns the record and the built variant (None when it failed), to be timed later by
    :func:`time_round_robin` together with the others.
    """
    import torch

    record = _new_record(spec)
    stage = "build"
    try:
        built = _build(suite, spec, threads, record)
        stage = "quality"
        built.set_threads(max(threads))
        with torch.no_grad():
            record["metrics"] = {k: (round(v, 6) if isinstance(v, float) else v)
                                 for k, v in suite.quality(spec, built).items()}
        log.info("[%s] size=%s metrics=%s", spec.name, record["size_bytes"], record["metrics"])
        return record, built
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result, not a crash
        _fail(record, stage, exc, spec.name)
        gc.collect()
        return record, None


def time_round_robin(suite: Suite, entries: list[tuple[dict[str, Any], VariantSpec, Built]], threads: list[int],
                     timing: Timing) -> None:
    """Time every variant in interleaved rounds: round r runs each variant once per shape.

    On a shared machine the load drifts over minutes; timing variant A fully and then variant B
    would hand one of them the quiet minute. Interleaving spreads the same load over all of
    them, so the ratios between variants hold even when absolute times do not. Each call is
    timed by :func:`benchmarks.timing.timed_ms` and reduced by :func:`benchmarks.timing.summarize`
    (median), the same code as :func:`benchmarks.timing.time_call`.
    """
    import torch

    for n in threads:
        set_threads(n)
        live = []
        for record, spec, built in entries:
            if record["error"] is not None:
                continue
            try:
                built.set_threads(n)
                live.append((record, spec, built))
            except Exception as exc:  # noqa: BLE001
                _fail(record, f"timing with {n} thread(s)", exc, spec.name)
        samples: dict[int, dict[str, list[float]]] = {id(r): {shape: [] for shape in suite.batches} for r, _, _ in live}
        log.info("timing %d variants round-robin with %d thread(s): %d warm-up + %d rounds",
                 len(live), n, timing.warmup, timing.repeats)
        with torch.no_grad():  # not inference_mode: quanto int4 kernels fail there
            for round_index in range(timing.warmup + timing.repeats):
                for entry in list(live):
                    record, spec, built = entry
                    try:
                        for shape, batch in suite.batches.items():
                            ms = timed_ms(functools.partial(built.forward, batch))
                            if round_index >= timing.warmup:
                                samples[id(record)][shape].append(ms)
                    except Exception as exc:  # noqa: BLE001
                        _fail(record, f"timing with {n} thread(s)", exc, spec.name)
                        live.remove(entry)
        peak_now = gemm_peak(n, repeats=3)  # under the load the variants just saw
        for record, spec, built in live:
            stats = {shape: summarize(values) for shape, values in samples[id(record)].items()}
            lat = {shape: round(t["median"], 3) for shape, t in stats.items()}
            try:
                with torch.no_grad():
                    lat.update(suite.extra_timings(spec, built, n))
                timing_metrics = getattr(suite, "timing_metrics", None)
                if timing_metrics is not None:
                    record["metrics"].update(timing_metrics(spec, n))
            except Exception as exc:  # noqa: BLE001
                _fail(record, f"extra timings with {n} thread(s)", exc, spec.name)
                continue
            record["latency_ms"][str(n)] = lat
            record["latency_spread_ms"][str(n)] = {s: [round(t["p10"], 3), round(t["p90"], 3)] for s, t in stats.items()}
            record["achieved_gflops"][str(n)] = {
                shape: round(flops / (lat[shape] / 1000.0) / 1e9, 2) for shape, flops in record["flops_per_batch"].items()
            }
            record["gemm_peak_at_timing"][str(n)] = peak_now
            log.info("[%s] %d thread(s): %s", spec.name, n, lat)


def run_variant(suite: Suite, spec: VariantSpec, threads: list[int], timing: Timing) -> dict[str, Any]:
    """Build, time, count and score one variant on its own (sequential timing); never raises.

    The suites use :func:`build_and_score` + :func:`time_round_robin` instead; this is the
    one-variant path (and what a plugin author can call to time a single model).

    ``fraction_of_peak`` is filled in by :func:`add_fractions` once the whole run's best GEMM
    peak is known.
    """
    import torch

    record = _new_record(spec)
    stage = "build"
    built: Built | None = None
    try:
        built = _build(suite, spec, threads, record)
        for n in threads:
            stage = f"timing with {n} thread(s)"
            set_threads(n)
            built.set_threads(n)
            lat, spread = {}, {}
            with torch.no_grad():  # not inference_mode: quanto int4 kernels fail there
                for shape, batch in suite.batches.items():
                    t = time_call(functools.partial(built.forward, batch), timing)
                    lat[shape] = round(t["median"], 3)
                    spread[shape] = [round(t["p10"], 3), round(t["p90"], 3)]
                lat.update(suite.extra_timings(spec, built, n))
            record["latency_ms"][str(n)] = lat
            record["latency_spread_ms"][str(n)] = spread
            record["achieved_gflops"][str(n)] = {
                shape: round(flops / (lat[shape] / 1000.0) / 1e9, 2) for shape, flops in record["flops_per_batch"].items()
            }
            # The peak measured right after this variant, under the same machine load.
            record["gemm_peak_at_timing"][str(n)] = gemm_peak(n, repeats=3)
        stage = "quality"
        set_threads(max(threads))
        with torch.no_grad():
            record["metrics"] = {k: (round(v, 6) if isinstance(v, float) else v)
                                 for k, v in suite.quality(spec, built).items()}
        log.info("[%s] %s", spec.name, _summary(record))
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result, not a crash
        _fail(record, stage, exc, spec.name)
    finally:
        built = None  # free the model before the next variant is built
        gc.collect()
    return record


def _summary(record: dict[str, Any]) -> str:
    lat = record["latency_ms"]
    first: dict[str, Any] = next(iter(lat.values()), {})
    return f"size={record['size_bytes']} latency={first} metrics={record['metrics']}"


def best_peaks(*observations: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per thread count and dtype, the highest GEMM throughput observed anywhere in the run.

    On a shared machine any single measurement can be slowed by other work; the best one is the
    closest estimate of what the hardware can do, so it is the bound variants are compared to.
    """
    out: dict[str, dict[str, float]] = {}
    for obs in observations:
        for threads, per_dtype in obs.items():
            for dtype, value in per_dtype.items():
                slot = out.setdefault(threads, {})
                slot[dtype] = max(slot.get(dtype, 0.0), value)
    return out


def add_fractions(record: dict[str, Any], peaks: dict[str, dict[str, float]]) -> None:
    """``fraction_of_peak[threads][shape]``: achieved FLOP/s over the peak of the variant's compute dtype."""
    record["fraction_of_peak"] = {}
    for threads, achieved in record.get("achieved_gflops", {}).items():
        peak = peaks.get(threads, {}).get(record.get("compute_dtype") or "")
        if peak:
            record["fraction_of_peak"][threads] = {shape: round(v / peak, 4) for shape, v in achieved.items()}
