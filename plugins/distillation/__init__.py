"""Technique ``distillation``: train a student to imitate a teacher, on one CPU or many processes.

The teacher is the original model (default) or any model id/folder; the student is the current
pipeline model (for example after head pruning), a copy of the teacher that keeps a subset of its
layers, or any model id / config. Losses are weighted and combinable; training runs through the
pipeline's Accelerator (DDP under ``torchrun`` / ``accelerate launch``), checkpoints into the
step's work folder and resumes from the last checkpoint after a kill.

    steps:
      - distillation:
          student: {layers: [0, 2, 4]}   # omit: distil the current pipeline model
          mode: task-agnostic            # or task-specific (needs labels), or auto
          losses: {cosine: 1.0, hidden_mse: 1.0, temperature: 2.0}
          max_steps: 300
          batch_size: 16
          sequence_length: 128
          learning_rate: 1.0e-4
          lr_scheduler: linear
          warmup_ratio: 0.1
          gradient_accumulation_steps: 1
          mixed_precision: auto
          checkpoint_every: 50

Defaults per task when ``losses`` is omitted: feature-extraction -> cosine + hidden_mse;
text-classification -> kl (+ ce in task-specific mode); text-generation -> kl.

One concern per module: ``config`` (the typed config and the decisions made from it alone),
``losses`` (the loss functions and the module computing them), ``student`` (building the student),
``batches`` (deterministic batch order and seeds), ``precision`` (mixed precision),
``checkpoints`` (fingerprint, save, resume), ``trainer`` (the training loop in named phases) and
``technique`` (the ``Technique`` class: check and apply). None imports torch at import time.
"""

from __future__ import annotations

from collections.abc import Callable

from hfcompress.plugin import hookimpl

from .config import DistillationConfig, LossConfig, StudentConfig
from .technique import Distillation
from .trainer import distill

__all__ = ["DistillationConfig", "Distillation", "LossConfig", "StudentConfig", "distill"]


@hookimpl
def hfcompress_register_techniques(register: Callable[[type], None]) -> None:
    register(Distillation)
