"""Evaluator ``speed``: latency and throughput of one forward pass, measured the same way for every model.

One fixed batch of ``batch_size`` held-out texts, padded/truncated to exactly
``sequence_length`` tokens, is run ``warmup`` times untimed and then ``repeats`` times timed.
Results: ``latency_ms`` (median per batch), ``latency_p95_ms``, ``throughput_samples_per_s``
(batch_size / median). The conditions are declared as settings (``speed_batch_size``,
``speed_sequence_length``, ``speed_threads``, ``speed_warmup``, ``speed_repeats``), so
results.json records them in each block's ``settings``, apart from the measurements.

The thread count matters more than anything else on small CPUs (measured: a MiniLM forward
took 1,070 ms with 2 threads vs 220 ms with 1 on the 2-core CI machines), so PyTorch is pinned
by the runner and an ONNX Runtime model is pinned through its ``set_num_threads``.

    evaluate:
      batch_size: 8
      sequence_length: 128
      threads: 1
      warmup: 2
      repeats: 10
"""

from __future__ import annotations

import time
from typing import Any

from hfcompress.plugin import EvalContext, Evaluator, Metric, hookimpl

# Without held-out texts the shapes still come from the settings; the content barely matters
# because every sequence is padded to the same length.
FALLBACK_TEXT = "The quick brown fox jumps over the lazy dog."


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without needing numpy."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _synchronizer(device: Any) -> Any:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class Speed(Evaluator):
    name = "speed"
    summary = "Median and p95 latency, throughput (fixed batch, sequence length, threads, warm-up)"
    metrics = (
        Metric("latency_ms", label="Latency, median", unit="ms", higher_is_better=False),
        Metric("latency_p95_ms", label="Latency, p95", unit="ms", higher_is_better=False),
        Metric("throughput_samples_per_s", label="Throughput", unit="samples/s"),
        # the conditions: results.json keeps them under "settings", the card under its settings
        Metric("speed_batch_size", label="batch size", setting=True),
        Metric("speed_sequence_length", label="sequence length (tokens, padded)", setting=True),
        Metric("speed_threads", label="threads", setting=True),
        Metric("speed_warmup", label="warm-up runs", setting=True),
        Metric("speed_repeats", label="timed runs", setting=True),
    )

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import forward, model_device, tokenize

        s = ctx.settings
        texts = list(ctx.data["text"][: s.batch_size]) if ctx.data is not None and len(ctx.data) else []
        if not texts:
            texts = [FALLBACK_TEXT]
        while len(texts) < s.batch_size:  # always a full batch: same shape for every model
            texts = (texts * 2)[: s.batch_size]
        batch = tokenize(ctx.state, texts, s.sequence_length)
        model: Any = ctx.state.model
        if hasattr(model, "set_num_threads"):  # the ONNX Runtime wrapper; torch is pinned by the runner
            model.set_num_threads(s.threads)
        sync = _synchronizer(model_device(ctx.state))
        for _ in range(s.warmup):
            forward(ctx.state, batch)
        sync()
        timings = []
        for _ in range(s.repeats):
            start = time.perf_counter()
            forward(ctx.state, batch)
            sync()  # GPU kernels run asynchronously: time until they finish, not until they are queued
            timings.append((time.perf_counter() - start) * 1000.0)
        median = percentile(timings, 50)
        return {
            "latency_ms": median,
            "latency_p95_ms": percentile(timings, 95),
            "throughput_samples_per_s": s.batch_size / (median / 1000.0),
            "speed_batch_size": float(s.batch_size),
            "speed_sequence_length": float(s.sequence_length),
            "speed_threads": float(s.threads),
            "speed_warmup": float(s.warmup),
            "speed_repeats": float(s.repeats),
        }


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(Speed)
