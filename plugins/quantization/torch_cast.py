"""Backend ``torch``: cast weights and activations to bf16 or fp16.

The output stays a plain PyTorch checkpoint (format ``pytorch``) that transformers reloads in the
saved dtype, so this backend has no saver or loader of its own.

    steps:
      - quantization: {backend: torch, dtype: bf16}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import ModelState, ModelTarget

from .backends import step_info
from .measure import tensor_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .config import QuantizationConfig


def check(config: QuantizationConfig, target: ModelTarget, where: str) -> None:
    return None  # every PyTorch model casts


def data_needed(config: QuantizationConfig) -> tuple[str, str] | None:
    return None


def skip_reason(name: str, device: Any, state: ModelState) -> str | None:
    if name == "torch:bf16" and device.type == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
    if name == "torch:fp16" and device.type == "cpu":
        return None  # allowed when listed explicitly; measured like any other
    return None


def build(state: ModelState, config: QuantizationConfig, texts: list[str], work_dir: Path,
          copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.resolved_dtype()]
    model = copy.deepcopy(state.model) if copy_model else state.model
    model = model.to(dtype)
    details = {"backend": "torch", "dtype": config.resolved_dtype(), "size_bytes": tensor_bytes(model)}
    # Same saver/loader as the input: a bf16 copy of a custom-code model saves the same way,
    # and transformers reloads a checkpoint in the dtype it was saved in.
    return ModelState(model, state.tokenizer, state.task, format="pytorch", saver=state.saver,
                      loader=state.loader, info=step_info(state, details)), details
