"""The ``distillation`` technique: recipe-time checks (``check``) and the step itself (``apply``)."""

from __future__ import annotations

from typing import Literal

from hfcompress.plugin import BadInputError, ModelState, ModelTarget, StepContext, StepResult, Technique

from .config import (
    DistillationConfig,
    LossConfig,
    check_layer_map,
    num_heads,
    num_layers,
    resolve_losses,
    resolve_mode,
)
from .trainer import distill

__all__ = ["Distillation"]


class Distillation(Technique[DistillationConfig]):
    name = "distillation"
    summary = "Knowledge distillation from the original (or any) teacher: KL, CE, hidden MSE, attention, cosine"
    Config = DistillationConfig
    produces_formats = ("pytorch",)

    def data_requirement(self, config: DistillationConfig) -> Literal["none", "text", "labels"]:
        return "labels" if config.mode == "task-specific" else "text"

    def check(self, config: DistillationConfig, target: ModelTarget) -> None:
        losses = _check_data_and_losses(config, target)
        _check_layers_and_heads(config, target, losses)
        # Head counts changed by an earlier pruning step are invisible in a BERT config; apply()
        # compares the actual attention shapes on a probe batch before training starts.

    def apply(self, state: ModelState, config: DistillationConfig, ctx: StepContext) -> StepResult:
        return distill(state, config, ctx)


def _check_data_and_losses(config: DistillationConfig, target: ModelTarget) -> LossConfig:
    """Format, data, mode and losses against the model's task; returns the losses in effect."""
    arch = target.architecture
    if target.format != "pytorch":
        raise BadInputError(
            f"distillation needs a PyTorch model, got format {target.format!r} ({arch}); "
            "put distillation before quantization/export steps"
        )
    if not target.has_data:
        raise BadInputError("distillation needs training text: add a data section (for example data: vader:movie)")
    mode = resolve_mode(config, target.task, target.has_labels)
    if mode == "task-specific" and not target.has_labels:
        raise BadInputError(
            f"distillation mode: task-specific needs labelled data, and the data has no labels ({arch}). "
            "Use mode: task-agnostic, or give data with a label column (data.label_column)"
        )
    if mode == "task-specific" and target.task != "text-classification":
        raise BadInputError(
            f"distillation mode: task-specific is for text-classification; this model is {target.task} ({arch}). "
            "Use mode: task-agnostic"
        )
    losses = resolve_losses(config, target.task, mode)
    if losses.relational > 0 and target.task != "feature-extraction":
        raise BadInputError(
            f"distillation losses.relational: matches sentence-embedding neighbourhoods, and {arch} is a "
            f"{target.task} model; use kl (and ce) for it"
        )
    if losses.kl > 0 and target.task == "feature-extraction":
        raise BadInputError(
            f"distillation losses.kl: {arch} is a feature-extraction model without logits; "
            "use cosine and/or hidden_mse"
        )
    if losses.ce > 0:
        if target.task == "feature-extraction":
            raise BadInputError(
                f"distillation losses.ce: {arch} is a feature-extraction model without logits; "
                "use cosine and/or hidden_mse"
            )
        if target.task == "text-classification" and not target.has_labels:
            raise BadInputError(
                f"distillation losses.ce: cross-entropy on {arch} needs labelled data and the data has no "
                "labels; set losses.ce to 0 or give data with a label column"
            )
    return losses


def _check_layers_and_heads(config: DistillationConfig, target: ModelTarget, losses: LossConfig) -> None:
    """Student layers, layer map and attention head counts, from the configs (no weights load)."""
    arch = target.architecture
    n_t = num_layers(target.config)
    teacher_cfg = target.config
    if config.teacher:
        from hfcompress.plugin import load_config, resolve_model

        teacher_cfg = load_config(resolve_model(config.teacher))
        n_t = num_layers(teacher_cfg)
    n_s, s_heads = n_t, num_heads(target.config)
    spec = config.student
    if spec is not None and spec.layers is not None:
        bad = [i for i in spec.layers if not 0 <= i < n_t]
        if bad:
            raise BadInputError(
                f"distillation student.layers: {bad} out of range for the teacher ({arch}) with {n_t} layers; "
                f"use indices 0..{n_t - 1}"
            )
        n_s, s_heads = len(spec.layers), num_heads(teacher_cfg)
    elif spec is not None and spec.model is not None:
        from hfcompress.plugin import load_config, resolve_model

        s_cfg = load_config(resolve_model(spec.model))
        n_s, s_heads = num_layers(s_cfg), num_heads(s_cfg)
    elif spec is not None and spec.config is not None:
        n_s = int(spec.config.get("num_hidden_layers", n_t))
        s_heads = int(spec.config.get("num_attention_heads", num_heads(teacher_cfg) or 0)) or None
    if losses.layer_map is not None:
        check_layer_map(losses.layer_map, n_s, n_t, arch)
    if losses.attention > 0 and s_heads is not None and num_heads(teacher_cfg) not in (None, s_heads):
        raise BadInputError(
            f"distillation losses.attention: the student has {s_heads} attention heads and the teacher "
            f"{num_heads(teacher_cfg)} ({arch}); the attention loss needs equal head counts. "
            "Set losses.attention to 0 and use hidden_mse"
        )
