"""Backend ``onnxruntime``: ONNX export, ONNX Runtime's graph options where they time faster, then
dynamic int8 (default) or static int8 calibrated on data.

The runtime-specific work (export, fusions, quantizers, the ``OnnxModel`` session wrapper) is in
``onnx_runtime``; this module turns a config into those calls, chooses the graph and writes and
reloads the output folder: ``model.onnx`` (``onnx/model.onnx`` for a sentence-transformers model,
where its ONNX backend looks), which runs in plain onnxruntime.

    steps:
      - quantization: {backend: onnxruntime}                # dynamic int8, per-channel
      - quantization: {backend: onnxruntime, mode: static, calibration_method: percentile,
                       op_types: [MatMul]}
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import BadInputError, ModelState, ModelTarget

from . import onnx_runtime as ort_tools
from .backends import TECHNIQUE, step_info, write_runtime_config
from .measure import FALLBACK_TEXTS, latency_round_robin, timing_batches

if TYPE_CHECKING:  # pragma: no cover
    from .config import QuantizationConfig

log = logging.getLogger(__name__)


def check(config: QuantizationConfig, target: ModelTarget, where: str) -> None:
    if target.task == "text-generation":
        log.info("%s: causal LMs are exported logits-only, without a KV cache", where)


def data_needed(config: QuantizationConfig) -> tuple[str, str] | None:
    if config.mode != "static":
        return None
    return ("mode static calibrates activation ranges on data",
            "add a `data:` section to the recipe, or use mode: dynamic")


def skip_reason(name: str, device: Any, state: ModelState) -> str | None:
    if device.type != "cpu":
        return f"the ONNX Runtime int8 kernels used here run on CPU; the target device is {device.type}"
    return None


# -- building -----------------------------------------------------------------------------------
def build(state: ModelState, config: QuantizationConfig, texts: list[str], work_dir: Path,
          copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    """Export once (the model is not modified, so ``copy_model`` does not matter), quantize each
    graph option, keep the fastest; only the chosen graph stays in ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    exported = work_dir / "exported.onnx"
    input_names, details = _export(state, config, exported)
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
    options = _graph_options(state, config, exported, feed, calib_feeds, details)
    final = _choose_graph(state, config, texts, options, details)
    # Intermediate graphs (fp32 export, fused fp32, the slower quantized option) are 100s of MB
    # for larger models and live in the step's work dir; only the chosen graph is kept.
    graphs = [p for d in ("plain", "fused", "unfused") for p in (work_dir / d).glob("*.onnx")]
    for leftover in [exported, work_dir / "optimized.onnx", *graphs]:
        if leftover != final:
            leftover.unlink(missing_ok=True)
    model = ort_tools.OnnxModel(final, state.model.config, state.task)
    details["size_bytes"] = final.stat().st_size
    return ModelState(model, state.tokenizer, state.task, format="onnx", saver=save,
                      loader=TECHNIQUE, info=step_info(state, details)), details


def _export(state: ModelState, config: QuantizationConfig, exported: Path) -> tuple[list[str], dict[str, Any]]:
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
    return input_names, details


def _quantized(src: Path, dst: Path, config: QuantizationConfig, calib_feeds: list[dict[str, Any]],
               details: dict[str, Any]) -> Path:
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


def _graph_options(state: ModelState, config: QuantizationConfig, exported: Path, feed: dict[str, Any],
                   calib_feeds: list[dict[str, Any]], details: dict[str, Any]) -> dict[str, Path]:
    """The quantized graph of each ``graph_optimization`` option the config asks for, by option."""
    work_dir, model_config = exported.parent, state.model.config
    plain_dir, fused_dir, unfused_dir = work_dir / "plain", work_dir / "fused", work_dir / "unfused"
    options: dict[str, Path] = {}
    if config.graph_optimization in ("auto", "none", "unfused-layernorm"):
        plain_dir.mkdir(exist_ok=True)
        plain = _quantized(exported, plain_dir / ort_tools.ONNX_FILE, config, calib_feeds, details)
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
            options["bert-fusion"] = _quantized(work_dir / "optimized.onnx", fused_dir / ort_tools.ONNX_FILE,
                                                config, calib_feeds, details)
        elif "none" not in options:
            plain_dir.mkdir(exist_ok=True)
            options["none"] = _quantized(exported, plain_dir / ort_tools.ONNX_FILE, config, calib_feeds, details)
    return options


def _choose_graph(state: ModelState, config: QuantizationConfig, texts: list[str], options: dict[str, Path],
                  details: dict[str, Any]) -> Path:
    if len(options) > 1:
        # "Where they help": fusions change which kernels the quantized graph uses (e.g. a
        # QAttention instead of int8 MatMuls) and are not always faster, so time both.
        probe_texts = (texts or FALLBACK_TEXTS) * 2
        model_config = state.model.config
        probes = {key: ModelState(ort_tools.OnnxModel(path, model_config, state.task, num_threads=config.threads),
                                  state.tokenizer, state.task, format="onnx") for key, path in options.items()}
        batches = timing_batches(state, probe_texts, config)
        timings = latency_round_robin(probes, batches, config.threads)
        choice = min(timings, key=lambda k: timings[k]["median"])
        details["graph_optimization_timings_ms"] = timings
    else:
        choice = next(iter(options))
    details["graph_optimization"] = choice
    return options[choice]


# -- saving and loading -------------------------------------------------------------------------
def save(state: ModelState, path: Path) -> None:
    from hfcompress.plugin import onnx_file_for

    src = Path(state.model.path)
    # model.onnx, or onnx/model.onnx when save_state put a sentence-transformers pipeline here first
    # (that backend's layout: SentenceTransformer(path, backend="onnx") loads it as is).
    dst = onnx_file_for(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    if state.model.config is not None:
        write_runtime_config(state.model.config, path)


def load(path: Path, task: str, tokenizer: Any, info: dict[str, Any]) -> ModelState:
    from transformers import PretrainedConfig

    from hfcompress.plugin import find_onnx_file

    # The generic config class: an ONNX folder needs no modeling code, even when the
    # PyTorch model had custom code (e.g. pruned heads).
    config = PretrainedConfig.from_dict(json.loads((path / "config.json").read_text()))
    onnx_file = find_onnx_file(path)  # model.onnx, or onnx/model.onnx in a sentence-transformers folder
    if onnx_file is None:
        raise BadInputError(f"{path}: config.json says format onnx, but the folder has no model.onnx")
    model = ort_tools.OnnxModel(onnx_file, config, task)
    return ModelState(model, tokenizer, task, format="onnx", saver=save, loader=TECHNIQUE, info=info)
