"""Evaluator ``size``: bytes on disk, parameters, and peak memory while loading and running.

- ``size_bytes``: the bytes of the files that make up the model in its saved folder (weights,
  config, tokenizer, custom code), found recursively; the card, results.json, the recipe and
  the plot are not counted, and neither are hidden files. The pipeline saves the base and the
  compressed model with the same ``save_state`` and measures both folders, so they compare.
  An in-memory model without a folder is saved to a temporary one first.
- ``weights_bytes``: only the weight files (safetensors, bin, onnx, onnx_data / onnx.data, pt, gguf).
- ``num_parameters``: parameters of the loaded model (quantized tensors count their logical
  elements; ONNX models count their initializers).
- ``peak_memory_load_mb`` / ``peak_memory_mb``: peak resident memory (RSS, 10^6 bytes) above
  the process's baseline while loading the folder, and while loading and then running one
  evaluation batch. Measured in a fresh Python process so that memory freed by earlier models
  and reused by the allocator cannot hide anything; the libraries the loader needs are imported
  before the baseline is taken, so they are not counted.

    evaluate:
      evaluators: [size]
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hfcompress.plugin import EvalContext, Evaluator, Metric, hookimpl

# Written next to the model by the pipeline; not part of the model.
NOT_MODEL_FILES = frozenset({"README.md", "results.json", "hfcompress.yaml", "evaluation.png", "step.json"})
# ``.onnx.data``: external weights as onnxruntime-genai's model builder names them (model.onnx.data)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".onnx.data", ".pt", ".pth", ".gguf")
MEASURE_TIMEOUT_S = 900
# glibc raises its mmap threshold after large frees, and then keeps freed memory in the heap; a
# fixed threshold makes every allocation >= 64 KiB its own mapping, returned to the OS on free.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "TOKENIZERS_PARALLELISM": "false"}


def model_files(folder: Path) -> list[Path]:
    """The files of the saved model in ``folder`` (see the module docstring for what is excluded)."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if len(rel.parts) == 1 and rel.name in NOT_MODEL_FILES:
            continue
        files.append(path)
    return files


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(all model files, weight files only), in bytes."""
    files = model_files(folder)
    total = sum(p.stat().st_size for p in files)
    weights = sum(p.stat().st_size for p in files if p.name.endswith(WEIGHT_SUFFIXES))
    return total, weights


def _onnx_parameters(folder: Path) -> int:
    import onnx

    total = 0
    # recursive: a sentence-transformers output keeps its graph in onnx/model.onnx
    for path in model_files(folder):
        if path.suffix != ".onnx":
            continue
        graph = onnx.load(str(path), load_external_data=False).graph
        for init in graph.initializer:
            count = 1
            for dim in init.dims:
                count *= dim
            total += count
    return total


class Size(Evaluator):
    name = "size"
    summary = "Bytes on disk, parameters, peak memory (RSS) while loading and running"
    metrics = (
        Metric("size_bytes", label="Size on disk", unit="bytes", higher_is_better=False),
        Metric("weights_bytes", label="Weight files", unit="bytes", higher_is_better=False),
        Metric("num_parameters", label="Parameters", higher_is_better=False),
        Metric("peak_memory_load_mb", label="Peak memory while loading", unit="MB RSS", higher_is_better=False),
        Metric("peak_memory_mb", label="Peak memory, load + run", unit="MB RSS", higher_is_better=False),
    )

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import num_parameters

        with tempfile.TemporaryDirectory(prefix="hfcompress-size-") as tmp:
            folder = ctx.artifact_dir
            if folder is None:
                from hfcompress.plugin import save_state

                folder = Path(tmp) / "model"
                save_state(ctx.state, folder)
            size, weights = folder_bytes(folder)
            params = num_parameters(ctx.state.model)
            if params == 0 and any(p.suffix == ".onnx" for p in model_files(folder)):
                params = _onnx_parameters(folder)
            result: dict[str, float] = {
                "size_bytes": float(size),
                "weights_bytes": float(weights),
                "num_parameters": float(params),
            }
            result.update(measure_memory(folder, ctx, Path(tmp)))
        return result


def measure_memory(folder: Path, ctx: EvalContext, scratch: Path) -> dict[str, float]:
    """Run :func:`_child` in a fresh interpreter on ``folder`` and return its peak RSS deltas."""
    s = ctx.settings
    texts = list(ctx.data["text"][: s.batch_size]) if ctx.data is not None and len(ctx.data) else ["hello world"]
    request = {
        "folder": str(folder),
        "task": ctx.state.task,
        "texts": texts,
        "sequence_length": s.sequence_length,
        "threads": s.threads,
    }
    request_file = scratch / "memory-request.json"
    # the answer comes back in a file: loaders may write anything to stdout (no trailing newline included)
    result_file = scratch / "memory-result.json"
    result_file.unlink(missing_ok=True)
    request["result_file"] = str(result_file)
    request_file.write_text(json.dumps(request))
    proc = subprocess.run(
        [sys.executable, "-m", "hfcompress_plugins.eval_size", str(request_file)],
        capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, env={**os.environ, **CHILD_ENV},
        stdin=subprocess.DEVNULL,  # never wait on a prompt (transformers asks about remote code on stdin)
    )
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(
            f"measuring peak memory of {folder} in a subprocess failed (exit {proc.returncode}): "
            f"{(proc.stderr.strip() or proc.stdout.strip())[-800:]}"
        )
    measured: dict[str, Any] = json.loads(result_file.read_text())
    return {"peak_memory_load_mb": float(measured["load_mb"]), "peak_memory_mb": float(measured["run_mb"])}


# -- the child process ------------------------------------------------------------------------
def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


class _PeakMeter:
    """Peak RSS since :meth:`reset`. Linux: VmHWM, reset through /proc/self/clear_refs ("5").

    Elsewhere ``ru_maxrss`` (never reset), so a peak below the import-time peak reads as 0.
    """

    def __init__(self) -> None:
        self.linux = Path("/proc/self/status").exists()

    def current(self) -> int:
        if self.linux:
            return _rss_bytes("VmRSS")
        return self.peak()

    def reset(self) -> None:
        if self.linux:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.linux = False

    def peak(self) -> int:
        if self.linux:
            return _rss_bytes("VmHWM")
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def _child(request_file: str) -> None:
    import gc

    request = json.loads(Path(request_file).read_text())
    folder = Path(request["folder"])
    import torch
    import transformers  # noqa: F401  (imported before the baseline: library memory is not the model's)

    torch.set_num_threads(int(request["threads"]))
    marker = json.loads((folder / "config.json").read_text()).get("hfcompress", {}) if (folder / "config.json").exists() else {}
    fmt = marker.get("format", "pytorch")
    for module in {"onnx": ("onnxruntime",), "quanto": ("optimum.quanto",), "openvino": ("openvino",)}.get(fmt, ()):
        with contextlib.suppress(ImportError):  # the loader reports a missing backend itself
            __import__(module)
    from hfcompress.plugin import forward, load_state, tokenize

    # A first, unmeasured load imports the model's modules (transformers loads them lazily) and
    # warms caches: ~150 MB that would otherwise be billed to the model. With the allocator's
    # mmap threshold fixed (set by the parent), what that load freed went back to the OS, so the
    # measured load below cannot hide in reused memory.
    warm = load_state(folder, request["task"])
    forward(warm, tokenize(warm, request["texts"][:1], 8))
    del warm
    gc.collect()
    meter = _PeakMeter()
    baseline = meter.current()
    meter.reset()
    state = load_state(folder, request["task"])
    load_peak = meter.peak()
    batch = tokenize(state, request["texts"], int(request["sequence_length"]))
    if hasattr(state.model, "set_num_threads"):
        state.model.set_num_threads(int(request["threads"]))
    forward(state, batch)
    run_peak = meter.peak()
    Path(request["result_file"]).write_text(json.dumps({
        "load_mb": max(0, load_peak - baseline) / 1e6,
        "run_mb": max(0, run_peak - baseline) / 1e6,
        "baseline_mb": baseline / 1e6,
    }))


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(Size)


if __name__ == "__main__":
    _child(sys.argv[1])
