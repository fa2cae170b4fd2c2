"""Every quantization backend/mode/dtype on one model: size, latency, fidelity, side by side.

    .venv/bin/python benchmarks/quantization_sweep.py                       # MiniLM, vader:movie, CPU
    .venv/bin/python benchmarks/quantization_sweep.py --only torch-bf16 onnxruntime-dynamic
    .venv/bin/python benchmarks/quantization_sweep.py --device cuda         # where a GPU is at hand

For each variant the quantization technique is applied to a fresh copy of the model (calibration
on the training split of the data), the result is saved with ``hfcompress.artifact.save_state``
and measured:

- size: bytes of the weights file(s) on disk (model.onnx / model.safetensors);
- latency: median of ``--repeats`` forwards of one batch (``--batch`` × ``--seq`` tokens, real
  held-out sentences padded to ``--seq``) after 2 warm-ups, with ``--threads`` threads for
  PyTorch and ONNX Runtime alike. All variants are built first and then timed round-robin (one
  forward of each variant per round), so a busy neighbour on a shared machine slows every
  variant alike; the ratio is to PyTorch fp32 timed in the same rounds. The load average before
  and after is recorded;
- cosine: mean-pooled embedding (or logits) cosine to the unquantized model on ``--held-out``
  sentences of the evaluation split, which calibration never sees.

Writes ``<out>.json`` (every number, the environment) and ``<out>.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name -> (quantization config, note). "pytorch-fp32" and "onnx-fp32" are references, not steps.
VARIANTS: dict[str, tuple[dict[str, Any] | None, str]] = {
    "pytorch-fp32": (None, "reference: the unquantized model"),
    "onnx-fp32": (None, "reference: ONNX export only (no quantization, no fusion)"),
    "torch-bf16": ({"backend": "torch", "dtype": "bf16"}, ""),
    "torch-fp16": ({"backend": "torch", "dtype": "fp16"}, ""),
    "quanto-int8": ({"backend": "quanto", "dtype": "int8"}, "weights only"),
    "quanto-int4": ({"backend": "quanto", "dtype": "int4"}, "weights only"),
    "quanto-fp8": ({"backend": "quanto", "dtype": "fp8"}, "weights only"),
    "quanto-int8-a8": ({"backend": "quanto", "dtype": "int8", "activations": "int8"}, "int8 activations, calibrated"),
    "onnxruntime-dynamic": ({"backend": "onnxruntime"}, "per_channel, fusion chosen by timing"),
    "onnxruntime-dynamic-nofusion": ({"backend": "onnxruntime", "graph_optimization": "none"}, "per_channel"),
    "onnxruntime-dynamic-fused": ({"backend": "onnxruntime", "graph_optimization": "bert-fusion"}, "per_channel"),
    "onnxruntime-dynamic-per-tensor": ({"backend": "onnxruntime", "per_channel": False, "graph_optimization": "none"},
                                       "per_channel off"),
    "onnxruntime-static-minmax": ({"backend": "onnxruntime", "mode": "static", "graph_optimization": "none"},
                                  "QDQ, all default ops"),
    "onnxruntime-static-percentile-matmul": (
        {"backend": "onnxruntime", "mode": "static", "calibration_method": "percentile", "op_types": ["MatMul"],
         "graph_optimization": "none"}, "QDQ, MatMul only"),
    "onnxruntime-static-entropy-matmul": (
        {"backend": "onnxruntime", "mode": "static", "calibration_method": "entropy", "op_types": ["MatMul"],
         "graph_optimization": "none"}, "QDQ, MatMul only"),
    "auto": ({"backend": "auto"}, "the measured choice"),
}


def weights_bytes(folder: Path) -> int:
    names = ("model.onnx", "model.safetensors")
    return sum(p.stat().st_size for p in folder.iterdir() if p.name in names or p.name.startswith("model-0"))


def round_robin_latency_ms(states: dict[str, Any], batch: dict[str, Any], threads: int,
                           repeats: int) -> dict[str, float]:
    """Median latency of each state, timed one forward per state per round."""
    import torch

    from hfcompress.model_io import fixed_threads, forward, model_device

    times: dict[str, list[float]] = {name: [] for name in states}
    with fixed_threads(threads):
        for state in states.values():
            if hasattr(state.model, "set_num_threads"):
                state.model.set_num_threads(threads)
            for _ in range(2):  # warm-up
                forward(state, batch)
        for _ in range(repeats):
            for name, state in states.items():
                cuda = model_device(state).type == "cuda"
                started = time.perf_counter()
                forward(state, batch)
                if cuda:
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def reduced(state: Any, texts: list[str]) -> Any:
    import torch

    from hfcompress.model_io import forward, reduce_output, tokenize

    outs = []
    for i in range(0, len(texts), 32):
        batch = tokenize(state, texts[i: i + 32], 128)
        outs.append(reduce_output(state, forward(state, batch), batch["attention_mask"]))
    return torch.cat(outs).float()


def cpu_description() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
        info["amx"] = any(f.startswith("amx") for f in flags)
        info["avx512_vnni"] = "avx512_vnni" in flags
    except (OSError, StopIteration):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:all-MiniLM-L6-v2")
    parser.add_argument("--task", default=None)
    parser.add_argument("--data", default="vader:movie")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, choices=list(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/quantization_sweep")
    args = parser.parse_args()

    import accelerate
    import onnxruntime
    import optimum.quanto
    import torch
    import transformers
    from accelerate import Accelerator
    from hfcompress_plugins.quantization import Quantization, QuantizationConfig, onnx_runtime

    from hfcompress.artifact import save_state
    from hfcompress.data import DataConfig, load_data
    from hfcompress.model_io import tokenize
    from hfcompress.models import infer_task, load_config, load_model, resolve_model
    from hfcompress.plugin import ModelState, StepContext

    torch.set_num_threads(args.threads)
    source = resolve_model(args.model)
    task = infer_task(load_config(source), args.task)
    device = torch.device(args.device)

    def fresh() -> ModelState:
        state = load_model(source, task)
        state.model.to(device)
        return state

    splits = load_data(DataConfig.model_validate(args.data))
    held_out = [t for t in splits.eval["text"] if t.strip()][: args.held_out]
    base = fresh()
    reference = reduced(base, held_out)
    timing_batch = tokenize(base, held_out[: args.batch], args.seq)
    assert timing_batch["input_ids"].shape == (args.batch, args.seq)
    load_before = os.getloadavg()
    states: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="quant-sweep-"))
    save_state(base, scratch / "pytorch-fp32")

    rows: list[dict[str, Any]] = []
    names = args.only or list(VARIANTS)
    for name in names:
        cfg, note = VARIANTS[name]
        row: dict[str, Any] = {"variant": name, "note": note}
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        started = time.perf_counter()
        try:
            if name == "pytorch-fp32":
                state, folder = base, scratch / name
            elif name == "onnx-fp32":
                if device.type != "cpu":
                    raise RuntimeError("ONNX Runtime rows run on CPU only")
                folder = scratch / name
                folder.mkdir()
                onnx_runtime.export(base.model, base.tokenizer, task, folder / "model.onnx")
                state = ModelState(onnx_runtime.OnnxModel(folder / "model.onnx", base.model.config, task),
                                   base.tokenizer, task, format="onnx")
            else:
                config = QuantizationConfig.model_validate({**(cfg or {}), "calibration_samples": args.calibration})
                ctx = StepContext(teacher=fresh, train_data=splits.train, accelerator=Accelerator(cpu=device.type == "cpu"),
                                  seed=0, work_dir=scratch / f"{name}-work")
                result = Quantization().apply(fresh(), config, ctx)
                state, folder = result.state, scratch / name
                save_state(state, folder)
                row["changes"] = result.changes
                if name == "auto":
                    row["note"] = f"chose {result.changes.get('chosen')}"
            row["build_s"] = round(time.perf_counter() - started, 1)
            row["format"] = state.format
            row["size_mb"] = round(weights_bytes(folder) / 1e6, 2)
            states[name] = state
            cos = torch.nn.functional.cosine_similarity(reduced(state, held_out), reference, dim=-1)
            row["cosine_mean"], row["cosine_min"] = round(float(cos.mean()), 5), round(float(cos.min()), 5)
        except Exception as exc:  # a variant that cannot run here is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print("   failed:", row["error"], flush=True)
        print("  ", {k: v for k, v in row.items() if k != "changes"}, flush=True)

    states.setdefault("pytorch-fp32", base)
    print(f"[{time.strftime('%H:%M:%S')}] timing {len(states)} variants round-robin", flush=True)
    latencies = round_robin_latency_ms(states, timing_batch, args.threads, args.repeats)
    load_after = os.getloadavg()
    fp32 = latencies["pytorch-fp32"]
    for row in rows:
        if row["variant"] in latencies:
            row["latency_ms"] = round(latencies[row["variant"]], 1)
            row["ratio_to_fp32"] = round(row["latency_ms"] / fp32, 3)

    report = {
        "model": args.model, "task": task, "data": args.data, "device": str(device),
        "threads": args.threads, "batch": args.batch, "sequence_length": args.seq, "repeats": args.repeats,
        "held_out_sentences": len(held_out), "calibration_texts": args.calibration,
        "pytorch_fp32_latency_ms": round(fp32, 1), "timing": "round-robin, one forward per variant per round",
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "environment": {"cpu": cpu_description(), "torch": torch.__version__, "transformers": transformers.__version__,
                        "onnxruntime": onnxruntime.__version__, "optimum-quanto": optimum.quanto.__version__,
                        "accelerate": accelerate.__version__,
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"{args.model} on {device} ({report['environment']['cpu'].get('model', '?')}), {args.threads} thread(s), "
        f"batch {args.batch} x seq {args.seq}, median of {args.repeats}; cosine: mean-pooled/logits on "
        f"{len(held_out)} held-out {args.data} sentences. Variants timed round-robin; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (machine shared with other jobs).",
        "",
        "| variant | format | size MB | latency ms | ratio to fp32 | cosine mean | cosine min | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | – | – | – | – | – | – | failed: {row['error'][:80]} |")
            continue
        lines.append(f"| {row['variant']} | {row['format']} | {row['size_mb']} | {row['latency_ms']} | "
                     f"{row['ratio_to_fp32']} | {row['cosine_mean']} | {row['cosine_min']} | {row['note']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
