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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfcompress.plugin import (
    BadInputError,
    ModelState,
    ModelTarget,
    StepContext,
    StepResult,
    Technique,
    TechniqueConfig,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["DistillationConfig", "Distillation", "LossConfig", "StudentConfig", "distill"]

CHECKPOINT_DIR = "distillation-checkpoints"


class LossConfig(BaseModel):
    """Loss weights (0 switches a loss off) and their settings."""

    model_config = ConfigDict(extra="forbid")

    kl: float = Field(0.0, ge=0.0)
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (classifiers, causal LMs)."""
    ce: float = Field(0.0, ge=0.0)
    """Cross-entropy on the data's labels (classifiers) or next-token cross-entropy (causal LMs)."""
    hidden_mse: float = Field(0.0, ge=0.0)
    """MSE between mapped hidden states (a learned projection when widths differ)."""
    attention: float = Field(0.0, ge=0.0)
    """KL between attention distributions of mapped layers (MiniLM-style); needs equal head counts."""
    cosine: float = Field(0.0, ge=0.0)
    """1 - cosine between mean-pooled last hidden states (sentence encoders)."""
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    layer_map: dict[int, int] | None = None
    """Student layer -> teacher layer (0-based) for hidden_mse/attention. Default: identity when the
    layer counts match, else uniform (student layer i -> teacher layer round((i+1)*Lt/Ls)-1)."""

    def active(self) -> dict[str, float]:
        return {k: w for k in ("kl", "ce", "hidden_mse", "attention", "cosine") if (w := getattr(self, k)) > 0}

    @model_validator(mode="after")
    def _some_loss(self) -> LossConfig:
        if not self.active():
            raise ValueError("losses: every weight is 0; give at least one of kl, ce, hidden_mse, attention, cosine > 0")
        return self


class StudentConfig(BaseModel):
    """How to build the student instead of taking the current pipeline model. Give exactly one field."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | None = Field(None, min_length=1)
    """Copy the teacher and keep these layers (0-based, in this order)."""
    model: str | None = None
    """A model id, local folder or builtin: alias (same tokenizer as the teacher)."""
    config: dict[str, Any] | None = None
    """Overrides applied to the teacher's config; the student is randomly initialised from it."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StudentConfig:
        given = [k for k in ("layers", "model", "config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"student: give exactly one of layers, model, config (got {given or 'none'})")
        return self


class DistillationConfig(TechniqueConfig):
    teacher: str | None = None
    """Teacher model id/folder; default: the original model of the pipeline."""
    student: StudentConfig | None = None
    """Default: the current pipeline model (for example after pruning)."""
    mode: Literal["auto", "task-agnostic", "task-specific"] = "auto"
    """task-agnostic: text only; task-specific: needs labels; auto: task-specific when labels exist."""
    losses: LossConfig | None = None
    """Default depends on the task (see the module docstring)."""
    max_steps: int | None = Field(None, gt=0)
    """Optimizer steps; default 200 when neither max_steps nor epochs is given."""
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, gt=0, le=4096)
    """Per process and per micro-step; the global batch is batch_size * processes * accumulation."""
    sequence_length: int = Field(128, gt=1, le=32768)
    gradient_accumulation_steps: int = Field(1, gt=0, le=1024)
    learning_rate: float = Field(1e-4, gt=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA with bf16 support and on XLA, else fp32; fp16 needs an fp16 Accelerator."""
    seed: int | None = None
    """Default: the pipeline seed."""
    checkpoint_every: int = Field(50, ge=0)
    """Save a checkpoint every N optimizer steps into the step's work folder (0: never)."""
    keep_checkpoints: int = Field(2, gt=0)
    resume: bool = True
    """Resume from the last matching checkpoint in the work folder."""
    dropout: bool = True
    """Keep the student's dropout active while training. Forced off when the attention loss is on:
    dropout zeroes attention probabilities, which would make the attention KL meaningless."""
    log_every: int = Field(10, gt=0)
    progress_bar: bool = True

    @model_validator(mode="after")
    def _default_length(self) -> DistillationConfig:
        if self.max_steps is None and self.epochs is None:
            # validate_assignment would re-run this validator; set the raw attribute instead
            object.__setattr__(self, "max_steps", 200)
        return self


# ---------------------------------------------------------------------------------------------
# Config-level decisions shared by check() and apply()


def _num_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise BadInputError(f"distillation: cannot tell the layer count of {type(config).__name__}")


def _heads(config: Any) -> int | None:
    value = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return int(value) if value else None


def _resolve_mode(config: DistillationConfig, task: str, has_labels: bool) -> str:
    if config.mode != "auto":
        return config.mode
    return "task-specific" if has_labels and task == "text-classification" else "task-agnostic"


def default_losses(task: str, mode: str) -> LossConfig:
    """Per-task defaults: what a user without a data scientist would want."""
    if task == "feature-extraction":
        return LossConfig.model_validate({"cosine": 1.0, "hidden_mse": 1.0})
    if task == "text-classification":
        return LossConfig.model_validate({"kl": 1.0, "ce": 1.0 if mode == "task-specific" else 0.0})
    return LossConfig.model_validate({"kl": 1.0})


def _losses(config: DistillationConfig, task: str, mode: str) -> LossConfig:
    return config.losses if config.losses is not None else default_losses(task, mode)


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Identity for equal depth, else uniform: every student layer imitates the end of its block,
    so the last student layer always maps to the last teacher layer (DistilBERT/TinyBERT style)."""
    if student_layers == teacher_layers:
        return {i: i for i in range(student_layers)}
    return {i: max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)}


def _check_layer_map(layer_map: dict[int, int], n_student: int, n_teacher: int, arch: str) -> None:
    for s, t in layer_map.items():
        if not 0 <= s < n_student:
            raise BadInputError(
                f"distillation losses.layer_map: student layer {s} is out of range for the student "
                f"({arch}) with {n_student} layers; use 0..{n_student - 1}"
            )
        if not 0 <= t < n_teacher:
            raise BadInputError(
                f"distillation losses.layer_map: teacher layer {t} is out of range for the teacher "
                f"({arch}) with {n_teacher} layers; use 0..{n_teacher - 1}"
            )


# ---------------------------------------------------------------------------------------------
# Building teacher and student


def _layer_list(model: Any) -> Any:
    """The ModuleList of transformer blocks (BERT ``encoder.layer``, Llama ``model.layers``...)."""
    from torch import nn

    n = _num_layers(model.config)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise BadInputError(
        f"distillation student.layers: could not find the {n} transformer blocks of {type(model).__name__}; "
        "supported: models whose blocks are one nn.ModuleList (BERT, Llama, ...). Use student.model instead."
    )


def student_from_layers(teacher: Any, layers: list[int]) -> Any:
    """A deep copy of ``teacher`` keeping ``layers`` (in order); config and layer indices renumbered."""
    import copy

    from torch import nn

    n = _num_layers(teacher.config)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise BadInputError(
            f"distillation student.layers: {bad} out of range for {type(teacher).__name__} with {n} layers; use 0..{n - 1}"
        )
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)  # the teacher may have been frozen already; the copy must train
    blocks = _layer_list(student)
    kept = nn.ModuleList([blocks[i] for i in layers])
    # Replace the ModuleList in its parent, whatever attribute name the architecture uses.
    for name, module in student.named_modules():
        if module is blocks:
            parent_name, _, attr = name.rpartition(".")
            setattr(student.get_submodule(parent_name) if parent_name else student, attr, kept)
            break
    for new_index, block in enumerate(kept):
        for sub in block.modules():  # decoders key their KV cache by layer_idx
            if isinstance(getattr(sub, "layer_idx", None), int):
                setattr(sub, "layer_idx", new_index)  # noqa: B010 (typed as Tensor | Module by torch)
    student.config.num_hidden_layers = len(layers)
    layer_types = getattr(student.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        student.config.layer_types = [layer_types[i] for i in layers]
    return student


def _load_model_state(name: str, task: str) -> ModelState:
    from hfcompress.plugin import load_model, resolve_model

    return load_model(resolve_model(name), task)


def _build_student(state: ModelState, config: DistillationConfig, teacher: ModelState) -> tuple[ModelState, dict[str, Any]]:
    spec = config.student
    if spec is None:
        return state, {"source": "pipeline"}
    if spec.layers is not None:
        model = student_from_layers(teacher.model, spec.layers)
        return ModelState(model=model, tokenizer=teacher.tokenizer, task=teacher.task), {
            "source": "layers", "layers": list(spec.layers)
        }
    if spec.model is not None:
        student = _load_model_state(spec.model, teacher.task)
        return student, {"source": "model", "model": spec.model}
    import copy

    import transformers

    from hfcompress.plugin import AUTO_CLASSES

    cfg = copy.deepcopy(teacher.model.config)
    for key, value in (spec.config or {}).items():
        setattr(cfg, key, value)
    model = getattr(transformers, AUTO_CLASSES[teacher.task]).from_config(cfg)
    return ModelState(model=model, tokenizer=teacher.tokenizer, task=teacher.task), {
        "source": "config", "config": dict(spec.config or {})
    }


# ---------------------------------------------------------------------------------------------
# Losses


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _hidden(output: Any) -> Any:
    return getattr(output, "hidden_states", None)


def _last_hidden(output: Any) -> Any:
    last = getattr(output, "last_hidden_state", None)
    if last is None and _hidden(output) is not None:
        last = output.hidden_states[-1]
    return last


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of softened distributions, times T^2 (Hinton et al.), mean over
    samples (classifiers) or non-padded tokens (causal LMs)."""
    import torch.nn.functional as F

    t = temperature
    s_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    t_logp = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if mask is not None and per.dim() == 2:
        m = mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp(min=1.0) * t * t
    return per.mean() * t * t


def hidden_mse_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over non-padded tokens (padding carries no signal and would dilute the loss)."""
    m = mask.float().unsqueeze(-1)
    diff = (student_h.float() - teacher_h.float()) ** 2 * m
    return diff.sum() / (m.sum().clamp(min=1.0) * student_h.shape[-1])


def attention_loss(student_a: torch.Tensor, teacher_a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention rows (B, H, T, T), mean over heads and real queries."""
    eps = 1e-12
    s = student_a.float().clamp(min=eps)
    t = teacher_a.float().clamp(min=eps)
    per_row = (t * (t.log() - s.log())).sum(-1)  # B, H, T
    m = mask.to(per_row.dtype).unsqueeze(1)
    return (per_row * m).sum() / (m.sum().clamp(min=1.0) * per_row.shape[1])


def cosine_loss(student_last: torch.Tensor, teacher_last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cosine between mean-pooled embeddings: exactly what sentence-encoder users compare."""
    import torch.nn.functional as F

    s = _mean_pool(student_last.float(), mask)
    t = _mean_pool(teacher_last.float(), mask)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def _build_distill_module(student: Any, losses: LossConfig, layer_map: dict[int, int], task: str,
                          widths: tuple[int, int]) -> nn.Module:
    """The student plus learned projections, computing the whole loss inside ``forward`` so DDP
    sees every trainable parameter in one module (projections included)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    s_width, t_width = widths

    class DistillModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.projections = nn.ModuleDict()
            if s_width != t_width:
                if losses.hidden_mse > 0:
                    for s in layer_map:
                        self.projections[f"h{s}"] = nn.Linear(s_width, t_width)
                if losses.cosine > 0:
                    self.projections["pool"] = nn.Linear(s_width, t_width)

        def _proj(self, key: str, h: torch.Tensor) -> torch.Tensor:
            return self.projections[key](h) if key in self.projections else h

        def forward(self, inputs: dict[str, torch.Tensor], teacher: dict[str, Any],
                    labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = self.student(**inputs, output_hidden_states=losses.hidden_mse > 0 or losses.cosine > 0,
                               output_attentions=losses.attention > 0)
            mask = inputs["attention_mask"]
            parts: dict[str, torch.Tensor] = {}
            if losses.kl > 0:
                kl_mask = mask if task == "text-generation" else None
                parts["kl"] = kl_loss(out.logits, teacher["logits"], losses.temperature, kl_mask)
            if losses.ce > 0:
                logits = out.logits.float()
                if task == "text-generation":  # next-token prediction on the text itself
                    target = inputs["input_ids"][:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                    parts["ce"] = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                  ignore_index=-100)
                else:
                    assert labels is not None
                    parts["ce"] = F.cross_entropy(logits, labels)
            if losses.hidden_mse > 0:
                hs = out.hidden_states
                terms = [hidden_mse_loss(self._proj(f"h{s}", hs[s + 1]), teacher["hidden_states"][t + 1], mask)
                         for s, t in layer_map.items()]
                parts["hidden_mse"] = torch.stack(terms).mean()
            if losses.attention > 0:
                terms = [attention_loss(out.attentions[s], teacher["attentions"][t], mask)
                         for s, t in layer_map.items()]
                parts["attention"] = torch.stack(terms).mean()
            if losses.cosine > 0:
                parts["cosine"] = cosine_loss(self._proj("pool", _last_hidden(out)), teacher["last"], mask)
            total = sum(getattr(losses, k) * v for k, v in parts.items())
            return total, {k: v.detach() for k, v in parts.items()}

    return DistillModule()


# ---------------------------------------------------------------------------------------------
# The trainer


def _model_inputs(model: Any, enc: dict[str, Any], task: str) -> dict[str, Any]:
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    keep = {"input_ids", "attention_mask", "token_type_ids"}
    out = {k: v for k, v in enc.items() if k in keep and (k in accepted or "kwargs" in accepted)}
    if task == "text-generation":
        out.pop("token_type_ids", None)
    return out


def _derived_seed(*parts: int) -> int:
    """A per-(seed, step, rank) seed: dropout masks do not depend on how many steps ran in this
    process, which is what makes a resumed run bitwise equal to an uninterrupted one."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _Batches:
    """Deterministic global batches: epoch e is a permutation seeded by (seed, e); micro-step m
    takes slice m of it and each rank its own part. Position m is all a resume needs."""

    def __init__(self, n: int, per_rank: int, world: int, seed: int) -> None:
        self.n, self.per_rank, self.world, self.seed = n, per_rank, world, seed
        self.global_batch = per_rank * world
        self.per_epoch = n // self.global_batch
        if self.per_epoch == 0:
            raise BadInputError(
                f"distillation: {n} training texts are fewer than one global batch "
                f"(batch_size {per_rank} x {world} processes); lower batch_size or give more data"
            )
        self._epoch = -1
        self._perm: list[int] = []

    def indices(self, micro_step: int, rank: int) -> list[int]:
        import torch

        epoch, offset = divmod(micro_step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, 7))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._epoch = epoch
        start = offset * self.global_batch + rank * self.per_rank
        return self._perm[start : start + self.per_rank]


def _fingerprint(config: DistillationConfig, module: Any, n_texts: int, world: int) -> str:
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


def _save_checkpoint(root: Path, step: int, module: Any, optimizer: Any, scheduler: Any,
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


def _last_checkpoint(root: Path, fingerprint: str) -> Path | None:
    for folder in sorted(root.glob("step-*"), reverse=True):
        state_file = folder / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fingerprint:
            return folder
    return None


def _autocast(accelerator: Any, precision: str) -> Any:
    import contextlib

    import torch

    if accelerator.mixed_precision != "no":
        return accelerator.autocast()
    if precision == "bf16":
        return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _resolve_precision(config: DistillationConfig, accelerator: Any) -> str:
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


def distill(state: ModelState, config: DistillationConfig, ctx: StepContext,
            on_step: Callable[[int, float], None] | None = None) -> StepResult:
    """Run distillation; ``on_step(step, loss)`` is called after every optimizer step (tests, UIs)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    accelerator = ctx.accelerator
    device = accelerator.device
    seed = ctx.seed if config.seed is None else config.seed
    world, rank = accelerator.num_processes, accelerator.process_index

    data = ctx.train_data
    if data is None or len(data) == 0:
        raise BadInputError("distillation needs training text: give data (for example data: vader:movie)")
    texts = [str(t) for t in data["text"]]
    has_labels = "label" in data.column_names
    task = state.task
    mode = _resolve_mode(config, task, has_labels)
    if mode == "task-specific" and not has_labels:
        raise BadInputError(
            "distillation mode: task-specific needs labelled data (a 'label' column); the data has only text. "
            "Use mode: task-agnostic or give labelled data (data.label_column)"
        )
    losses = _losses(config, task, mode)
    if losses.ce > 0 and task == "text-classification" and not has_labels:
        raise BadInputError("distillation losses.ce needs labels on text-classification; the data has none")
    labels_all = [int(x) for x in data["label"]] if (has_labels and losses.ce > 0 and task != "text-generation") else None

    teacher = _load_model_state(config.teacher, task) if config.teacher else ctx.teacher()
    torch.manual_seed(_derived_seed(seed, -2))  # a student built from a config starts the same on every rank
    student_state, student_info = _build_student(state, config, teacher)
    student = student_state.model
    if student is teacher.model:  # a teacher callable that hands back the live model: keep a frozen copy
        import copy

        teacher = ModelState(copy.deepcopy(teacher.model), teacher.tokenizer, teacher.task)
    tokenizer = student_state.tokenizer or teacher.tokenizer
    if student_state.tokenizer is not None and teacher.tokenizer is not None:
        probe_text = texts[0]
        if student_state.tokenizer(probe_text)["input_ids"] != teacher.tokenizer(probe_text)["input_ids"]:
            raise BadInputError(
                "distillation: the teacher and the student tokenize text differently; token-level losses need "
                "the same tokenizer. Pick a student/teacher of the same family"
            )

    n_t, n_s = _num_layers(teacher.model.config), _num_layers(student.config)
    layer_map = {int(k): int(v) for k, v in (losses.layer_map or default_layer_map(n_s, n_t)).items()}
    _check_layer_map(layer_map, n_s, n_t, type(student).__name__)
    widths = (int(student.config.hidden_size), int(teacher.model.config.hidden_size))
    if losses.attention > 0:  # attention probabilities only exist in the eager implementation
        for m in (student, teacher.model):
            try:
                m.set_attn_implementation("eager")
            except Exception as exc:  # custom modeling code may not support switching
                raise BadInputError(
                    f"distillation losses.attention: {type(m).__name__} cannot return attention "
                    f"probabilities ({exc}); set losses.attention to 0"
                ) from exc

    original_device = next(student.parameters()).device
    teacher_model = teacher.model.to(device).eval()
    teacher_model.requires_grad_(False)
    params_before = sum(p.numel() for p in state.model.parameters())

    torch.manual_seed(_derived_seed(seed, -1))  # same projection init on every rank
    module = _build_distill_module(student, losses, layer_map, task, widths).to(device)
    module.train()
    if not config.dropout or losses.attention > 0:
        student.eval()  # eval mode only switches dropout off in these models; gradients still flow
    precision = _resolve_precision(config, accelerator)

    def encode(idx: list[int]) -> tuple[dict[str, Any], Any]:
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=config.sequence_length, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in _model_inputs(student, enc, task).items()}
        lab = torch.tensor([labels_all[i] for i in idx], device=device) if labels_all is not None else None
        return inputs, lab

    def teacher_outputs(inputs: dict[str, Any]) -> dict[str, Any]:
        t_inputs = _model_inputs(teacher_model, inputs, task)
        with torch.no_grad(), _autocast(accelerator, precision):
            out = teacher_model(**t_inputs, output_hidden_states=losses.hidden_mse > 0 or losses.cosine > 0,
                                output_attentions=losses.attention > 0)
        result: dict[str, Any] = {}
        if losses.kl > 0:
            result["logits"] = out.logits
        if losses.hidden_mse > 0:
            result["hidden_states"] = out.hidden_states
        if losses.attention > 0:
            result["attentions"] = out.attentions
        if losses.cosine > 0:
            result["last"] = _last_hidden(out)
        return result

    # A probe step on two short texts, before training: it validates shapes (head counts, vocab,
    # widths) so a mismatch is a BadInputError, not a crash mid-run, and finds parameters that get
    # no gradient (e.g. BERT's pooler under an embedding loss). Those are frozen: they would not
    # change anyway, and DDP would otherwise stop with "parameters that were not used".
    probe_inputs, probe_labels = encode(list(range(min(2, len(texts)))))
    probe_inputs = {k: v[:, :16] for k, v in probe_inputs.items()}
    probe_t = teacher_outputs(probe_inputs)
    if losses.attention > 0:
        with torch.no_grad():
            s_out = student(**probe_inputs, output_attentions=True)
        for s, t in layer_map.items():
            sh, th = tuple(s_out.attentions[s].shape), tuple(probe_t["attentions"][t].shape)
            if sh != th:
                raise BadInputError(
                    f"distillation losses.attention: student layer {s} has {sh[1]} attention heads, teacher layer "
                    f"{t} has {th[1]} ({type(student).__name__}); the attention loss needs equal head counts. "
                    "Set losses.attention to 0 (use hidden_mse) or map layers with equal head counts"
                )
    if losses.kl > 0:
        with torch.no_grad():
            s_logits = student(**probe_inputs).logits
        if s_logits.shape[-1] != probe_t["logits"].shape[-1]:
            raise BadInputError(
                f"distillation losses.kl: student has {s_logits.shape[-1]} outputs, teacher "
                f"{probe_t['logits'].shape[-1]}; KL needs the same label set / vocabulary"
            )
    with _autocast(accelerator, precision):
        probe_loss, _ = module(probe_inputs, probe_t, probe_labels)
    probe_loss.backward()
    frozen = [p for p in module.parameters() if p.requires_grad and p.grad is None]
    for p in frozen:
        p.requires_grad_(False)
    module.zero_grad(set_to_none=True)

    batches = _Batches(len(texts), config.batch_size, world, seed)
    accum = config.gradient_accumulation_steps
    steps_per_epoch = max(1, batches.per_epoch // accum)
    total_steps = config.max_steps or 0
    if config.epochs is not None:
        by_epochs = max(1, math.ceil(config.epochs * steps_per_epoch))
        total_steps = min(total_steps, by_epochs) if total_steps else by_epochs

    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    # The scheduler is stepped by us once per optimizer step (not prepared: Accelerate would step it
    # once per process), so the schedule is the same whatever the process count.
    scheduler = get_scheduler(config.lr_scheduler, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps), num_training_steps=total_steps)

    ckpt_root = Path(ctx.work_dir) / CHECKPOINT_DIR
    fingerprint = _fingerprint(config, module, len(texts), world)
    start_step, history, step_times = 0, [], []
    resumed_from, pending = None, []
    if config.resume:
        # The main process decides and every rank follows, so ranks can never disagree on where to start.
        from accelerate.utils import broadcast_object_list

        choice = [str(_last_checkpoint(ckpt_root, fingerprint) or "") if accelerator.is_main_process else ""]
        if world > 1:
            broadcast_object_list(choice, from_process=0)
        found = Path(choice[0]) if choice[0] else None
        if found is not None:
            module.load_state_dict(torch.load(found / "model.pt", map_location=device))
            optimizer.load_state_dict(torch.load(found / "optimizer.pt", map_location=device))
            scheduler.load_state_dict(torch.load(found / "scheduler.pt"))
            saved = json.loads((found / "trainer_state.json").read_text())
            start_step, history, step_times = saved["step"], saved["loss_history"], saved["step_seconds"]
            pending = saved["pending_losses"]
            resumed_from = start_step
    accelerator.wait_for_everyone()  # nobody reads a checkpoint that the main process is replacing

    prepared_module, prepared_optimizer = accelerator.prepare(module, optimizer)
    progress = tqdm(total=total_steps, initial=start_step, desc="distillation",
                    disable=not (config.progress_bar and accelerator.is_main_process))
    first_loss: float | None = history[0][1] if history else None
    # Per-step losses not yet logged (kept in checkpoints so a resumed history matches exactly).
    window: list[torch.Tensor] = [torch.tensor(v, device=device) for v in pending]
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
            for step in range(start_step, total_steps):
                t0 = time.perf_counter()
                torch.manual_seed(_derived_seed(seed, step, rank))
                step_loss = torch.zeros((), device=device)
                for micro in range(accum):
                    inputs, lab = encode(batches.indices(step * accum + micro, rank))
                    t_out = teacher_outputs(inputs)
                    last_micro = micro == accum - 1
                    sync = accelerator.no_sync(prepared_module) if not last_micro else _nullcontext()
                    with sync, _autocast(accelerator, precision):
                        loss, _ = prepared_module(inputs, t_out, lab)
                    accelerator.backward(loss / accum)
                    step_loss += loss.detach() / accum
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                prepared_optimizer.step()
                scheduler.step()
                prepared_optimizer.zero_grad(set_to_none=True)
                window.append(step_loss)
                done = step + 1
                if done % config.log_every == 0 or done == total_steps or first_loss is None:
                    # One reduction per log interval keeps the hot loop free of host syncs.
                    mean = accelerator.reduce(torch.stack(window).mean(), reduction="mean")
                    value = float(mean)
                    if first_loss is None:
                        first_loss = round(value, 6)
                    history.append([done, round(value, 6)])
                    window = []
                    progress.set_postfix(loss=f"{value:.4f}")
                step_times.append(time.perf_counter() - t0)
                progress.update(1)
                if on_step is not None:
                    on_step(done, float(step_loss))
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < total_steps:
                    if window and world > 1:  # averaging is linear: reducing now changes no logged value
                        window = list(accelerator.reduce(torch.stack(window), reduction="mean"))
                    if accelerator.is_main_process:
                        _save_checkpoint(ckpt_root, done, accelerator.unwrap_model(prepared_module),
                                         optimizer, scheduler,
                                         {"step": done, "fingerprint": fingerprint, "loss_history": history,
                                          "step_seconds": step_times,
                                          "pending_losses": [float(v) for v in window]},
                                         config.keep_checkpoints)
                    accelerator.wait_for_everyone()
    finally:
        progress.close()
        _forget_prepared(accelerator, prepared_module, prepared_optimizer)

    for p in frozen:
        p.requires_grad_(True)
    student = accelerator.unwrap_model(prepared_module).student
    student.eval()
    student.to(original_device)

    # Steady-state timing: the first step pays for allocations and lazy initialisation.
    timed = step_times[1:] if len(step_times) > 1 else step_times
    sec_per_step = sum(timed) / len(timed) if timed else 0.0
    global_batch = config.batch_size * world * accum
    info = dict(student_state.info)
    info["distillation"] = {k: v for k, v in student_info.items() if k != "config"}
    out_state = ModelState(
        model=student, tokenizer=tokenizer, task=task, format=student_state.format,
        saver=student_state.saver, loader=student_state.loader, info=info,
    )
    changes = {
        "teacher": config.teacher or "original",
        "student": student_info,
        "mode": mode,
        "losses": losses.active(),
        "temperature": losses.temperature if losses.kl > 0 else None,
        "layer_map": {str(k): v for k, v in layer_map.items()} if (losses.hidden_mse or losses.attention) else None,
        "projections": sorted(getattr(module, "projections", {}).keys()),
        "num_parameters_before": params_before,
        "num_parameters_after": sum(p.numel() for p in student.parameters()),
        "steps": total_steps,
        "resumed_from_step": resumed_from,
        "global_batch_size": global_batch,
        "sequence_length": config.sequence_length,
        "num_processes": world,
        "device": str(device),
        "mixed_precision": precision,
        "loss_first": first_loss,
        "loss_last": history[-1][1] if history else None,
        "loss_history": history,
        "seconds_per_step": round(sec_per_step, 6),
        "samples_per_second": round(global_batch / sec_per_step, 3) if sec_per_step else None,
    }
    if accelerator.is_main_process and ckpt_root.exists():
        shutil.rmtree(ckpt_root, ignore_errors=True)  # finished: the step cache holds the result
    accelerator.wait_for_everyone()
    return StepResult(out_state, changes)


def _nullcontext() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _forget_prepared(accelerator: Any, *objects: Any) -> None:
    """Drop our references from the shared Accelerator (it keeps every prepared object), so the
    student and optimizer can be freed after this step; other steps' objects stay."""
    for attr in ("_models", "_optimizers"):
        items = getattr(accelerator, attr, None)
        if isinstance(items, list):
            items[:] = [x for x in items if all(x is not o for o in objects)]


# ---------------------------------------------------------------------------------------------
# The technique


class Distillation(Technique[DistillationConfig]):
    name = "distillation"
    summary = "Knowledge distillation from the original (or any) teacher: KL, CE, hidden MSE, attention, cosine"
    Config = DistillationConfig
    produces_formats = ("pytorch",)

    def data_requirement(self, config: DistillationConfig) -> Literal["none", "text", "labels"]:
        return "labels" if config.mode == "task-specific" else "text"

    def check(self, config: DistillationConfig, target: ModelTarget) -> None:
        arch = target.architecture
        if target.format != "pytorch":
            raise BadInputError(
                f"distillation needs a PyTorch model, got format {target.format!r} ({arch}); "
                "put distillation before quantization/export steps"
            )
        if not target.has_data:
            raise BadInputError("distillation needs training text: add a data section (for example data: vader:movie)")
        mode = _resolve_mode(config, target.task, target.has_labels)
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
        losses = _losses(config, target.task, mode)
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
        n_t = _num_layers(target.config)
        teacher_cfg = target.config
        if config.teacher:
            from hfcompress.plugin import load_config, resolve_model

            teacher_cfg = load_config(resolve_model(config.teacher))
            n_t = _num_layers(teacher_cfg)
        n_s, s_heads = n_t, _heads(target.config)
        spec = config.student
        if spec is not None and spec.layers is not None:
            bad = [i for i in spec.layers if not 0 <= i < n_t]
            if bad:
                raise BadInputError(
                    f"distillation student.layers: {bad} out of range for the teacher ({arch}) with {n_t} layers; "
                    f"use indices 0..{n_t - 1}"
                )
            n_s, s_heads = len(spec.layers), _heads(teacher_cfg)
        elif spec is not None and spec.model is not None:
            from hfcompress.plugin import load_config, resolve_model

            s_cfg = load_config(resolve_model(spec.model))
            n_s, s_heads = _num_layers(s_cfg), _heads(s_cfg)
        elif spec is not None and spec.config is not None:
            n_s = int(spec.config.get("num_hidden_layers", n_t))
            s_heads = int(spec.config.get("num_attention_heads", _heads(teacher_cfg) or 0)) or None
        if losses.layer_map is not None:
            _check_layer_map(losses.layer_map, n_s, n_t, arch)
        if losses.attention > 0 and s_heads is not None and _heads(teacher_cfg) not in (None, s_heads):
            raise BadInputError(
                f"distillation losses.attention: the student has {s_heads} attention heads and the teacher "
                f"{_heads(teacher_cfg)} ({arch}); the attention loss needs equal head counts. "
                "Set losses.attention to 0 and use hidden_mse"
            )
        # Head counts changed by an earlier pruning step are invisible in a BERT config; apply()
        # compares the actual attention shapes on a probe batch before training starts.

    def apply(self, state: ModelState, config: DistillationConfig, ctx: StepContext) -> StepResult:
        return distill(state, config, ctx)


@hookimpl
def hfcompress_register_techniques(register: Callable[[type], None]) -> None:
    register(Distillation)
