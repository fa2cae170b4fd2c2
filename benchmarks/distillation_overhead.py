"""Seconds per step: the distillation trainer vs a bare Accelerate loop doing the same work.

Both distil builtin:all-MiniLM-L6-v2 into a 3-layer student (teacher layers 0, 2, 4) with the
feature-extraction default losses (mean-pooled cosine + hidden-state MSE), on the same
vader:movie batches (same indices, same padding), the same AdamW + linear schedule + gradient
clipping, fp32 on CPU. The bare loop gets its batches pre-tokenized (the trainer tokenizes inside
its step, so tokenization counts against the trainer). Runs are interleaved (trainer, bare,
trainer, bare, ...) so that load from other processes on a shared machine hits both alike; the
statistic is the median step time over all rounds, the first step of each round excluded.

    .venv/bin/python benchmarks/distillation_overhead.py --steps 15 --rounds 3 --threads 1

Prints one JSON object (and writes it with --output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from accelerate import Accelerator
    from hfcompress_plugins.distillation import DistillationConfig, distill
    from hfcompress_plugins.distillation.batches import Batches
    from hfcompress_plugins.distillation.config import default_layer_map
    from hfcompress_plugins.distillation.losses import cosine_loss, hidden_mse_loss
    from hfcompress_plugins.distillation.student import student_from_layers
    from transformers import get_scheduler

    from hfcompress.data import DataConfig, load_data
    from hfcompress.model_io import MODEL_INPUTS
    from hfcompress.models import load_model, resolve_model
    from hfcompress.plugin import StepContext

    accelerator = Accelerator(cpu=True)
    splits = load_data(DataConfig.model_validate("vader:movie"))
    texts = list(splits.train["text"])
    teacher = load_model(resolve_model("builtin:all-MiniLM-L6-v2"), "feature-extraction")
    teacher.model.requires_grad_(False)
    layers, seed, lr = [0, 2, 4], 0, 1e-4
    config = DistillationConfig.model_validate({
        "student": {"layers": layers}, "max_steps": args.steps, "batch_size": args.batch_size,
        "sequence_length": args.sequence_length, "learning_rate": lr, "checkpoint_every": 0,
        "progress_bar": False, "log_every": 10**6, "seed": seed,
    })

    def trainer_round(work: Path) -> list[float]:
        stamps: list[float] = []
        ctx = StepContext(teacher=lambda: teacher, train_data=splits.train, accelerator=accelerator, seed=seed,
                          work_dir=work)
        stamps.append(time.perf_counter())  # replaced by the first step's end: setup is not a step
        distill(teacher, config, ctx, on_step=lambda step, loss: stamps.append(time.perf_counter()))
        return [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # first step excluded

    # The bare loop: exactly the batches the trainer sees (same sampler), pre-tokenized.
    sampler = Batches(len(texts), args.batch_size, 1, seed)
    batches = []
    for step in range(args.steps):
        enc = teacher.tokenizer([texts[i] for i in sampler.indices(step, 0)], padding=True, truncation=True,
                                max_length=args.sequence_length, return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in MODEL_INPUTS})
    layer_map = default_layer_map(len(layers), teacher.model.config.num_hidden_layers)

    def bare_round() -> list[float]:
        student = student_from_layers(teacher.model, layers)
        student.requires_grad_(True)
        student.pooler.requires_grad_(False)  # no gradient reaches it, as in the trainer
        student.train()
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.1 * args.steps),
                                  num_training_steps=args.steps)
        model, optimizer = accelerator.prepare(student, optimizer)
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            with torch.no_grad():
                t_out = teacher.model(**batch, output_hidden_states=True)
            out = model(**batch, output_hidden_states=True)
            mask = batch["attention_mask"]
            mse = torch.stack([hidden_mse_loss(out.hidden_states[s + 1], t_out.hidden_states[t + 1], mask)
                               for s, t in layer_map.items()]).mean()
            loss = cosine_loss(out.last_hidden_state, t_out.last_hidden_state, mask) + mse
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        accelerator._models.clear()
        accelerator._optimizers.clear()
        return times[1:]

    trainer_times: list[float] = []
    bare_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            trainer_times += trainer_round(Path(tmp) / f"round{r}")
            bare_times += bare_round()
    t_med, b_med = statistics.median(trainer_times), statistics.median(bare_times)
    result: dict[str, Any] = {
        "model": "builtin:all-MiniLM-L6-v2 -> layers [0, 2, 4]",
        "losses": "cosine + hidden_mse (feature-extraction default)",
        "threads": args.threads, "batch_size": args.batch_size, "sequence_length_max": args.sequence_length,
        "steps_per_round": args.steps, "rounds": args.rounds, "device": str(accelerator.device),
        "trainer_median_s_per_step": round(t_med, 4), "bare_median_s_per_step": round(b_med, 4),
        "trainer_mean_s_per_step": round(statistics.mean(trainer_times), 4),
        "bare_mean_s_per_step": round(statistics.mean(bare_times), 4),
        "ratio_median": round(t_med / b_med, 4),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
