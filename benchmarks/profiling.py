"""Where the time goes: an operator profile of one model folder at a fixed shape and thread count.

    python -m benchmarks profile DIR [--threads 1] [--shape b8xs128] [--runs 5]

DIR is an hfcompress output folder (or any model folder). ONNX models are profiled with ONNX
Runtime's own profiler (``SessionOptions.enable_profiling``: per-node kernel times), OpenVINO IRs
with the CPU plugin's performance counters (``PERF_COUNT``: per executed node, after fusion),
PyTorch models with ``torch.profiler`` (self CPU time per aten op). The report lists the top operators,
the share of time spent in matmul kernels, and how far the matmul work runs from the GEMM peak
measured in the same process.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .flops import count_flops, gemm_peak
from .timing import SHAPES, make_batches

log = logging.getLogger("benchmarks")

__all__ = ["profile_folder", "summarize_onnx_profile"]

# Operator names (ONNX op types and aten ops) whose time is matrix multiplication.
MATMUL_OPS = {"MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "Gemm", "FusedMatMul", "MatMulIntegerToFloat",
              "QLinearMatMul", "MatMulNBits", "Attention", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul",
              "aten::linear", "quantized::linear_dynamic", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::baddbmm", "aten::_int_mm", "aten::_weight_int8pack_mm",
              # OpenVINO CPU plugin node types (after its fusions; int8 and weight-compressed FCs)
              "FullyConnected", "FullyConnectedQuantizedLegacy", "FullyConnectedCompressed"}


def summarize_onnx_profile(events: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Per op type: calls and milliseconds per run, from an ORT profile's ``Node`` events."""
    per_op: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        op = (ev.get("args") or {}).get("op_name", "?")
        per_op[op][0] += 1
        per_op[op][1] += ev.get("dur", 0) / 1000.0
    return _per_run_rows(per_op, runs)


def _per_run_rows(per_op: dict[str, list[float]], runs: int) -> list[dict[str, Any]]:
    """``{op: [calls, ms]}`` summed over ``runs`` -> rows per run, slowest first."""
    return sorted(({"op": op, "calls": int(c / runs), "ms": round(ms / runs, 3)} for op, (c, ms) in per_op.items()),
                  key=lambda r: -r["ms"])


def _profile_onnx(path: Path, batch: dict[str, Any], threads: int, runs: int, work: Path,
                  disabled_optimizers: list[str] | None = None) -> list[dict[str, Any]]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / "ort-profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled_optimizers or None)
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in names}
    for _ in range(2):  # warm-up runs are in the profile too; they are dropped below
        session.run(None, feed)
    t_mark = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    wall_ms = (time.perf_counter() - t_mark) * 1000 / runs
    events = json.loads(Path(session.end_profiling()).read_text())
    # Keep the last `runs` model_run spans' node events only (skip warm-up).
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    kept = [e for e in events if any(a <= e.get("ts", -1) <= b for a, b in spans)]
    rows = summarize_onnx_profile(kept, runs)
    rows.insert(0, {"op": "(wall time per run)", "calls": 1, "ms": round(wall_ms, 3)})
    return rows


