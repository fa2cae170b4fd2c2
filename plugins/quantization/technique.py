"""``Quantization``: the technique class. ``check``, ``apply`` and ``load_artifact`` dispatch to the
backend modules through the registry (``backends``); ``backend: auto`` runs ``auto.run_auto``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from hfcompress.plugin import (
    TASKS,
    BadInputError,
    ModelState,
    ModelTarget,
    StepContext,
    StepResult,
    Technique,
)

from .auto import run_auto, run_auto_decoder
from .backends import (
    BACKEND_FORMAT,
    CANDIDATES,
    DEFAULT_CANDIDATES,
    DEFAULT_CANDIDATES_CAUSAL_LM,
    FORMAT_ORDER,
    TECHNIQUE,
    backend_module,
    build,
    loadable_formats,
    loader_for,
)
from .config import QuantizationConfig
from .measure import calibration_texts, fidelity, reduced_outputs

_AUTO_DATA = ("backend auto measures candidates on real batches of your data",
              "add a `data:` section, or pick a backend (onnxruntime dynamic and torch need no data)")


def data_needed(config: QuantizationConfig) -> tuple[str, str] | None:
    """Why this step needs the recipe's data and what to do without it, or None."""
    if config.backend == "auto":
        return _AUTO_DATA  # auto times and checks candidates on real batches of the user's data
    return backend_module(config.backend).data_needed(config)


class Quantization(Technique[QuantizationConfig]):
    name = TECHNIQUE
    summary = "int8/int4/fp8 (quanto), int8 ONNX Runtime or OpenVINO, int4/int8 onnxruntime-genai, bf16/fp16 casts, or auto: measured choice"
    Config = QuantizationConfig
    accepts_formats = ("pytorch",)
    produces_formats = tuple(f for f in FORMAT_ORDER if f in BACKEND_FORMAT.values())

    def output_format(self, config: QuantizationConfig) -> str:
        if config.backend != "auto":
            return BACKEND_FORMAT[config.backend]
        names = config.candidates or [n for table in (DEFAULT_CANDIDATES, DEFAULT_CANDIDATES_CAUSAL_LM)
                                      for names in table.values() for n in names]
        formats = {BACKEND_FORMAT[CANDIDATES[n]["backend"]] for n in names}
        return max(formats, key=FORMAT_ORDER.index)

    def data_requirement(self, config: QuantizationConfig) -> Literal["none", "text", "labels"]:
        return "text" if data_needed(config) else "none"

    def check(self, config: QuantizationConfig, target: ModelTarget) -> None:
        where = f"quantization (backend {config.backend})"
        if target.format != "pytorch":
            raise BadInputError(
                f"{where}: needs a PyTorch model, but the model is {target.format!r} at this step. "
                "Put quantization after pruning/distillation, and use one quantization step."
            )
        if target.task not in TASKS:
            raise BadInputError(f"{where}: task {target.task!r} unsupported; supported: {', '.join(TASKS)}")
        needed = data_needed(config)
        if needed and not target.has_data:
            why, fix = needed
            raise BadInputError(f"{where}: {why}, but the recipe has no data ({target.architecture}); {fix}.")
        if config.backend != "auto":
            backend_module(config.backend).check(config, target, where)

    def apply(self, state: ModelState, config: QuantizationConfig, ctx: StepContext) -> StepResult:
        texts = calibration_texts(ctx, config)
        if config.backend == "auto" and state.task == "text-generation":
            return run_auto_decoder(state, config, ctx, texts)
        reference = reduced_outputs(state, texts, config)
        if config.backend == "auto":
            return run_auto(state, config, ctx, texts, reference)
        started = time.perf_counter()
        new_state, details = build(state, config, texts, work_dir=Path(ctx.work_dir), copy_model=False)
        changes: dict[str, Any] = {
            "backend": config.backend, **details, "build_seconds": round(time.perf_counter() - started, 2),
            "fidelity_to_input": fidelity(reference, reduced_outputs(new_state, texts, config), state.task),
            "fidelity_texts": len(texts), "fidelity_data": "calibration" if ctx.train_data is not None else "built-in",
        }
        return StepResult(new_state, changes)

    @classmethod
    def usage_snippet(cls, path: Path, info: dict[str, Any], where: str) -> str | None:
        if info.get("format") == "openvino":
            from .openvino_backend import usage

            return usage(path, str(info.get("task") or "feature-extraction"), where)
        if info.get("format") != "onnx-genai":
            return None
        from . import genai_runtime

        return genai_runtime.usage(path, where)  # onnxruntime-genai alone: a bare session lacks the KV-cache feeds

    @classmethod
    def load_artifact(cls, path: Path, info: dict[str, Any]) -> ModelState:
        from hfcompress.plugin import load_tokenizer

        path = Path(path)
        fmt = info.get("format")
        task = info.get("task") or "feature-extraction"
        state_info = dict(info.get("info") or {})
        tokenizer = load_tokenizer(path)
        load = loader_for(fmt)
        if load is None:
            formats = [repr(f) for f in loadable_formats()]
            raise BadInputError(f"{path}: quantization cannot load format {fmt!r}; it writes "
                                f"{', '.join(formats[:-1])} and {formats[-1]} folders")
        return load(path, task, tokenizer, state_info)
