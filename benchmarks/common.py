"""Building blocks shared by the suites: cache folder, sizes, ONNX export/sessions, hfcompress runs."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .flops import linear_shapes, linear_shapes_onnx, linear_shapes_openvino, openvino_compute_dtype
from .harness import Built

log = logging.getLogger("benchmarks")

__all__ = [
    "WEIGHT_SUFFIXES",
    "bench_cache",
    "build_hfcompress",
    "built_from_state",
    "folder_weight_bytes",
    "export_onnx",
    "forward_tensor",
    "onnx_built",
    "state_dict_bytes",
    "torch_dtype_of",
]

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".bin", ".pt", ".pth", ".gguf")


def bench_cache(*parts: str) -> Path:
    """``$HFCOMPRESS_CACHE/benchmarks`` when set, else ``benchmarks/.cache`` (git-ignored)."""
    env = os.environ.get("HFCOMPRESS_CACHE")
    root = Path(env) / "benchmarks" if env else Path(__file__).parent / ".cache"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dict_bytes(model: Any) -> int:
    """Bytes of the serialized weights, as ``torch.save(model.state_dict())`` writes them.

    Used for the in-memory baselines (bf16, torch.ao int8, quanto) so that their packed int8
    weights are counted as stored, not as the float tensors they replace.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def folder_weight_bytes(path: Path) -> int:
    """Bytes of the weight files in a model folder (tokenizer/config/card files excluded)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def torch_dtype_of(model: Any) -> str:
    """The compute dtype whose GEMM peak bounds this torch model: int8, bf16 or fp32."""
    import torch

    for module in model.modules():
        kind = type(module).__module__
        if "quantized" in kind and "dynamic" in kind:  # torch.ao dynamic int8: int8 x int8 GEMMs
            return "int8"
    for p in model.parameters():
        if p.dtype == torch.bfloat16:
            return "bf16"
    # quanto weight-only layers dequantize to the activation dtype: float GEMMs
    return "fp32"


def forward_tensor(model: Any, batch: dict[str, Any], task: str) -> Any:
    """Run a transformers-style model and return its main output tensor (hidden states / logits)."""
    out = model(**batch)
    if task == "feature-extraction":
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return out.logits if hasattr(out, "logits") else out[0]


def export_onnx(model: Any, tokenizer: Any, path: Path, task: str = "feature-extraction") -> Path:
    """``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch/sequence), cached by path.

    This is what a user does without optimum (optimum-onnx does not support transformers 5):
    eager attention for a clean trace, keyword call, one output.
    """
    import torch

    from hfcompress.model_io import MODEL_INPUTS

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(MODEL_INPUTS)
    if task == "text-generation":
        names = names[:2]
    out_name = "last_hidden_state" if task == "feature-extraction" else "logits"

    class KeywordCall(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            kwargs = dict(zip(names, args, strict=True))
            if task == "text-generation":
                kwargs["use_cache"] = False
            return forward_tensor(self.inner, kwargs, task)

    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    enc = tokenizer(["a short sentence", "a somewhat longer sentence so that padding appears"], padding=True,
                    return_tensors="pt")
    args = tuple(enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in names)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.no_grad():
        torch.onnx.export(KeywordCall(model).eval(), args, str(tmp), dynamo=False, opset_version=17,
                          input_names=names, output_names=[out_name],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, out_name]},
                          do_constant_folding=True)
    tmp.rename(path)
    return path


def onnx_built(path: Path, num_parameters: int, compute_dtype: str, info: dict[str, Any] | None = None,
               disabled_optimizers: list[str] | None = None) -> Built:
    """An ONNX Runtime variant: one session per thread count (``intra_op_num_threads``), CPU EP."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sessions: dict[int, Any] = {}
    current: dict[str, Any] = {}

    def set_threads(n: int) -> None:
        if n not in sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sessions[n] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                               disabled_optimizers=disabled_optimizers or None)
        current["session"] = sessions[n]

    set_threads(1)
    inputs = [i.name for i in current["session"].get_inputs()]

    def forward(batch: dict[str, Any]) -> Any:
        feed = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in inputs}
        return torch.from_numpy(current["session"].run(None, feed)[0])

    return Built(forward=forward, size_bytes=path.stat().st_size, num_parameters=num_parameters,
                 shapes=linear_shapes_onnx(path), compute_dtype=compute_dtype, set_threads=set_threads,
                 info=dict(info or {}, onnx_file=path.name))