def _profile_openvino(path: Path, batch: dict[str, Any], threads: int, runs: int,
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per node type (with the kernel it ran, e.g. ``FullyConnected [brgemm_avx512_I8]``): calls
    and ms per run from the CPU plugin's counters; plus the fully connected layers' own work and
    time, so their kernels can be set against the GEMM peak apart from everything around them."""
    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    names = {name for port in compiled.inputs for name in port.get_names()}
    feed = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in names}
    request = compiled.create_infer_request()
    for _ in range(2):
        request.infer(feed)
    per_op: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    t_mark = time.perf_counter()
    for _ in range(runs):
        request.infer(feed)
        for node in request.profiling_info:
            if node.status == node.Status.EXECUTED:
                counts = per_op[f"{node.node_type} [{node.exec_type}]"]
                counts[0] += 1
                counts[1] += node.real_time.total_seconds() * 1000
    wall_ms = (time.perf_counter() - t_mark) * 1000 / runs
    rows = _per_run_rows(per_op, runs)
    fc_ms = sum(r["ms"] for r in rows if r["op"].startswith("FullyConnected"))
    rows.insert(0, {"op": "(wall time per run, counters on)", "calls": 1, "ms": round(wall_ms, 3)})
    fc_flops = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        if str(op.get_rt_info()["layerType"].astype(str)).startswith("FullyConnected"):
            out = [int(d) for d in op.get_output_shape(0)]  # [..., N]; weights [N, K]
            k = int(op.input(1).get_shape()[-1])
            fc_flops += 2 * int(np.prod(out)) * k
    fc = {"fc_flops_per_batch": fc_flops, "fc_ms": round(fc_ms, 3),
          "fc_gflops": round(fc_flops / (fc_ms / 1000) / 1e9, 2) if fc_ms else None}
    return rows, fc


def _profile_torch(model: Any, batch: dict[str, Any], runs: int) -> list[dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(2):
            model(**batch)
        t_mark = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(**batch)
        wall_ms = (time.perf_counter() - t_mark) * 1000 / runs
    rows = [{"op": e.key, "calls": int(e.count / runs), "ms": round(e.self_cpu_time_total / 1000.0 / runs, 3)}
            for e in prof.key_averages()]
    rows = sorted((r for r in rows if r["ms"] > 0), key=lambda r: -r["ms"])
    rows.insert(0, {"op": "(wall time per run, profiler on)", "calls": 1, "ms": round(wall_ms, 3)})
    return rows


def profile_folder(folder: Path, threads: int = 1, shape: str = "b8xs128", runs: int = 5) -> dict[str, Any]:
    """Profile the model in ``folder``; returns top ops, matmul share and distance to the GEMM bound."""
    import torch
    from transformers import AutoTokenizer

    from hfcompress.artifact import load_state
    from hfcompress.data import DataConfig, load_data

    from .common import built_from_state

    torch.set_num_threads(threads)
    state = load_state(folder)
    built = built_from_state(state, folder, state.task)
    built.set_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = list(load_data(DataConfig.model_validate("vader:movie")).eval["text"][:16])
    batch = make_batches(tokenizer, texts, {shape: SHAPES[shape]})[shape]
    if state.task == "text-generation":
        batch.pop("token_type_ids", None)
    b, s = batch["input_ids"].shape
    flops = count_flops(built.shapes, int(b), int(s))
    work = folder.parent / f".profile-{folder.name}"
    work.mkdir(exist_ok=True)
    onnx_path = getattr(state.model, "path", None)
    fc: dict[str, Any] = {}
    if onnx_path is not None and str(onnx_path).endswith(".xml"):
        rows, fc = _profile_openvino(Path(onnx_path), batch, threads, runs)
        profiler = "openvino (PERF_COUNT)"
    elif onnx_path is not None and str(onnx_path).endswith(".onnx"):
        # the session settings the folder records (what hfcompress.load uses)
        disabled = getattr(state.model, "disabled_optimizers", None)
        rows, profiler = _profile_onnx(Path(onnx_path), batch, threads, runs, work, disabled), "onnxruntime"
    else:
        accepted = getattr(state.model, "input_names", None)
        feed = {k: v for k, v in batch.items() if accepted is None or k in accepted}
        rows, profiler = _profile_torch(state.model, feed, runs), "torch.profiler"
    wall = rows[0]["ms"]
    op_rows = rows[1:]
    total_ops = sum(r["ms"] for r in op_rows) or wall
    # OpenVINO rows read "FullyConnected [brgemm_avx512_I8]": the node type is before the bracket
    matmul_ms = sum(r["ms"] for r in op_rows if r["op"].split(" [")[0] in MATMUL_OPS or "matmul" in r["op"].lower()
                    or "linear" in r["op"].lower())
    peak = gemm_peak(threads)
    dtype = built.compute_dtype
    out = {
        "folder": str(folder), "profiler": profiler, "threads": threads, "shape": shape, "runs": runs,
        "compute_dtype": dtype, "flops_per_batch": flops, "wall_ms": wall, "op_time_ms": round(total_ops, 3),
        "matmul_ms": round(matmul_ms, 3), "matmul_share": round(matmul_ms / total_ops, 4) if total_ops else None,
        "gemm_peak_gflops": peak, "achieved_gflops": round(flops / (wall / 1000) / 1e9, 2),
        "matmul_gflops": round(flops / (matmul_ms / 1000) / 1e9, 2) if matmul_ms else None,
        "top_ops": [dict(r, share=round(r["ms"] / total_ops, 4)) for r in op_rows[:20]],
        **fc,
    }
    if dtype in peak:
        out["fraction_of_peak"] = round(out["achieved_gflops"] / peak[dtype], 4)
        out["time_at_peak_ms"] = round(flops / (peak[dtype] * 1e9) * 1000, 3)
        if fc.get("fc_gflops"):
            out["fc_fraction_of_peak"] = round(fc["fc_gflops"] / peak[dtype], 4)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Profile of {report['folder']}",
        "",
        f"{report['profiler']}, {report['threads']} thread(s), {report['shape']}, {report['runs']} runs; "
        f"wall {report['wall_ms']:.1f} ms per batch; {report['flops_per_batch'] / 1e9:.2f} GFLOP per batch "
        f"({report['compute_dtype']}) -> {report['achieved_gflops']:.1f} GFLOP/s achieved; GEMM peak now "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["gemm_peak_gflops"].items())
        + f"; at peak this batch would take {report.get('time_at_peak_ms', float('nan')):.1f} ms "
        f"(fraction of peak {report.get('fraction_of_peak', float('nan')):.3f}). Matmul kernels: "
        f"{report['matmul_ms']:.1f} ms ({(report['matmul_share'] or 0) * 100:.0f}% of op time), "
        f"{report['matmul_gflops'] or 0:.1f} GFLOP/s inside them.",
        "",
    ]
    if report.get("fc_gflops"):
        lines += [
            f"Fully connected layers alone: {report['fc_flops_per_batch'] / 1e9:.2f} GFLOP in {report['fc_ms']:.1f} ms "
            f"= {report['fc_gflops']:.0f} GFLOP/s, {report.get('fc_fraction_of_peak', float('nan')) * 100:.0f}% of "
            f"the {report['compute_dtype']} GEMM peak; the rest of the op time is attention, normalisation, "
            "element-wise ops and layout changes (table).",
            "",
        ]
    lines += [
        "| op | calls/run | ms/run | share |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['op']} | {r['calls']} | {r['ms']:.2f} | {r['share'] * 100:.1f}% |" for r in report["top_ops"]]
    return "\n".join(lines) + "\n"
