"""Mixed precision of a distillation run: which precision to train in, and its autocast context."""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import BadInputError

from .config import DistillationConfig

__all__ = ["autocast", "resolve_precision"]


def autocast(accelerator: Any, precision: str) -> Any:
    import contextlib

    import torch

    if accelerator.mixed_precision != "no":
        return accelerator.autocast()
    if precision == "bf16":
        return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(config: DistillationConfig, accelerator: Any) -> str:
    import torch

    if accelerator.mixed_precision != "no":
        return str(accelerator.mixed_precision)
    if config.mixed_precision == "fp16":
        raise BadInputError(
            "distillation mixed_precision: fp16 needs loss scaling, which the pipeline's Accelerator owns; "
            "run with an fp16 Accelerator (accelerate launch --mixed_precision fp16) or use bf16"
        )
    if config.mixed_precision != "auto":
        return config.mixed_precision
    device = accelerator.device.type
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device == "xla":
        return "bf16"
    return "no"  # CPU: fp32 keeps results reproducible; bf16 is opt-in (mixed_precision: bf16)
