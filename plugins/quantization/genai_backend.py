"""Backend ``onnxruntime-genai`` (causal LMs only): onnxruntime-genai's model builder, weight-only
int4 or int8 (default) with a KV cache. The folder holds ``model.onnx`` + ``genai_config.json`` and
generates with ``onnxruntime_genai`` alone; the runtime-specific work is in ``genai_runtime``.

    steps:
      - quantization: {backend: onnxruntime-genai, dtype: int4}   # causal LMs: KV cache, int4 weights
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import BadInputError, ModelState, ModelTarget

from . import genai_block_min, genai_blocks, genai_runtime
from .backends import TECHNIQUE, step_info

if TYPE_CHECKING:  # pragma: no cover
    from .config import QuantizationConfig


def check(config: QuantizationConfig, target: ModelTarget, where: str) -> None:
    if target.task != "text-generation":
        raise BadInputError(f"{where}: builds causal LMs (task text-generation) only; the task is "
                            f"{target.task!r}. Use backend onnxruntime, quanto or torch for this model.")
    reason = genai_runtime.unsupported_reason(target.config)
    if reason:
        raise BadInputError(f"{where}: {target.architecture} ({target.model_type}): {reason}. Use backend "
                            "onnxruntime, quanto or torch for this model.")
    if config.algorithm == "awq" and importlib.util.find_spec("nncf") is None:
        raise BadInputError(f"{where}: algorithm awq calibrates with NNCF, which is not installed; "
                            "pip install 'hfcompress[openvino]' (openvino + nncf), or use algorithm rtn / k_quant")


def data_needed(config: QuantizationConfig) -> tuple[str, str] | None:
    if config.algorithm == "awq":
        return ("algorithm awq calibrates the int4 weights on the recipe's training texts",
                "add a data section (e.g. data: vader:movie) or use algorithm rtn / k_quant")
    return None


def skip_reason(name: str, device: Any, state: ModelState) -> str | None:
    if state.task != "text-generation":
        return f"onnxruntime-genai builds causal LMs only; the task is {state.task!r}"
    if device.type != "cpu":
        return f"the onnxruntime-genai build here targets CPU; the target device is {device.type}"
    return genai_runtime.unsupported_reason(state.config)


def builder_options(config: QuantizationConfig) -> dict[str, str]:
    """The model builder's ``--extra_options`` for this config (none for fp32: nothing to round)."""
    if config.resolved_dtype() == "fp32" or _rewrites_fp32(config):  # the fp32 build is rounded here
        return {}
    # rtn is the builder's own default; passing algo_config=rtn selects another code path that
    # rounded differently (measured on SmolLM2 int8: perplexity +0.2% vs +0.001% with the default)
    options = {"block_size": str(config.group_size)}
    if config.algorithm != "rtn":
        options["algo_config"] = config.algorithm
    if config.int8_layers:
        options["matmul_mixed_precision"] = ",".join(f"{layer}:int8" for layer in config.int8_layers)
    return options


def _rewrites_fp32(config: QuantizationConfig) -> bool:
    """awq (NNCF), block_min and a separate LM-head block size round the builder's fp32 graph themselves."""
    return config.algorithm in ("awq", "block_min") or config.lm_head_group_size not in (None, config.group_size)


def build(state: ModelState, config: QuantizationConfig, texts: list[str], work_dir: Path,
          copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    """The builder reads a saved copy of the model, so ``copy_model`` does not matter."""
    rewrite = _rewrites_fp32(config)
    folder, details = genai_runtime.build(state.model, state.tokenizer, "fp32" if rewrite else config.resolved_dtype(),
                                          work_dir, config.threads, builder_options(config))
    if config.algorithm == "awq":
        details.update(_calibrate(folder, state, config, texts))
    elif config.algorithm == "block_min":
        details.update(genai_block_min.compress(folder, config.group_size))
    elif rewrite:
        assert config.lm_head_group_size is not None
        details.update(genai_blocks.requantize(folder, config.group_size, config.lm_head_group_size))
    if rewrite:  # the builder recorded its fp32 build; the folder now holds the rounded graph
        details.update(dtype=config.resolved_dtype(), size_bytes=genai_runtime.onnx_size(folder))
    model = genai_runtime.GenaiModel(folder, state.model.config)
    return ModelState(model, state.tokenizer, state.task, format="onnx-genai", saver=save,
                      loader=TECHNIQUE, info=step_info(state, details)), details


def _calibrate(folder: Path, state: ModelState, config: QuantizationConfig, texts: list[str]) -> dict[str, Any]:
    """NNCF's calibrated int4 on the fp32 build, fed the calibration texts as the graph's own inputs."""
    import numpy as np

    from . import genai_calibrated

    fp32 = genai_runtime.GenaiModel(folder)
    feeds = []
    for text in texts:  # already cut to calibration_samples (measure.calibration_texts)
        ids = state.tokenizer(text, return_tensors="np")["input_ids"][:, : config.sequence_length]
        if ids.shape[1]:
            feeds.append(fp32.prefill_feed(ids, np.ones_like(ids)))
    del fp32  # its session holds the fp32 weights the rewrite replaces
    return genai_calibrated.compress(folder, feeds, config.group_size, config.int4_ratio)


def save(state: ModelState, path: Path) -> None:
    genai_runtime.copy_folder(Path(state.model.path), path)  # model.onnx, model.onnx.data, genai_config.json
    if state.model.config is not None:
        state.model.config.save_pretrained(str(path))
        config_file = path / "config.json"
        data = json.loads(config_file.read_text())
        data.pop("auto_map", None)  # no PyTorch modeling code in this folder
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load(path: Path, task: str, tokenizer: Any, info: dict[str, Any]) -> ModelState:
    from transformers import AutoConfig

    genai = genai_runtime.GenaiModel(path, AutoConfig.from_pretrained(str(path)))
    return ModelState(genai, tokenizer, task, format="onnx-genai", saver=save, loader=TECHNIQUE, info=info)
