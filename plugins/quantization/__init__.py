"""Technique ``quantization``: narrower number formats for weights (and activations).

Backends:

- ``torch``: cast weights and activations to bf16 or fp16; stays a plain PyTorch checkpoint.
- ``quanto`` (optimum-quanto): int8 / int4 / fp8 weights, optionally int8 / fp8 activations
  calibrated on the recipe's training data; modules matching ``exclude`` patterns stay float.
- ``onnxruntime``: ONNX export (logits-only, no KV cache, for causal LMs), ONNX Runtime's
  transformer fusions where they measure faster, then dynamic int8 (default) or static int8
  calibrated on data. The output folder holds ``model.onnx`` (``onnx/model.onnx`` for a
  sentence-transformers model, where its ONNX backend looks) and runs in plain onnxruntime.
- ``onnxruntime-genai`` (causal LMs only): onnxruntime-genai's model builder, weight-only int4 or
  int8 (default) with a KV cache; the folder holds ``model.onnx`` + ``genai_config.json`` and
  generates with ``onnxruntime_genai`` alone (see ``genai_runtime``).
- ``auto``: builds the candidates the target device supports, drops those whose outputs on
  calibration data drift from the input model (cosine < ``min_cosine``, or top-1 agreement <
  ``min_agreement`` for logits), times the rest on real batches with fixed threads, keeps the
  fastest, and records every measurement in the step's ``changes``.

Examples::

    steps:
      - quantization: {backend: auto}                       # measure, keep the fastest that passes
      - quantization: {backend: onnxruntime}                # dynamic int8, per-channel
      - quantization: {backend: onnxruntime, mode: static, calibration_method: percentile,
                       op_types: [MatMul]}
      - quantization: {backend: quanto, dtype: int4, exclude: [lm_head]}
      - quantization: {backend: quanto, dtype: int8, activations: int8}
      - quantization: {backend: torch, dtype: bf16}
      - quantization: {backend: onnxruntime-genai, dtype: int4}   # causal LMs: KV cache, int4 weights
      - quantization: {backend: auto, candidates: [torch:bf16, onnxruntime:int8-dynamic], min_cosine: 0.99}

The package, one concern per module:

- ``config.py``: ``QuantizationConfig``, the recipe fields and the rules that need no model;
- ``backends.py``: the backend registry (name → module, output format, dtypes) and the named
  ``auto`` candidates; a new backend is one module plus one line there;
- ``technique.py``: ``Quantization`` (``check``, ``apply``, ``load_artifact``), dispatching through
  the registry;
- ``auto.py``: ``backend: auto`` (candidates, quality gate, round-robin timing, the pick);
- ``measure.py``: calibration texts, batches, fidelity and latency helpers;
- one module per backend: ``torch_cast.py``, ``quanto_backend.py``, ``onnx_backend.py`` and
  ``genai_backend.py``, with the runtime-specific work of the last two in ``onnx_runtime.py``
  (export, fusions, quantizers, ``OnnxModel``) and ``genai_runtime.py`` (the model builder,
  ``GenaiModel``).

Only pure-Python modules are imported here; the backend modules are imported on first use, and
torch, transformers, onnx and onnxruntime inside functions, so that ``hfcompress plugins`` stays fast.
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import hookimpl

from .backends import BACKEND_FORMAT, BACKENDS, CANDIDATES, DEFAULT_CANDIDATES, DEFAULT_DTYPE, DTYPES
from .config import QuantizationConfig
from .technique import Quantization

__all__ = [
    "BACKENDS", "BACKEND_FORMAT", "CANDIDATES", "DEFAULT_CANDIDATES", "DEFAULT_DTYPE", "DTYPES",
    "Quantization", "QuantizationConfig",
]


@hookimpl
def hfcompress_register_techniques(register: Any) -> None:
    register(Quantization)
