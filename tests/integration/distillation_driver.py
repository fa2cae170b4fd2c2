"""Run the distillation technique directly, one process or several (torchrun), for the DDP and
kill-and-resume tests. Not a test module itself (no ``test_`` prefix).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/integration/distillation_driver.py \
        --model DIR --texts texts.json --work WORK --out OUT --steps 8

Every rank writes ``OUT/rank{r}.pt`` (its final student weights) and ``OUT/rank{r}.json`` (the
step's ``changes`` plus the distributed type), so the test can compare ranks. The technique itself
writes checkpoints from the main process only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True, help="JSON list of training texts")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step (kill test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--student", default='{"config": {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}}',
        help="the technique's student config as JSON (default: a narrower random student, so the learned "
        "projections are trained and synchronised too)",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import datasets
    from accelerate import Accelerator
    from hfcompress_plugins.distillation import DistillationConfig, distill

    from hfcompress.models import load_model, resolve_model
    from hfcompress.plugin import StepContext

    accelerator = Accelerator(cpu=True)
    texts = json.loads(Path(args.texts).read_text())
    source = resolve_model(args.model)

    def teacher():  # type: ignore[no-untyped-def]
        return load_model(source, "feature-extraction")

    ctx = StepContext(
        teacher=teacher, train_data=datasets.Dataset.from_dict({"text": texts}), accelerator=accelerator,
        seed=args.seed, work_dir=Path(args.work),
    )
    config = DistillationConfig.model_validate({
        "student": json.loads(args.student),
        "max_steps": args.steps, "batch_size": args.batch_size, "sequence_length": 32,
        "learning_rate": 2e-3, "warmup_ratio": 0.0, "checkpoint_every": args.checkpoint_every,
        "log_every": 1, "progress_bar": False,
    })

    def on_step(step: int, loss: float) -> None:
        if args.sleep:
            time.sleep(args.sleep)

    result = distill(teacher(), config, ctx, on_step=on_step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = accelerator.process_index
    torch.save({k: v.detach().cpu() for k, v in result.state.model.state_dict().items()}, out / f"rank{rank}.pt")
    report = dict(result.changes, distributed_type=str(accelerator.distributed_type), rank=rank)
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
