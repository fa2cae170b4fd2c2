"""head-pruning sweep on the packaged MiniLM: latency and fidelity vs how much is pruned, by importance.

    .venv/bin/python -m benchmarks.pruning_sweep                  # full sweep (~5-20 min on 1 thread)
    .venv/bin/python -m benchmarks.pruning_sweep --quick          # fewer repeats / calibration texts
    .venv/bin/python -m benchmarks.pruning_sweep --scope per-layer

For each setting (25/33/50 % of attention heads, 25/50 % of FFN neurons, and the default recipe's
33 % heads + 50 % FFN) and each importance (gradient, magnitude), the unpruned model is pruned
with the ``head-pruning`` technique (no training afterwards) and measured:

- latency: median wall time of one forward pass, batch 8 x sequence 128 (real held-out sentences
  padded to 128 tokens), 1 thread, fp32. Every model is timed in the same run, interleaved round by
  round with the unpruned one, so the shared machine's noise hits all of them alike; the table
  reports the ratio to the unpruned model.
- fidelity: mean over the held-out vader:movie sentences of the cosine between the mean-pooled
  embedding of the pruned and of the unpruned model.

Gradient importance uses the calibration (training) split of vader:movie; the held-out split is
never seen by it. Results go to ``benchmarks/results/pruning_sweep.{json,md}``
(``pruning_sweep_per-layer.*`` with ``--scope per-layer``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS: list[tuple[str, dict[str, float]]] = [
    ("heads 25%", {"ratio": 0.25}),
    ("heads 33%", {"ratio": 1 / 3}),
    ("heads 50%", {"ratio": 0.5}),
    ("FFN 25%", {"ffn_ratio": 0.25}),
    ("FFN 50%", {"ffn_ratio": 0.5}),
    ("heads 33% + FFN 50% (default recipe)", {"ratio": 0.33, "ffn_ratio": 0.5}),
]
IMPORTANCES = ("gradient", "magnitude")


def mean_pooled(model: Any, batches: list[dict[str, Any]]) -> Any:
    import torch

    from hfcompress.model_io import mean_pool

    out = []
    with torch.no_grad():
        for batch in batches:
            out.append(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--scope", choices=("global", "per-layer"), default="global")
    parser.add_argument("--quick", action="store_true", help="5 repeats, 64 calibration texts")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.calibration_samples = 5, 64

    import torch
    from hfcompress_plugins.head_pruning import HeadPruning, HeadPruningConfig

    from hfcompress.data import DataConfig, load_data
    from hfcompress.models import load_model, resolve_model
    from hfcompress.plugin import StepContext

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    splits = load_data(DataConfig.model_validate("vader:movie"))
    source = resolve_model("builtin:all-MiniLM-L6-v2")
    base = load_model(source, "feature-extraction")
    tok = base.tokenizer
    eval_texts = list(splits.eval["text"])

    # fidelity batches: held-out sentences, padded per batch (their natural lengths)
    fid_batches = []
    for start in range(0, len(eval_texts), 32):
        enc = tok(eval_texts[start : start + 32], padding=True, truncation=True,
                  max_length=args.sequence_length, return_tensors="pt")
        fid_batches.append(dict(enc))
    # latency batch: the first held-out sentences, padded to exactly sequence_length
    timing_batch = dict(tok(eval_texts[: args.batch_size], padding="max_length", truncation=True,
                            max_length=args.sequence_length, return_tensors="pt"))

    base_emb = mean_pooled(base.model, fid_batches)
    ctx = StepContext(
        teacher=lambda: base, train_data=splits.train,
        accelerator=SimpleNamespace(device=torch.device("cpu")),  # type: ignore[arg-type]
        seed=0, work_dir=args.output,
    )

    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {"unpruned": base.model}
    for label, fields in SETTINGS:
        for importance in IMPORTANCES:
            cfg = HeadPruningConfig(importance=importance, scope=args.scope,
                                    calibration_samples=args.calibration_samples, **fields)
            fresh = load_model(source, "feature-extraction")
            began = time.perf_counter()
            result = HeadPruning().apply(fresh, cfg, ctx)
            seconds = time.perf_counter() - began
            emb = mean_pooled(result.state.model, fid_batches)
            cos = torch.nn.functional.cosine_similarity(emb, base_emb, dim=-1)
            key = f"{label} / {importance}"
            models[key] = result.state.model
            ch = result.changes
            rows.append({
                "setting": label, "importance": importance, "config": cfg.model_dump(mode="json"),
                "num_parameters": ch["num_parameters_after"], "heads_per_layer": ch["heads_per_layer"],
                "ffn_neurons_per_layer": ch["ffn_neurons_per_layer"], "prune_seconds": round(seconds, 2),
                "cosine_mean": round(float(cos.mean()), 4), "cosine_p05": round(float(cos.quantile(0.05)), 4),
            })
            print(f"pruned {key}: cosine {float(cos.mean()):.4f} in {seconds:.1f} s", file=sys.stderr)

    # interleaved timing: one call of every model per round, so drift affects all equally
    samples: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for _ in range(args.warmup):
            for model in models.values():
                model(**timing_batch)
        for _ in range(args.repeats):
            for key, model in models.items():
                began = time.perf_counter()
                model(**timing_batch)
                samples[key].append((time.perf_counter() - began) * 1000)
    base_ms = statistics.median(samples["unpruned"])
    for row in rows:
        ms = statistics.median(samples[f"{row['setting']} / {row['importance']}"])
        row["latency_ms"] = round(ms, 2)
        row["latency_ratio"] = round(ms / base_ms, 3)

    base_params = sum(p.numel() for p in base.model.parameters())
    report = {
        "model": "builtin:all-MiniLM-L6-v2",
        "data": f"vader:movie (fidelity on the held-out split, {len(eval_texts)} sentences)",
        "base": {"num_parameters": base_params, "latency_ms": round(base_ms, 2)},
        "settings": {"threads": args.threads, "batch_size": args.batch_size, "sequence_length": args.sequence_length,
                     "warmup": args.warmup, "repeats": args.repeats, "statistic": "median, interleaved rounds",
                     "scope": args.scope, "calibration_samples": args.calibration_samples, "dtype": "float32"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "rows": rows,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    stem = "pruning_sweep" if args.scope == "global" else f"pruning_sweep_{args.scope}"
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"MiniLM-L6 head-pruning sweep, no retraining ({args.scope} scope). Latency: {args.threads} thread, "
        f"batch {args.batch_size} x seq {args.sequence_length}, fp32, median of {args.repeats} interleaved rounds; "
        f"unpruned = {base_ms:.1f} ms, {base_params:,} parameters. Cosine: mean-pooled embeddings vs the "
        f"unpruned model on {len(eval_texts)} held-out vader:movie sentences.",
        "",
        "| setting | importance | parameters | latency ratio | cosine (mean) | cosine (p5) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['importance']} | {row['num_parameters']:,} | "
                     f"{row['latency_ratio']:.3f} | {row['cosine_mean']:.4f} | {row['cosine_p05']:.4f} |")
    (args.output / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
