"""Checkpoints of a distillation run: what makes one resumable (the fingerprint), writing one
atomically, and finding and loading the newest matching one on resume.

The on-disk format is ``<work_dir>/distillation-checkpoints/step-NNNNNNNN/`` holding ``model.pt``
(student + projections), ``optimizer.pt``, ``scheduler.pt`` and ``trainer_state.json``
(``step``, ``fingerprint``, ``loss_history``, ``step_seconds``, ``pending_losses``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .config import DistillationConfig

__all__ = [
    "CHECKPOINT_DIR",
    "choose_checkpoint",
    "fingerprint",
    "last_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_DIR = "distillation-checkpoints"


def fingerprint(config: DistillationConfig, module: Any, n_texts: int, world: int) -> str:
    """What must match for a checkpoint to be resumable: the training config, the starting
    weights, the data size and the process count (batches depend on it)."""
    import torch

    ignore = {"checkpoint_every", "keep_checkpoints", "resume", "log_every", "progress_bar"}
    blob = json.dumps(config.model_dump(exclude=ignore), sort_keys=True, default=str)
    h = hashlib.sha256(blob.encode())
    h.update(f"{n_texts},{world}".encode())
    with torch.no_grad():
        for name, p in module.state_dict().items():
            h.update(name.encode())
            h.update(f"{tuple(p.shape)}:{float(p.double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def save_checkpoint(root: Path, step: int, module: Any, optimizer: Any, scheduler: Any,
                    trainer_state: dict[str, Any], keep: int) -> None:
    """Write into a temporary folder and rename: a kill never leaves a half-written checkpoint."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(module.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(root: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint under ``root`` whose fingerprint matches, if any."""
    for folder in sorted(root.glob("step-*"), reverse=True):
        state_file = folder / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fingerprint:
            return folder
    return None


def choose_checkpoint(accelerator: Any, root: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume from, the same on every rank."""
    # The main process decides and every rank follows, so ranks can never disagree on where to start.
    from accelerate.utils import broadcast_object_list

    choice = [str(last_checkpoint(root, fingerprint) or "") if accelerator.is_main_process else ""]
    if accelerator.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    return Path(choice[0]) if choice[0] else None


def load_checkpoint(folder: Path, module: Any, optimizer: Any, scheduler: Any, device: Any) -> dict[str, Any]:
    """Restore module, optimizer and scheduler from ``folder``; return its trainer state."""
    import torch

    module.load_state_dict(torch.load(folder / "model.pt", map_location=device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
    state: dict[str, Any] = json.loads((folder / "trainer_state.json").read_text())
    return state
