"""Backend ``openvino``: the ONNX export converted to an OpenVINO IR, then int8 (default) through
NNCF's post-training quantization calibrated on the recipe's training texts, or the IR as it is
(``dtype: fp32``; OpenVINO's CPU plugin runs it in bf16 where the CPU has AVX-512 BF16).

The runtime-specific work (conversion, NNCF, the ``OpenVinoModel`` wrapper) is in
``openvino_runtime``. The output folder holds ``openvino_model.xml`` + ``openvino_model.bin``
(``openvino/openvino_model.xml`` for a sentence-transformers model, where that library's OpenVINO
backend looks), which runs with ``openvino`` alone.

    steps:
      - quantization: {backend: openvino}                   # int8 weights and activations (NNCF)
      - quantization: {backend: openvino, dtype: fp32}      # the IR without quantization
      - quantization: {backend: openvino, exclude: ["encoder.layer.*.output.dense"]}
"""

from __future__ import annotations

import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import BadInputError, ModelState, ModelTarget

from . import onnx_runtime as ort_tools
from . import openvino_runtime as ov_tools
from .backends import TECHNIQUE, step_info, write_runtime_config

if TYPE_CHECKING:  # pragma: no cover
    from .config import QuantizationConfig


def check(config: QuantizationConfig, target: ModelTarget, where: str) -> None:
    if target.task == "text-generation":
        raise BadInputError(f"{where}: converts encoders (no KV cache in the IR), and the task is text-generation; "
                            "use backend onnxruntime-genai for causal LMs.")


def data_needed(config: QuantizationConfig) -> tuple[str, str] | None:
    if config.resolved_dtype() != "int8":
        return None
    return ("int8 calibrates activation ranges on data", "add a `data:` section to the recipe, or use dtype: fp32")


def skip_reason(name: str, device: Any, state: ModelState) -> str | None:
    if device.type != "cpu":
        return f"the OpenVINO build here targets its CPU plugin; the target device is {device.type}"
    if state.task == "text-generation":
        return "the IR is converted without a KV cache; causal LMs use onnxruntime-genai"
    return None


def build(state: ModelState, config: QuantizationConfig, texts: list[str], work_dir: Path,
          copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    """Export once (the model is not modified, so ``copy_model`` does not matter), convert, quantize."""
    work_dir.mkdir(parents=True, exist_ok=True)
    exported = work_dir / "exported.onnx"
    started = time.perf_counter()
    input_names = ort_tools.export(state.model, state.tokenizer, state.task, exported, opset=config.opset)
    model = ov_tools.convert(exported)
    dtype = config.resolved_dtype()
    details: dict[str, Any] = {
        "backend": "openvino", "dtype": dtype, "inputs": input_names,
        "openvino": version("openvino"), "export_seconds": round(time.perf_counter() - started, 2),
    }
    if dtype == "int8":
        ignored = ort_tools.nodes_matching(exported, config.exclude)
        # One sentence per sample at its own length, as NNCF's examples calibrate transformers:
        # padding would put the mask's constant rows into the activation statistics.
        feeds = [ort_tools.sample_feed(state.tokenizer, input_names, [text], max_length=config.sequence_length)
                 for text in texts]
        started = time.perf_counter()
        if config.accuracy_control:
            model, report = ov_tools.quantize_int8_within(
                model, feeds, _reference(state, input_names, feeds), max_cosine_drop=round(1.0 - config.min_cosine, 6),
                ignored_names=ignored, smooth_quant_alpha=config.smooth_quant_alpha)
            details.update(report)
        else:
            model = ov_tools.quantize_int8(model, feeds, ignored_names=ignored, smooth_quant_alpha=config.smooth_quant_alpha)
        details.update(method="nncf.quantize" + ("_with_accuracy_control" if config.accuracy_control else "")
                       + ", ModelType.TRANSFORMER (SmoothQuant, fast bias correction)",
                       nncf=version("nncf"), calibration_texts=len(feeds), exclude=list(config.exclude),
                       smooth_quant_alpha=config.smooth_quant_alpha,
                       excluded_nodes=len(ignored), quantize_seconds=round(time.perf_counter() - started, 2))
    xml = work_dir / ov_tools.OV_FILE
    ov_tools.save(model, xml)
    exported.unlink(missing_ok=True)
    details["size_bytes"] = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    runtime = ov_tools.OpenVinoModel(xml, state.model.config, state.task)
    return ModelState(runtime, state.tokenizer, state.task, format="openvino", saver=save,
                      loader=TECHNIQUE, info=step_info(state, details)), details


def _reference(state: ModelState, input_names: list[str], feeds: list[dict[str, Any]]) -> list[Any]:
    """The input model's pooled outputs on each calibration feed: what accuracy control keeps close."""
    import torch

    from hfcompress.plugin import forward

    with torch.no_grad():
        outs = [forward(state, {k: torch.from_numpy(v) for k, v in feed.items()}) for feed in feeds]
    key = "last_hidden_state" if state.task == "feature-extraction" else "logits"
    return [ov_tools.pooled(getattr(out, key).float().cpu().numpy()) for out in outs]


def ir_file_for(folder: Path) -> Path:
    """``openvino/openvino_model.xml`` in a sentence-transformers folder, ``openvino_model.xml`` otherwise."""
    from hfcompress.plugin import is_sentence_transformers

    if is_sentence_transformers(folder):
        return folder / ov_tools.OV_SUBFOLDER / ov_tools.OV_FILE
    return folder / ov_tools.OV_FILE


def save(state: ModelState, path: Path) -> None:
    src = Path(state.model.path)
    dst = ir_file_for(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_suffix(".bin"), dst.with_suffix(".bin"))
    if state.model.config is not None:
        write_runtime_config(state.model.config, path)


def load(path: Path, task: str, tokenizer: Any, info: dict[str, Any]) -> ModelState:
    from transformers import PretrainedConfig

    config = PretrainedConfig.from_dict(json.loads((path / "config.json").read_text()))
    xml = ov_tools.find_ir(path)
    if xml is None:
        raise BadInputError(f"{path}: config.json says format openvino, but the folder has no {ov_tools.OV_FILE}")
    model = ov_tools.OpenVinoModel(xml, config, task)
    return ModelState(model, tokenizer, task, format="openvino", saver=save, loader=TECHNIQUE, info=info)


def usage(folder: Path, task: str, where: str) -> str:
    """The card's snippet: a bare ``Core().compile_model`` on the IR (what was timed and evaluated)."""
    xml = ov_tools.find_ir(folder)
    rel = xml.relative_to(folder).as_posix() if xml is not None else ov_tools.OV_FILE
    out = "last_hidden_state" if task == "feature-extraction" else "logits"
    note = "  # mean-pool it with the attention mask" if task == "feature-extraction" else ""
    return (
        "import openvino as ov  # pip install openvino transformers (no PyTorch needed)\n"
        "from transformers import AutoTokenizer\n\n"
        f"folder = {where}\n"
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        f'model = ov.Core().compile_model(f"{{folder}}/{rel}", "CPU")\n'
        "names = {i.any_name for i in model.inputs}\n"
        'batch = tokenizer(["An example sentence."], padding=True, return_tensors="np")\n'
        f"{out} = model({{k: v for k, v in batch.items() if k in names}})[0]{note}\n"
    )