def openvino_built(path: Path, num_parameters: int, info: dict[str, Any] | None = None) -> Built:
    """An OpenVINO variant: one compiled model per thread count (``INFERENCE_NUM_THREADS``), CPU
    plugin defaults otherwise (the precision it picks is what a user gets)."""
    import numpy as np
    import openvino as ov
    import torch

    core = ov.Core()
    model = core.read_model(str(path))
    compiled: dict[int, Any] = {}
    current: dict[str, Any] = {}

    def set_threads(n: int) -> None:
        if n not in compiled:
            compiled[n] = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": n})
        current["model"] = compiled[n]

    set_threads(1)
    inputs = {i.any_name for i in model.inputs}

    def forward(batch: dict[str, Any]) -> Any:
        feed = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in inputs}
        return torch.from_numpy(np.array(current["model"](feed)[0], dtype=np.float32))

    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return Built(forward=forward, size_bytes=size, num_parameters=num_parameters, shapes=linear_shapes_openvino(path),
                 compute_dtype=openvino_compute_dtype(path), set_threads=set_threads,
                 info=dict(info or {}, openvino_file=path.name))


def built_from_state(state: Any, folder: Path, task: str) -> Built:
    """A variant from an hfcompress output folder loaded with ``hfcompress.artifact.load_state``."""
    from hfcompress.models import num_parameters

    model = state.model
    marker = json.loads((folder / "config.json").read_text()).get("hfcompress", {})
    info = {"format": state.format, "loader": marker.get("loader"), "artifact": str(folder)}
    onnx_path = getattr(model, "onnx_file", None) or getattr(model, "path", None)  # onnx_file: onnxruntime-genai
    if onnx_path is not None and str(onnx_path).endswith(".xml"):  # an OpenVINO IR
        shapes, dtype = linear_shapes_openvino(onnx_path), openvino_compute_dtype(onnx_path)
        params = int(getattr(model, "num_parameters", 0) or 0)
    elif onnx_path is not None and str(onnx_path).endswith(".onnx"):
        shapes = linear_shapes_onnx(onnx_path)
        import onnx

        ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
        # MatMulNBits (onnxruntime-genai's weight-only int4/int8) computes in int8 on CPU (accuracy_level 4)
        int8_ops = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulNBits"}
        dtype = "int8" if ops & int8_ops else "fp32"
        params = int(getattr(model, "num_parameters", 0) or 0)
    else:
        shapes = linear_shapes(model)
        dtype = torch_dtype_of(model)
        params = num_parameters(model)
    if hasattr(model, "set_num_threads"):
        set_threads = model.set_num_threads
    else:
        def set_threads(n: int) -> None:
            return None

    def forward(batch: dict[str, Any]) -> Any:
        accepted = getattr(model, "input_names", None)
        feed = {k: v for k, v in batch.items() if accepted is None or k in accepted}
        if task == "text-generation":
            feed.pop("token_type_ids", None)
        return forward_tensor(model, feed, task)

    return Built(forward=forward, size_bytes=folder_weight_bytes(folder), num_parameters=params, shapes=shapes,
                 compute_dtype=dtype, set_threads=set_threads, model=model, info=info)


def _code_fingerprint() -> str:
    """Hash of hfcompress' core and built-in plugin sources (a plugin fix invalidates cached outputs)."""
    import hashlib

    import hfcompress_plugins

    import hfcompress

    digest = hashlib.sha256()
    for package in (hfcompress, hfcompress_plugins):
        root = Path(package.__file__ or ".").parent
        for file in sorted(root.rglob("*.py")):
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def build_hfcompress(name: str, recipe: dict[str, Any], model: str, task: str | None = None) -> Built:
    """Run ``hfcompress.compress`` (output folder cached by recipe), reload it and wrap it.

    The pipeline's own step cache makes a re-run after a crash cheap; the output folder is
    reused when the resolved recipe is the same, so ``--quick`` after a full run costs nothing.
    """
    import hfcompress
    from hfcompress.artifact import load_state
    from hfcompress.cache import fingerprint

    full = dict(recipe, model=model)
    if task:
        full["task"] = task
    # Keyed by the recipe: a rerun (or a retime) measures the very artifact that was scored.
    # The code that built it is recorded; delete the folder to rebuild after a plugin change.
    key = fingerprint(full)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = bench_cache("hfcompress") / f"{slug}-{key}"
    if not (out / "results.json").exists():
        if out.exists():
            shutil.rmtree(out)
        log.info("[%s] hfcompress.compress(%s)", name, json.dumps(full))
        hfcompress.compress(recipe=full, output_dir=out)
        (out / "benchmark-build.json").write_text(json.dumps({"recipe": full, "code_fingerprint": _code_fingerprint()}))
    state = load_state(out)
    built = built_from_state(state, out, state.task)
    results = json.loads((out / "results.json").read_text())
    built.info["recipe"] = full
    build_file = out / "benchmark-build.json"
    if build_file.exists():
        built.info["code_fingerprint"] = json.loads(build_file.read_text()).get("code_fingerprint")
    built.info["steps"] = [{k: s.get(k) for k in ("technique", "seconds", "format", "cached")} for s in results.get("steps", [])]
    return built
