"""The backend registry: one line per backend, naming the module that implements it.

A backend module (``torch_cast``, ``quanto_backend``, ``onnx_backend``, ``genai_backend``) defines
the functions of :class:`BackendModule`. Adding a backend is that module plus one line in
:data:`BACKENDS`; its names in :data:`CANDIDATES` (and :data:`DEFAULT_CANDIDATES`) only if
``backend: auto`` may try it, and its format in :data:`FORMAT_ORDER` only if it is a new format.

The modules are imported on first use (:func:`backend_module`), never when the plugin is
imported: ``hfcompress plugins`` and recipe validation stay free of torch and onnxruntime.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from hfcompress.plugin import ModelState, ModelTarget

# The technique's name, which ``hfcompress.load`` finds in a folder's config.json to reload it.
TECHNIQUE = "quantization"


@dataclass(frozen=True)
class Backend:
    module: str
    """The module in this package that implements :class:`BackendModule`."""
    format: str
    """``ModelState.format`` of its output (``pytorch`` stays a plain checkpoint)."""
    dtypes: tuple[str, ...]
    """What ``dtype`` accepts with this backend, in the order error messages list them."""
    default_dtype: str


# The order here is the order of ``backend``'s allowed values in messages and the config schema.
BACKENDS: dict[str, Backend] = {
    "quanto": Backend("quanto_backend", "quanto", ("int8", "int4", "fp8"), "int8"),
    "onnxruntime": Backend("onnx_backend", "onnx", ("int8",), "int8"),
    "torch": Backend("torch_cast", "pytorch", ("bf16", "fp16"), "bf16"),
    # the model builder's -p choices for CPU
    "onnxruntime-genai": Backend("genai_backend", "onnx-genai", ("int4", "int8", "fp32"), "int8"),
    # encoders: NNCF int8 (weights and activations) or the plain IR
    "openvino": Backend("openvino_backend", "openvino", ("int8", "fp32"), "int8"),
}
DTYPES: dict[str, tuple[str, ...]] = {name: b.dtypes for name, b in BACKENDS.items()}
DEFAULT_DTYPE: dict[str, str] = {name: b.default_dtype for name, b in BACKENDS.items()}
BACKEND_FORMAT: dict[str, str] = {name: b.format for name, b in BACKENDS.items()}
# Formats only move forward; ``auto`` declares the furthest its candidates can reach.
FORMAT_ORDER = ("pytorch", "quanto", "onnx", "openvino", "onnx-genai")

# What ``backend: auto`` may try, by name (also the names in ``candidates``).
CANDIDATES: dict[str, dict[str, Any]] = {
    "torch:bf16": {"backend": "torch", "dtype": "bf16"},
    "torch:fp16": {"backend": "torch", "dtype": "fp16"},
    "onnxruntime:int8-dynamic": {"backend": "onnxruntime", "dtype": "int8", "mode": "dynamic"},
    "onnxruntime:int8-static": {"backend": "onnxruntime", "dtype": "int8", "mode": "static"},
    "openvino:int8": {"backend": "openvino", "dtype": "int8"},
    "openvino:int8-accuracy-control": {"backend": "openvino", "dtype": "int8", "accuracy_control": True},
    "openvino:fp32": {"backend": "openvino", "dtype": "fp32"},
    "quanto:int8": {"backend": "quanto", "dtype": "int8"},
    "quanto:int4": {"backend": "quanto", "dtype": "int4"},
    "quanto:fp8": {"backend": "quanto", "dtype": "fp8"},
    "quanto:int8-a8": {"backend": "quanto", "dtype": "int8", "activations": "int8"},
    # causal LMs only (onnxruntime-genai's model builder: KV cache, weight-only MatMulNBits)
    "onnxruntime-genai:int4": {"backend": "onnxruntime-genai", "dtype": "int4"},
    "onnxruntime-genai:int4-kquant-mixed": {"backend": "onnxruntime-genai", "dtype": "int4", "algorithm": "k_quant",
                                            "int8_layers": ["last_matmul", "mixed_layers"]},
    "onnxruntime-genai:int4-awq-mixed": {"backend": "onnxruntime-genai", "dtype": "int4", "algorithm": "awq",
                                         "int4_ratio": 0.3},
    "onnxruntime-genai:int4-block-min": {"backend": "onnxruntime-genai", "dtype": "int4", "algorithm": "block_min"},
    "onnxruntime-genai:int8": {"backend": "onnxruntime-genai", "dtype": "int8"},
    "onnxruntime-genai:int8-group128": {"backend": "onnxruntime-genai", "dtype": "int8", "group_size": 128},
    "onnxruntime-genai:int8-head128": {"backend": "onnxruntime-genai", "dtype": "int8", "lm_head_group_size": 128},
    "onnxruntime-genai:fp32": {"backend": "onnxruntime-genai", "dtype": "fp32"},
}
# fp16 matmuls on CPU are emulated (slow); ONNX Runtime int8 and quanto kernels target CPU/CUDA resp.
# OpenVINO int8 (NNCF, static activations) measured on all-MiniLM-L6-v2, 1 thread, b8x128: 76 ms at
# cosine 0.9976 vs ONNX Runtime dynamic int8 97 ms at 0.992 (docs/techniques/quantization.md).
DEFAULT_CANDIDATES = {
    "cpu": ["torch:bf16", "onnxruntime:int8-dynamic", "openvino:int8", "quanto:int8"],
    "cuda": ["torch:bf16", "torch:fp16", "quanto:int8"],
}
# Causal LMs are chosen on decode speed, perplexity and greedy agreement (decoder_auto). Measured
# on SmolLM2-135M, 1 thread (docs/techniques/quantization.md): int4 round-to-nearest 114 tokens/s
# at +38% perplexity, int4 k-quant with int8 sensitive layers 102 at +11%, int8 88 at +0.2%,
# fp32 with a KV cache 29 at +0%, PyTorch bf16 17 (fp32 15); int4 calibrated by NNCF (AWQ + scale
# estimation) with 30% of the weights int4, the rest int8: 80 at +3.3%. int8 with one scale per 128
# weights for the LM head alone: 93 at +0.16% vs 79 for int8 in the same run (2026-12-02, Zen 4);
# it replaced int8 with 128 everywhere (108 at +0.55%, but greedy agreement 0.18 instead of 0.47:
# MatMulNBits rounds the activations in blocks of the weights' size; genai_blocks). int4 with a float
# minimum per block (llama.cpp's Q4_1 scheme, genai_block_min): 93 at -0.09% on the packaged model,
# whose weights came from a Q4_1 GGUF, vs int8 84 and llama.cpp 64 in the same run (2026-12-03, Intel
# with AMX). The int4 ones stay in the list so the card shows where they land on each model.
DEFAULT_CANDIDATES_CAUSAL_LM = {
    "cpu": ["onnxruntime-genai:int4", "onnxruntime-genai:int4-kquant-mixed", "onnxruntime-genai:int4-awq-mixed",
            "onnxruntime-genai:int4-block-min", "onnxruntime-genai:int8", "onnxruntime-genai:int8-head128",
            "onnxruntime-genai:fp32", "torch:bf16"],
    "cuda": ["torch:bf16", "torch:fp16", "quanto:int8"],
}


class BackendModule(Protocol):
    """What a backend module defines (``config`` is a ``QuantizationConfig`` with this backend)."""

    def check(self, config: Any, target: ModelTarget, where: str) -> None:
        """Refuse a model or config this backend cannot handle (``BadInputError``), before any work."""

    def data_needed(self, config: Any) -> tuple[str, str] | None:
        """Why this config needs the recipe's data and the fix when there is none, or None."""

    def skip_reason(self, name: str, device: Any, state: ModelState) -> str | None:
        """Why ``auto`` skips candidate ``name`` for this model on ``device``, or None."""

    def build(self, state: ModelState, config: Any, texts: list[str], work_dir: Path,
              copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
        """The quantized model (a copy of ``state.model`` when ``copy_model``) and what to record
        in the step's changes. ``texts``: calibration texts; ``work_dir``: scratch for its files."""

    # A backend with its own format (not ``pytorch``) also defines ``save(state, path)``, the
    # ModelState's saver, and ``load(path, task, tokenizer, info) -> ModelState``, which
    # ``Quantization.load_artifact`` calls for folders of that format.


def backend_module(name: str) -> BackendModule:
    return cast(BackendModule, importlib.import_module(f"{__package__}.{BACKENDS[name].module}"))


def build(state: ModelState, config: Any, texts: list[str], *, work_dir: Path,
          copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    """One quantized model, through ``config.backend``'s module."""
    return backend_module(config.backend).build(state, config, texts, work_dir, copy_model)


def loader_for(fmt: Any) -> Callable[..., ModelState] | None:
    """The ``load`` function of the backend that writes format ``fmt``, if it has one."""
    for name, backend in BACKENDS.items():
        if backend.format == fmt:
            return cast("Callable[..., ModelState] | None", getattr(backend_module(name), "load", None))
    return None


def loadable_formats() -> list[str]:
    return sorted(b.format for name, b in BACKENDS.items() if hasattr(backend_module(name), "load"))


def write_runtime_config(model_config: Any, path: Path) -> None:
    """config.json of a folder that a runtime (ONNX Runtime, OpenVINO) runs without PyTorch code."""
    import json

    model_config.save_pretrained(str(path))
    config_file = path / "config.json"
    data = json.loads(config_file.read_text())
    # No PyTorch modeling code ships in such a folder: an auto_map left in config.json (head-pruned
    # models) would point plain transformers at files that are not there.
    data.pop("auto_map", None)
    # config.json must name a model_type transformers knows (AutoConfig, AutoTokenizer and
    # sentence-transformers read it first). A config reloaded from such a folder is the generic
    # PretrainedConfig, which writes none; older pruned folders named the pruned classes' own type.
    stock = str(data.get("model_type") or getattr(model_config, "model_type", "") or "")
    if stock:
        data["model_type"] = stock.removeprefix("hfcompress-pruned-")
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def step_info(state: ModelState, details: dict[str, Any]) -> dict[str, Any]:
    """``state.info`` for a backend's output: what earlier steps recorded, plus ``quantization``."""
    info = copy.deepcopy(state.info)
    info["quantization"] = details
    return info
