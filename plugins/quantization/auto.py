"""``backend: auto``: build the candidates the device supports, drop those that drift from the
input model, time the rest round-robin on real batches and keep the fastest (within
``tie_margin`` of it, the smallest). Every measurement lands in the step's ``changes``."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import GateFailedError, ModelState, StepContext, StepResult

from .backends import CANDIDATES, DEFAULT_CANDIDATES, DEFAULT_CANDIDATES_CAUSAL_LM, backend_module, build
from .measure import device_of, fidelity, latency_round_robin, reduced_outputs, timing_batches

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import QuantizationConfig

log = logging.getLogger(__name__)


def candidate_names(config: QuantizationConfig, device_type: str, task: str | None = None) -> list[str]:
    defaults = DEFAULT_CANDIDATES_CAUSAL_LM if task == "text-generation" else DEFAULT_CANDIDATES
    return list(config.candidates or defaults.get(device_type, defaults["cpu"]))


def skip_reason(name: str, device: Any, state: ModelState) -> str | None:
    """Why candidate ``name`` is not tried for this model on ``device`` (its backend decides), or None."""
    return backend_module(CANDIDATES[name]["backend"]).skip_reason(name, device, state)


def quality_failure(fid: dict[str, float], config: QuantizationConfig, task: str) -> str | None:
    if fid["cosine_mean"] < config.min_cosine:
        return f"cosine {fid['cosine_mean']:.4f} < min_cosine {config.min_cosine}"
    if task != "feature-extraction" and fid.get("top1_agreement", 1.0) < config.min_agreement:
        return f"top-1 agreement {fid['top1_agreement']:.4f} < min_agreement {config.min_agreement}"
    return None


def pick(passing: dict[str, Any], measured: dict[str, dict[str, Any]], timings: dict[str, dict[str, float]],
         margin: float) -> str:
    """The fastest candidate, or the smallest one among those within ``margin`` of the fastest."""
    fastest = min(timings[n]["median"] for n in passing)
    tied = [n for n in passing if timings[n]["median"] <= fastest * (1.0 + margin)]
    return min(tied, key=lambda n: (measured[n].get("size_bytes") or float("inf"), timings[n]["median"]))


def _work_dir(ctx: StepContext, name: str) -> Path:
    return Path(ctx.work_dir) / name.replace(":", "-")


def _try_candidate(name: str, row: dict[str, Any], state: ModelState, config: QuantizationConfig,
                   ctx: StepContext, texts: list[str], reference: torch.Tensor, device: Any) -> ModelState | None:
    """Build and check one candidate, recording its status in ``row``; the model if it passed."""
    reason = skip_reason(name, device, state)
    if reason:
        row.update(status="skipped", reason=reason)
        return None
    try:
        started = time.perf_counter()
        candidate, details = build(state, config.for_candidate(name), texts, work_dir=_work_dir(ctx, name),
                                   copy_model=True)
        row["build_seconds"] = round(time.perf_counter() - started, 2)
        row.update({k: v for k, v in details.items() if k in ("size_bytes", "graph_optimization")})
    except Exception as exc:  # one broken candidate must not stop the search
        log.warning("quantization auto: candidate %s failed: %s", name, exc)
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
        return None
    row["fidelity"] = fidelity(reference, reduced_outputs(candidate, texts, config), state.task)
    failed = quality_failure(row["fidelity"], config, state.task)
    if failed:
        row.update(status="rejected", reason=failed)
        return None
    row["status"] = "passed"
    return candidate


def run_auto_decoder(state: ModelState, config: QuantizationConfig, ctx: StepContext,
                     texts: list[str]) -> StepResult:
    """``auto`` for causal LMs: perplexity, greedy agreement and decode speed (``decoder_auto``)."""
    from . import decoder_auto

    names = candidate_names(config, device_of(state).type, state.task)
    return decoder_auto.run(state, config, ctx, texts, names, skip_reason, _work_dir, conclude)


def run_auto(state: ModelState, config: QuantizationConfig, ctx: StepContext, texts: list[str],
             reference: torch.Tensor) -> StepResult:
    device = device_of(state)
    batches = timing_batches(state, texts, config)
    measured: dict[str, dict[str, Any]] = {}
    passing: dict[str, ModelState] = {}
    for name in candidate_names(config, device.type):
        measured[name] = {"candidate": name}
        candidate = _try_candidate(name, measured[name], state, config, ctx, texts, reference, device)
        if candidate is not None:
            passing[name] = candidate
    # Time the input and every passing candidate round-robin (one batch of each in turn):
    # on a shared machine a busy neighbour then slows all of them alike, where timing one
    # after the other would hand the choice to whoever ran in a quiet moment.
    timings = latency_round_robin({"input": state, **passing}, batches, config.threads)
    for name, timing in timings.items():
        if name in measured:
            measured[name]["latency_ms"] = timing
            measured[name]["speedup"] = round(timings["input"]["median"] / timing["median"], 3)
    changes: dict[str, Any] = {
        "backend": "auto", "device": str(device), "threads": config.threads,
        "timing": f"{len(batches)} rounds over batches of {config.batch_size} x {config.sequence_length} tokens "
                  "from the calibration data, input and passing candidates round-robin after 1 warm-up each; "
                  "latency median/min in ms; the fastest median wins, and within tie_margin of it the "
                  "smallest artifact",
        "quality_gate": {"min_cosine": config.min_cosine,
                         **({"min_agreement": config.min_agreement} if state.task != "feature-extraction" else {})},
        "input_latency_ms": timings["input"], "candidates": list(measured.values()),
    }
    best = pick(passing, measured, timings, config.tie_margin) if passing else None
    return conclude(state, config, ctx, measured, passing, best, changes)


def conclude(state: ModelState, config: QuantizationConfig, ctx: StepContext, measured: dict[str, dict[str, Any]],
             passing: dict[str, ModelState], best: str | None, changes: dict[str, Any]) -> StepResult:
    """The step's result once ``best`` is picked (None: no candidate passed); only its files stay."""
    for name in measured:  # drop the other candidates' exports from the work dir
        if name != best:
            shutil.rmtree(_work_dir(ctx, name), ignore_errors=True)
    if best is None:
        return _none_passed(state, config, measured, changes)
    changes["chosen"] = best
    chosen = passing[best]
    chosen.info.setdefault("quantization", {})["auto"] = {"chosen": best, "candidates": list(measured)}
    return StepResult(chosen, changes)


def _none_passed(state: ModelState, config: QuantizationConfig, measured: dict[str, dict[str, Any]],
                 changes: dict[str, Any]) -> StepResult:
    if config.if_none_pass == "keep-input":
        log.warning("quantization auto: no candidate passed; keeping the input model (if_none_pass: keep-input)")
        changes.update(chosen=None, reason="no candidate passed the quality gate or built on this device")
        return StepResult(state, changes)
    rows = "; ".join(f"{r['candidate']}: {r['status']} ({r.get('reason') or r.get('fidelity')})"
                     for r in measured.values())
    raise GateFailedError(
        f"quantization auto: no candidate passed, so nothing was quantized. Candidates: {rows}. Lower "
        "min_cosine/min_agreement, list other candidates, or set if_none_pass: keep-input to keep the "
        "unquantized model.", [f"quantization auto: {r['candidate']} {r['status']}" for r in measured.values()],
    )
