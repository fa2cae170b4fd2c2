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
"""

from __future__ import annotations

import copy
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from hfcompress.plugin import (
    TASKS,
    BadInputError,
    GateFailedError,
    ModelState,
    ModelTarget,
    StepContext,
    StepResult,
    Technique,
    TechniqueConfig,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

Backend = Literal["auto", "quanto", "onnxruntime", "torch", "onnxruntime-genai"]
DTYPES: dict[str, tuple[str, ...]] = {
    "quanto": ("int8", "int4", "fp8"),
    "onnxruntime": ("int8",),
    "torch": ("bf16", "fp16"),
    "onnxruntime-genai": ("int4", "int8"),  # the builder's -p choices for CPU (besides fp32)
}
DEFAULT_DTYPE = {"quanto": "int8", "onnxruntime": "int8", "torch": "bf16", "onnxruntime-genai": "int8"}
# Formats only move forward; ``auto`` declares the furthest its candidates can reach.
FORMAT_ORDER = ("pytorch", "quanto", "onnx", "onnx-genai")
BACKEND_FORMAT = {"torch": "pytorch", "quanto": "quanto", "onnxruntime": "onnx", "onnxruntime-genai": "onnx-genai"}

# GPT-2-style models use transformers.pytorch_utils.Conv1D (a transposed Linear) for their
# projections; quanto only swaps nn.Linear, so it would quantize nothing and its saver refuses.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})

# What ``backend: auto`` may try, by name (also the names in ``candidates``).
CANDIDATES: dict[str, dict[str, Any]] = {
    "torch:bf16": {"backend": "torch", "dtype": "bf16"},
    "torch:fp16": {"backend": "torch", "dtype": "fp16"},
    "onnxruntime:int8-dynamic": {"backend": "onnxruntime", "dtype": "int8", "mode": "dynamic"},
    "onnxruntime:int8-static": {"backend": "onnxruntime", "dtype": "int8", "mode": "static"},
    "quanto:int8": {"backend": "quanto", "dtype": "int8"},
    "quanto:int4": {"backend": "quanto", "dtype": "int4"},
    "quanto:fp8": {"backend": "quanto", "dtype": "fp8"},
    "quanto:int8-a8": {"backend": "quanto", "dtype": "int8", "activations": "int8"},
    # causal LMs only; not in DEFAULT_CANDIDATES yet
    "onnxruntime-genai:int4": {"backend": "onnxruntime-genai", "dtype": "int4"},
    "onnxruntime-genai:int8": {"backend": "onnxruntime-genai", "dtype": "int8"},
}
# fp16 matmuls on CPU are emulated (slow); ONNX Runtime int8 and quanto kernels target CPU/CUDA resp.
DEFAULT_CANDIDATES = {
    "cpu": ["torch:bf16", "onnxruntime:int8-dynamic", "quanto:int8"],
    "cuda": ["torch:bf16", "torch:fp16", "quanto:int8"],
}
OP_TYPES = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "Add", "Mul",
            "Transpose", "Softmax", "LayerNormalization")
# Used when no data is given (dynamic modes only): the fidelity check still runs on something.
FALLBACK_TEXTS = [
    "The movie was a delight from start to finish.",
    "I would not recommend this product to anyone.",
    "Stocks fell sharply after the announcement on Tuesday.",
    "What a wonderful day to go for a walk in the park!",
    "The service was slow and the food arrived cold.",
    "Researchers published the results in a peer-reviewed journal.",
    "Honestly, it was fine, nothing special.",
    "Thanks for the quick reply, that solved my problem.",
]


class QuantizationConfig(TechniqueConfig):
    backend: Backend = "auto"
    """auto (measure and choose), quanto, onnxruntime, torch or onnxruntime-genai (causal LMs)."""
    dtype: Literal["int8", "int4", "fp8", "bf16", "fp16"] | None = None
    """Weight type. quanto: int8 | int4 | fp8 (default int8); onnxruntime: int8; torch: bf16 | fp16
    (default bf16); onnxruntime-genai: int4 | int8 (default int8). Not used with auto (see ``candidates``)."""
    activations: Literal["none", "int8", "fp8"] = "none"
    """quanto only: also quantize activations, with ranges calibrated on the training data."""
    exclude: list[str] = Field(default_factory=lambda: ["lm_head"])
    """quanto and onnxruntime: module-name patterns (fnmatch, e.g. lm_head, encoder.layer.0.*) whose
    layers stay in float. onnxruntime matches the module path each exported node comes from."""
    mode: Literal["dynamic", "static"] = "dynamic"
    """onnxruntime only: dynamic (activations quantized per batch) or static (calibrated on data)."""
    per_channel: bool = True
    """onnxruntime: one scale per output channel (kept MiniLM's cosine at 0.99)."""
    reduce_range: bool = False
    """onnxruntime: 7-bit weights, for CPUs without VNNI where 8-bit can saturate."""
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """onnxruntime static mode: how activation ranges are chosen."""
    op_types: list[str] | None = None
    """onnxruntime: operator types to quantize (default: onnxruntime's choice for the mode)."""
    graph_optimization: Literal["auto", "bert-fusion", "none", "unfused-layernorm"] = "auto"
    """onnxruntime: ``bert-fusion``: ONNX Runtime's offline BERT fusions; ``none``: the exported graph
    with ONNX Runtime's default load-time optimizations; ``unfused-layernorm``: the exported graph
    with its residual additions written so that ONNX Runtime's load-time SkipLayerNormFusion does
    not apply (the choice lives in the graph itself: a bare ``InferenceSession`` runs what was
    timed). ``auto`` times every option and keeps the fastest."""
    opset: int = Field(17, ge=14, le=21)
    calibration_samples: int = Field(64, gt=0, le=100_000)
    """Training texts used to calibrate, to check fidelity and (auto) to time."""
    sequence_length: int = Field(128, gt=0, le=8192)
    batch_size: int = Field(8, gt=0, le=1024)
    candidates: list[str] | None = None
    """auto only: names from CANDIDATES to try (default depends on the device)."""
    min_cosine: float = Field(0.98, gt=0.0, le=1.0)
    """auto: drop candidates whose mean cosine to the input model's outputs is below this."""
    min_agreement: float = Field(0.9, ge=0.0, le=1.0)
    """auto: for logits (classification / causal LM), minimum top-1 agreement with the input model."""
    threads: int = Field(1, gt=0, le=1024)
    """auto: CPU threads while timing (PyTorch and ONNX Runtime alike); onnxruntime-genai: the
    ``intra_op_num_threads`` written into genai_config.json."""
    timing_batches: int = Field(5, gt=0, le=100)
    if_none_pass: Literal["fail", "keep-input"] = "fail"
    """auto: when no candidate passes, ``fail`` (exit 3, every candidate's measurements in the
    message) or ``keep-input`` (the step returns its input unquantized, recorded in the changes)."""
    tie_margin: float = Field(0.1, ge=0.0, le=1.0)
    """auto: candidates whose median latency is within this fraction of the fastest count as tied,
    and the smallest artifact among them wins. Timing on a shared CPU moves by ~10%; without a
    margin the choice between close candidates (e.g. bf16 vs ONNX int8) flipped from run to run."""

    @model_validator(mode="after")
    def _consistent(self) -> QuantizationConfig:
        # "Given" means changed from its default: a resolved recipe (hfcompress.yaml) writes every
        # field with its default value and must load back to an equal recipe.
        fields = type(self).model_fields
        given = {name for name in self.model_fields_set
                 if getattr(self, name) != fields[name].get_default(call_default_factory=True)}
        backend = self.backend
        if backend == "auto":
            if self.dtype is not None:
                raise ValueError(
                    "dtype is chosen per candidate with backend auto; list candidates instead "
                    f"(allowed: {', '.join(CANDIDATES)}) or pick a backend"
                )
            unknown = [c for c in self.candidates or [] if c not in CANDIDATES]
            if unknown:
                raise ValueError(f"candidates: unknown {unknown}; allowed: {', '.join(CANDIDATES)}")
            if self.candidates is not None and not self.candidates:
                raise ValueError(f"candidates: give at least one of {', '.join(CANDIDATES)}")
        else:
            if self.dtype is not None and self.dtype not in DTYPES[backend]:
                raise ValueError(
                    f"dtype {self.dtype!r} is not supported by backend {backend!r}; allowed: "
                    f"{', '.join(DTYPES[backend])}"
                    + (". For 4-bit weights use backend quanto, or onnxruntime-genai for causal LMs"
                       if self.dtype == "int4" else "")
                )
            if given & {"candidates", "if_none_pass"}:
                raise ValueError(f"{', '.join(sorted(given & {'candidates', 'if_none_pass'}))}: only used with backend auto")
        if self.activations != "none" and backend not in ("quanto", "auto"):
            raise ValueError(f"activations is a quanto option; backend {backend!r} does not use it "
                             "(onnxruntime quantizes activations in both modes; torch casts them)")
        onnx_only = {"mode", "calibration_method", "op_types", "graph_optimization", "per_channel", "reduce_range"}
        if backend in ("quanto", "torch", "onnxruntime-genai") and given & onnx_only:
            raise ValueError(f"{', '.join(sorted(given & onnx_only))}: onnxruntime options; backend is {backend!r}")
        if backend == "torch" and "exclude" in given:
            raise ValueError("exclude is a quanto/onnxruntime option; backend torch casts every layer")
        if backend == "onnxruntime-genai" and "exclude" in given:
            raise ValueError("exclude is a quanto/onnxruntime option; backend onnxruntime-genai quantizes every "
                             "MatMul the model builder emits (lm_head included)")
        bad_ops = [op for op in self.op_types or [] if op not in OP_TYPES]
        if bad_ops:
            raise ValueError(f"op_types: unknown {bad_ops}; allowed: {', '.join(OP_TYPES)}")
        return self

    def resolved_dtype(self) -> str:
        return self.dtype or DEFAULT_DTYPE[self.backend]

    def for_candidate(self, name: str) -> QuantizationConfig:
        """This config with a candidate's backend/dtype/mode (auto's shared settings kept)."""
        values = self.model_dump(exclude={"candidates", "backend", "dtype", "activations", "mode", "if_none_pass"})
        backend = CANDIDATES[name]["backend"]
        if backend in ("torch", "onnxruntime-genai"):
            values.pop("exclude")
        if backend != "onnxruntime":
            for key in ("calibration_method", "op_types", "graph_optimization", "per_channel", "reduce_range"):
                values.pop(key)
        return QuantizationConfig.model_validate({**values, **CANDIDATES[name]})


def _pick(passing: dict[str, Any], measured: dict[str, dict[str, Any]], timings: dict[str, dict[str, float]],
          margin: float) -> str:
    """The fastest candidate, or the smallest one among those within ``margin`` of the fastest."""
    fastest = min(timings[n]["median"] for n in passing)
    tied = [n for n in passing if timings[n]["median"] <= fastest * (1.0 + margin)]
    return min(tied, key=lambda n: (measured[n].get("size_bytes") or float("inf"), timings[n]["median"]))


def _candidate_names(config: QuantizationConfig, device_type: str) -> list[str]:
    return list(config.candidates or DEFAULT_CANDIDATES.get(device_type, DEFAULT_CANDIDATES["cpu"]))


def _needs_data(config: QuantizationConfig) -> bool:
    if config.backend == "auto":
        return True  # auto times and checks candidates on real batches of the user's data
    if config.backend == "onnxruntime":
        return config.mode == "static"
    if config.backend == "quanto":
        return config.activations != "none"
    return False


class Quantization(Technique[QuantizationConfig]):
    name = "quantization"
    summary = "int8/int4/fp8 (quanto), int8 ONNX Runtime, bf16/fp16 casts, or auto: measured choice"
    Config = QuantizationConfig
    accepts_formats = ("pytorch",)
    produces_formats = ("pytorch", "quanto", "onnx", "onnx-genai")  # BACKEND_FORMAT's values

    def output_format(self, config: QuantizationConfig) -> str:
        if config.backend != "auto":
            return BACKEND_FORMAT[config.backend]
        names = config.candidates or [n for names in DEFAULT_CANDIDATES.values() for n in names]
        formats = {BACKEND_FORMAT[CANDIDATES[n]["backend"]] for n in names}
        return max(formats, key=FORMAT_ORDER.index)

    def data_requirement(self, config: QuantizationConfig) -> Literal["none", "text", "labels"]:
        return "text" if _needs_data(config) else "none"

    def check(self, config: QuantizationConfig, target: ModelTarget) -> None:
        where = f"quantization (backend {config.backend})"
        if target.format != "pytorch":
            raise BadInputError(
                f"{where}: needs a PyTorch model, but the model is {target.format!r} at this step. "
                "Put quantization after pruning/distillation, and use one quantization step."
            )
        if target.task not in TASKS:
            raise BadInputError(f"{where}: task {target.task!r} unsupported; supported: {', '.join(TASKS)}")
        if _needs_data(config) and not target.has_data:
            why = {
                "auto": "backend auto measures candidates on real batches of your data",
                "onnxruntime": "mode static calibrates activation ranges on data",
                "quanto": f"activations {config.activations} are calibrated on data",
            }[config.backend]
            fix = {
                "auto": "add a `data:` section, or pick a backend (onnxruntime dynamic and torch need no data)",
                "onnxruntime": "add a `data:` section to the recipe, or use mode: dynamic",
                "quanto": "add a `data:` section to the recipe, or set activations: none",
            }[config.backend]
            raise BadInputError(f"{where}: {why}, but the recipe has no data ({target.architecture}); {fix}.")
        if config.backend == "quanto" and target.model_type in CONV1D_MODEL_TYPES:
            raise BadInputError(
                f"{where}: {target.architecture} ({target.model_type}) keeps its projections in transformers' "
                "Conv1D layers, which optimum-quanto does not quantize (its reload then refuses the model). Use "
                "backend onnxruntime (int8) or torch (bf16) for this model, or backend auto."
            )
        if config.backend == "onnxruntime" and target.task == "text-generation":
            log.info("%s: causal LMs are exported logits-only, without a KV cache", where)
        if config.backend == "onnxruntime-genai":
            from .genai_runtime import unsupported_reason

            if target.task != "text-generation":
                raise BadInputError(f"{where}: builds causal LMs (task text-generation) only; the task is "
                                    f"{target.task!r}. Use backend onnxruntime, quanto or torch for this model.")
            reason = unsupported_reason(target.config)
            if reason:
                raise BadInputError(f"{where}: {target.architecture} ({target.model_type}): {reason}. Use backend "
                                    "onnxruntime, quanto or torch for this model.")

    # -- apply -----------------------------------------------------------------------------
    def apply(self, state: ModelState, config: QuantizationConfig, ctx: StepContext) -> StepResult:
        texts = _calibration_texts(ctx, config)
        reference = _reduced_outputs(state, texts, config)
        if config.backend == "auto":
            return self._auto(state, config, ctx, texts, reference)
        started = time.perf_counter()
        new_state, details = _build(state, config, ctx, texts, work_dir=Path(ctx.work_dir), copy_model=False)
        changes: dict[str, Any] = {
            "backend": config.backend, **details, "build_seconds": round(time.perf_counter() - started, 2),
            "fidelity_to_input": _fidelity(reference, _reduced_outputs(new_state, texts, config), state.task),
            "fidelity_texts": len(texts), "fidelity_data": "calibration" if ctx.train_data is not None else "built-in",
        }
        return StepResult(new_state, changes)

    def _auto(self, state: ModelState, config: QuantizationConfig, ctx: StepContext, texts: list[str],
              reference: Any) -> StepResult:
        device = _device_of(state)
        batches = _timing_batches(state, texts, config)
        measured: dict[str, dict[str, Any]] = {}
        passing: dict[str, ModelState] = {}
        for name in _candidate_names(config, device.type):
            row: dict[str, Any] = {"candidate": name}
            measured[name] = row
            reason = _unsupported_reason(name, device, state)
            if reason:
                row.update(status="skipped", reason=reason)
                continue
            try:
                started = time.perf_counter()
                candidate, details = _build(state, config.for_candidate(name), ctx, texts,
                                            work_dir=Path(ctx.work_dir) / name.replace(":", "-"), copy_model=True)
                row["build_seconds"] = round(time.perf_counter() - started, 2)
                row.update({k: v for k, v in details.items() if k in ("size_bytes", "graph_optimization")})
            except Exception as exc:  # one broken candidate must not stop the search
                log.warning("quantization auto: candidate %s failed: %s", name, exc)
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
                continue
            row["fidelity"] = _fidelity(reference, _reduced_outputs(candidate, texts, config), state.task)
            failed = _quality_failure(row["fidelity"], config, state.task)
            if failed:
                row.update(status="rejected", reason=failed)
                continue
            row["status"] = "passed"
            passing[name] = candidate
        # Time the input and every passing candidate round-robin (one batch of each in turn):
        # on a shared machine a busy neighbour then slows all of them alike, where timing one
        # after the other would hand the choice to whoever ran in a quiet moment.
        timings = _latency_round_robin({"input": state, **passing}, batches, config.threads)
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
        best = _pick(passing, measured, timings, config.tie_margin) if passing else None
        for name in measured:  # drop the other candidates' exports from the work dir
            if name != best:
                shutil.rmtree(Path(ctx.work_dir) / name.replace(":", "-"), ignore_errors=True)
        if best is None:
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
        changes["chosen"] = best
        chosen = passing[best]
        chosen.info.setdefault("quantization", {})["auto"] = {"chosen": best, "candidates": list(measured)}
        return StepResult(chosen, changes)

    # -- reload ----------------------------------------------------------------------------
    @classmethod
    def load_artifact(cls, path: Path, info: dict[str, Any]) -> ModelState:
        from hfcompress.plugin import load_tokenizer

        path = Path(path)
        fmt = info.get("format")
        task = info.get("task") or "feature-extraction"
        state_info = dict(info.get("info") or {})
        tokenizer = load_tokenizer(path)
        if fmt == "onnx":
            import json

            from transformers import PretrainedConfig

            from hfcompress.plugin import find_onnx_file

            from . import onnx_runtime

            # The generic config class: an ONNX folder needs no modeling code, even when the
            # PyTorch model had custom code (e.g. pruned heads).
            config = PretrainedConfig.from_dict(json.loads((path / "config.json").read_text()))
            onnx_file = find_onnx_file(path)  # model.onnx, or onnx/model.onnx in a sentence-transformers folder
            if onnx_file is None:
                raise BadInputError(f"{path}: config.json says format onnx, but the folder has no model.onnx")
            model = onnx_runtime.OnnxModel(onnx_file, config, task)
            return ModelState(model, tokenizer, task, format="onnx", saver=_save_onnx, loader=cls.name,
                              info=state_info)
        if fmt == "quanto":
            qinfo = state_info.get("quantization", {})
            wrapper_cls = _pruned_quanto_wrapper(path)  # our own pruned-model classes: no remote code runs
            kwargs = {}
            if wrapper_cls is None:
                wrapper_cls = _quanto_wrapper(task)
                if qinfo.get("trust_remote_code"):
                    kwargs["trust_remote_code"] = True
            model = wrapper_cls.from_pretrained(str(path), **kwargs)._wrapped
            return ModelState(model, tokenizer, task, format="quanto", saver=_save_quanto, loader=cls.name,
                              info=state_info)
        if fmt == "onnx-genai":
            from transformers import AutoConfig

            from .genai_runtime import GenaiModel

            genai = GenaiModel(path, AutoConfig.from_pretrained(str(path)))
            return ModelState(genai, tokenizer, task, format="onnx-genai", saver=_save_genai, loader=cls.name,
                              info=state_info)
        raise BadInputError(f"{path}: quantization cannot load format {fmt!r}; it writes 'onnx', 'onnx-genai' and "
                            "'quanto' folders")


# -- building one quantized model ---------------------------------------------------------------
def _build(state: ModelState, config: QuantizationConfig, ctx: StepContext, texts: list[str], *,
           work_dir: Path, copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    if config.backend == "torch":
        return _build_torch(state, config, copy_model)
    if config.backend == "quanto":
        return _build_quanto(state, config, texts, copy_model)
    if config.backend == "onnxruntime-genai":
        return _build_genai(state, config, work_dir)
    return _build_onnx(state, config, texts, work_dir)


def _info(state: ModelState, details: dict[str, Any]) -> dict[str, Any]:
    info = copy.deepcopy(state.info)
    info["quantization"] = details
    return info


def _build_torch(state: ModelState, config: QuantizationConfig, copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.resolved_dtype()]
    model = copy.deepcopy(state.model) if copy_model else state.model
    model = model.to(dtype)
    details = {"backend": "torch", "dtype": config.resolved_dtype(), "size_bytes": _tensor_bytes(model)}
    # Same saver/loader as the input: a bf16 copy of a custom-code model saves the same way,
    # and transformers reloads a checkpoint in the dtype it was saved in.
    return ModelState(model, state.tokenizer, state.task, format="pytorch", saver=state.saver,
                      loader=state.loader, info=_info(state, details)), details


QUANTO_TYPES: dict[str, str] = {"int8": "qint8", "int4": "qint4", "fp8": "qfloat8"}


def _build_quanto(state: ModelState, config: QuantizationConfig, texts: list[str],
                  copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    import torch
    from optimum import quanto
    from optimum.quanto import Calibration, freeze, quantize

    model = copy.deepcopy(state.model) if copy_model else state.model
    weights = getattr(quanto, QUANTO_TYPES[config.resolved_dtype()])
    activations = getattr(quanto, QUANTO_TYPES[config.activations]) if config.activations != "none" else None
    quantize(model, weights=weights, activations=activations, exclude=config.exclude or None)
    calibrated = 0
    if activations is not None:
        # Activation ranges come from real batches; no_grad (not inference_mode: qint4 fails there).
        probe = ModelState(model, state.tokenizer, state.task)
        with torch.no_grad(), Calibration(momentum=0.9):
            for batch in _batches(probe, texts, config):
                _forward(probe, batch)
                calibrated += int(batch["input_ids"].shape[0])
    freeze(model)
    config_obj = getattr(model, "config", None)
    details = {
        "backend": "quanto", "weights": config.resolved_dtype(), "activations": config.activations,
        "exclude": list(config.exclude), "calibration_texts": calibrated,
        "quantized_modules": _count_quantized(model), "size_bytes": _tensor_bytes(model),
        "trust_remote_code": bool(getattr(config_obj, "auto_map", None)),
    }
    return ModelState(model, state.tokenizer, state.task, format="quanto", saver=_save_quanto,
                      loader=Quantization.name, info=_info(state, details)), details


def _build_onnx(state: ModelState, config: QuantizationConfig, texts: list[str],
                work_dir: Path) -> tuple[ModelState, dict[str, Any]]:
    from . import onnx_runtime as ort_tools

    work_dir.mkdir(parents=True, exist_ok=True)
    model_config = state.model.config
    exported = work_dir / "exported.onnx"
    started = time.perf_counter()
    input_names = ort_tools.export(state.model, state.tokenizer, state.task, exported, opset=config.opset)
    details: dict[str, Any] = {
        "backend": "onnxruntime", "dtype": "int8", "mode": config.mode, "opset": config.opset,
        "per_channel": config.per_channel, "reduce_range": config.reduce_range, "inputs": input_names,
        "exclude": list(config.exclude),
        "export_seconds": round(time.perf_counter() - started, 2),
        "kv_cache": False if state.task == "text-generation" else None,
    }
    if state.task == "text-generation":
        details["note"] = "exported logits-only without a KV cache: fine for scoring, slow for generation"
    feed = ort_tools.sample_feed(state.tokenizer, input_names, texts[:8] or FALLBACK_TEXTS)
    calib_feeds: list[dict[str, Any]] = []
    if config.mode == "static":
        # Full batches of one shape only: the entropy/percentile calibrators stack them.
        full = max(config.batch_size, len(texts) - len(texts) % config.batch_size)
        calib_feeds = [ort_tools.sample_feed(state.tokenizer, input_names, texts[i: i + config.batch_size],
                                             max_length=config.sequence_length, fixed_length=True)
                       for i in range(0, min(full, len(texts)), config.batch_size)]
        details.update(calibration_method=config.calibration_method, calibration_texts=len(texts))
    if config.op_types:
        details["op_types"] = list(config.op_types)

    def quantized(src: Path, dst: Path) -> Path:
        excluded = ort_tools.nodes_matching(src, config.exclude)
        details.setdefault("excluded_nodes", {})[dst.parent.name] = len(excluded)
        if config.mode == "dynamic":
            ort_tools.quantize_dynamic(src, dst, per_channel=config.per_channel, reduce_range=config.reduce_range,
                                       op_types=config.op_types, exclude_nodes=excluded)
        else:
            ort_tools.quantize_static(src, dst, calib_feeds, method=config.calibration_method,
                                      per_channel=config.per_channel, reduce_range=config.reduce_range,
                                      op_types=config.op_types, exclude_nodes=excluded)
        return dst

    plain_dir, fused_dir, unfused_dir = work_dir / "plain", work_dir / "fused", work_dir / "unfused"
    options: dict[str, Path] = {}
    if config.graph_optimization in ("auto", "none", "unfused-layernorm"):
        plain_dir.mkdir(exist_ok=True)
        plain = quantized(exported, plain_dir / ort_tools.ONNX_FILE)
        if config.graph_optimization in ("auto", "none"):
            options["none"] = plain
        # Only BERT-family graphs have the residual Add + LayerNormalization pairs it concerns.
        if config.graph_optimization == "unfused-layernorm" or (
                config.graph_optimization == "auto" and ort_tools.bert_like(model_config)):
            unfused_dir.mkdir(exist_ok=True)
            unfused = unfused_dir / ort_tools.ONNX_FILE
            details["unfused_layernorm_residuals"] = ort_tools.keep_layernorm_unfused(plain, unfused)
            options["unfused-layernorm"] = unfused
    if config.graph_optimization in ("auto", "bert-fusion"):
        fused_dir.mkdir(exist_ok=True)
        report = ort_tools.optimize(exported, work_dir / "optimized.onnx", model_config, feed)
        details.update(report)
        if report["graph_optimization"] == "bert-fusion":
            options["bert-fusion"] = quantized(work_dir / "optimized.onnx", fused_dir / ort_tools.ONNX_FILE)
        elif "none" not in options:
            plain_dir.mkdir(exist_ok=True)
            options["none"] = quantized(exported, plain_dir / ort_tools.ONNX_FILE)
    if len(options) > 1:
        # "Where they help": fusions change which kernels the quantized graph uses (e.g. a
        # QAttention instead of int8 MatMuls) and are not always faster, so time both.
        probe_texts = (texts or FALLBACK_TEXTS) * 2
        probes = {key: ModelState(ort_tools.OnnxModel(path, model_config, state.task, num_threads=config.threads),
                                  state.tokenizer, state.task, format="onnx") for key, path in options.items()}
        batches = _timing_batches(state, probe_texts, config)
        timings = _latency_round_robin(probes, batches, config.threads)
        choice = min(timings, key=lambda k: timings[k]["median"])
        details["graph_optimization_timings_ms"] = timings
    else:
        choice = next(iter(options))
    details["graph_optimization"] = choice
    final = options[choice]
    # Intermediate graphs (fp32 export, fused fp32, the slower quantized option) are 100s of MB
    # for larger models and live in the step's work dir; only the chosen graph is kept.
    graphs = [p for d in (plain_dir, fused_dir, unfused_dir) for p in d.glob("*.onnx")]
    for leftover in [exported, work_dir / "optimized.onnx", *graphs]:
        if leftover != final:
            leftover.unlink(missing_ok=True)
    model = ort_tools.OnnxModel(final, model_config, state.task)
    details["size_bytes"] = final.stat().st_size
    return ModelState(model, state.tokenizer, state.task, format="onnx", saver=_save_onnx,
                      loader=Quantization.name, info=_info(state, details)), details


def _build_genai(state: ModelState, config: QuantizationConfig, work_dir: Path) -> tuple[ModelState, dict[str, Any]]:
    from .genai_runtime import GenaiModel, build

    folder, details = build(state.model, state.tokenizer, config.resolved_dtype(), work_dir, config.threads)
    model = GenaiModel(folder, state.model.config)
    return ModelState(model, state.tokenizer, state.task, format="onnx-genai", saver=_save_genai,
                      loader=Quantization.name, info=_info(state, details)), details


def _unsupported_reason(name: str, device: Any, state: ModelState) -> str | None:
    backend = CANDIDATES[name]["backend"]
    if backend == "onnxruntime-genai":
        from .genai_runtime import unsupported_reason

        if state.task != "text-generation":
            return f"onnxruntime-genai builds causal LMs only; the task is {state.task!r}"
        if device.type != "cpu":
            return f"the onnxruntime-genai build here targets CPU; the target device is {device.type}"
        return unsupported_reason(state.config)
    if backend == "quanto" and getattr(state.config, "model_type", None) in CONV1D_MODEL_TYPES:
        return "optimum-quanto does not quantize transformers' Conv1D layers (GPT-2 style models)"
    if backend == "onnxruntime" and device.type != "cpu":
        return f"the ONNX Runtime int8 kernels used here run on CPU; the target device is {device.type}"
    if name == "torch:bf16" and device.type == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
    if name == "torch:fp16" and device.type == "cpu":
        return None  # allowed when listed explicitly; measured like any other
    return None


# -- saving and loading -------------------------------------------------------------------------
def _save_onnx(state: ModelState, path: Path) -> None:
    from hfcompress.plugin import onnx_file_for

    src = Path(state.model.path)
    # model.onnx, or onnx/model.onnx when save_state put a sentence-transformers pipeline here first
    # (that backend's layout: SentenceTransformer(path, backend="onnx") loads it as is).
    dst = onnx_file_for(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    if state.model.config is not None:
        import json

        state.model.config.save_pretrained(str(path))
        config_file = path / "config.json"
        data = json.loads(config_file.read_text())
        # An ONNX folder carries no PyTorch modeling code: an auto_map left in config.json
        # (head-pruned models) would point plain transformers at files that are not there.
        data.pop("auto_map", None)
        # config.json must name a model_type transformers knows (AutoConfig, AutoTokenizer and
        # sentence-transformers read it first). A config reloaded from an ONNX folder is the generic
        # PretrainedConfig, which writes none; older pruned folders named the pruned classes' own type.
        stock = str(data.get("model_type") or getattr(state.model.config, "model_type", "") or "")
        if stock:
            data["model_type"] = stock.removeprefix("hfcompress-pruned-")
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_genai(state: ModelState, path: Path) -> None:
    import json

    from .genai_runtime import copy_folder

    copy_folder(Path(state.model.path), path)  # model.onnx, model.onnx.data, genai_config.json
    if state.model.config is not None:
        state.model.config.save_pretrained(str(path))
        config_file = path / "config.json"
        data = json.loads(config_file.read_text())
        data.pop("auto_map", None)  # no PyTorch modeling code in this folder
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


_WRAPPERS: dict[str, Any] = {}


def _quanto_wrapper(task: str) -> Any:
    """quanto's QuantizedTransformersModel subclass whose ``auto_class`` matches the task."""
    if task not in _WRAPPERS:
        import transformers
        from optimum.quanto import QuantizedTransformersModel

        auto = {"feature-extraction": transformers.AutoModel,
                "text-classification": transformers.AutoModelForSequenceClassification,
                "text-generation": transformers.AutoModelForCausalLM}[task]
        _WRAPPERS[task] = type(f"Quantized{auto.__name__}", (QuantizedTransformersModel,), {"auto_class": auto})
    return _WRAPPERS[task]


def _save_quanto(state: ModelState, path: Path) -> None:
    readme = path / "README.md"
    had_readme = readme.exists()
    _quanto_wrapper(state.task)(state.model).save_pretrained(str(path))
    # ModelHubMixin writes a generic model card; the evaluation card is the pipeline's.
    if not had_readme and readme.exists():
        readme.unlink()


def _pruned_quanto_wrapper(path: Path) -> Any:
    """For a folder holding a head-pruned model, a quanto wrapper that rebuilds it with the
    head-pruning plugin's own class (no remote code runs); None for any other folder.

    quanto rebuilds the empty model as ``auto_class.from_config(AutoConfig.from_pretrained(path))``.
    A pruned folder's config.json names the stock family as its model_type (so that tokenizers and
    config readers need no remote code, see modeling_hfcompress_pruned), so AutoConfig returns the
    stock config, from which an Auto class would build full-size layers. Here ``from_config`` builds
    the class that ``architectures`` names, from its own config class.
    """
    import json

    data = json.loads((path / "config.json").read_text())
    if "pruned_layout" not in data and not str(data.get("model_type", "")).startswith("hfcompress-pruned-"):
        return None
    from hfcompress_plugins.modeling import modeling_hfcompress_pruned as pruned_code
    from optimum.quanto import QuantizedTransformersModel

    pruned_code.register_auto_classes()  # folders written before the stock model_type name their own
    arch = str((data.get("architectures") or [""])[0])
    model_cls = getattr(pruned_code, arch, None)
    if model_cls is None:
        raise BadInputError(f"{path}: config.json names architecture {arch!r}, which the head-pruning plugin's "
                            "modeling code does not define")
    pruned_cls: Any = model_cls
    config = pruned_cls.config_class.from_pretrained(str(path))

    class OwnClass:
        @staticmethod
        def from_config(stock_config: Any) -> Any:
            return pruned_cls._from_config(config)

    return type(f"Quantized{arch}", (QuantizedTransformersModel,), {"auto_class": OwnClass})


# -- measuring ----------------------------------------------------------------------------------
def _calibration_texts(ctx: StepContext, config: QuantizationConfig) -> list[str]:
    data = ctx.train_data
    if data is None:
        return list(FALLBACK_TEXTS)
    texts = [t for t in data["text"][: config.calibration_samples * 2] if isinstance(t, str) and t.strip()]
    return texts[: config.calibration_samples]


def _device_of(state: ModelState) -> Any:
    from hfcompress.plugin import model_device

    return model_device(state)


def _batches(state: ModelState, texts: list[str], config: QuantizationConfig) -> list[dict[str, Any]]:
    from hfcompress.plugin import tokenize

    return [tokenize(state, texts[i: i + config.batch_size], config.sequence_length)
            for i in range(0, len(texts), config.batch_size)]


def _timing_batches(state: ModelState, texts: list[str], config: QuantizationConfig) -> list[dict[str, Any]]:
    """Full batches only (batch_size × sequence_length), repeating texts if there are few."""
    pool = list(texts) or list(FALLBACK_TEXTS)
    need = config.batch_size * config.timing_batches
    while len(pool) < need:
        pool += pool
    return _batches(state, pool[:need], config)


def _forward(state: ModelState, batch: dict[str, Any]) -> Any:
    from hfcompress.plugin import forward

    return forward(state, batch)


def _reduced_outputs(state: ModelState, texts: list[str], config: QuantizationConfig) -> torch.Tensor:
    import torch

    from hfcompress.plugin import reduce_output

    outs = [reduce_output(state, _forward(state, b), b["attention_mask"]) for b in _batches(state, texts, config)]
    return torch.cat(outs).float()


def _fidelity(reference: torch.Tensor, outputs: torch.Tensor, task: str) -> dict[str, float]:
    import torch

    cos = torch.nn.functional.cosine_similarity(reference, outputs, dim=-1)
    result = {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6)}
    if task != "feature-extraction":
        result["top1_agreement"] = round(float((reference.argmax(-1) == outputs.argmax(-1)).float().mean()), 6)
    return result


def _quality_failure(fidelity: dict[str, float], config: QuantizationConfig, task: str) -> str | None:
    if fidelity["cosine_mean"] < config.min_cosine:
        return f"cosine {fidelity['cosine_mean']:.4f} < min_cosine {config.min_cosine}"
    if task != "feature-extraction" and fidelity.get("top1_agreement", 1.0) < config.min_agreement:
        return f"top-1 agreement {fidelity['top1_agreement']:.4f} < min_agreement {config.min_agreement}"
    return None


def _latency_round_robin(states: dict[str, ModelState], batches: list[dict[str, Any]],
                         threads: int) -> dict[str, dict[str, float]]:
    """Median/min ms per state: after a warm-up each, every batch runs on every state in turn."""
    import torch

    from hfcompress.plugin import fixed_threads

    times: dict[str, list[float]] = {name: [] for name in states}
    with fixed_threads(threads):
        for st in states.values():
            setter = getattr(st.model, "set_num_threads", None)
            if setter is not None:  # ONNX Runtime: same thread count as PyTorch
                setter(threads)
            _forward(st, batches[0])  # warm-up: allocations, kernel selection, lazy init
        for batch in batches:
            for name, st in states.items():
                cuda = _device_of(st).type == "cuda"
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                _forward(st, batch)
                if cuda:
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: {"median": round(statistics.median(t), 2), "min": round(min(t), 2)} for name, t in times.items()}


def _tensor_bytes(model: Any) -> int:
    """Bytes of weights in memory (quantized tensors count their packed data and scales)."""
    total = 0
    for tensor in list(model.state_dict().values()):
        if hasattr(tensor, "nbytes"):
            total += int(tensor.nbytes)
        else:  # quanto tensors: sum their inner tensors
            inner = getattr(tensor, "__tensor_flatten__", None)
            if inner is not None:
                names, _ = inner()
                total += sum(int(getattr(tensor, n).nbytes) for n in names)
    return total


def _count_quantized(model: Any) -> int:
    from optimum.quanto.nn import QModuleMixin

    return sum(1 for m in model.modules() if isinstance(m, QModuleMixin))


@hookimpl
def hfcompress_register_techniques(register: Any) -> None:
    register(Quantization)
