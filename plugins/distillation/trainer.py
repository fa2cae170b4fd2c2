"""The distillation training loop, as named phases of one ``DistillationTrainer`` run:

1. setup: the data (texts, labels, mode, losses), the models (teacher, student, layer map) and the
   training module (student + projections, precision);
2. probe: one short batch before training, to turn shape mismatches into ``BadInputError`` and
   freeze the parameters no loss reaches (DDP would stop on them);
3. schedule: deterministic batches, step count, AdamW and the learning-rate schedule;
4. resume: the newest checkpoint with the same fingerprint, chosen by the main process;
5. train: optimizer steps (micro-steps with gradient accumulation), logging/progress,
   checkpointing;
6. finish: the student handed back in the pipeline's format, with the ``changes`` report.

``distill(state, config, ctx, on_step=None)`` runs all of it.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import BadInputError, ModelState, StepContext, StepResult

from .batches import Batches, derived_seed
from .checkpoints import CHECKPOINT_DIR, choose_checkpoint, fingerprint, load_checkpoint, save_checkpoint
from .config import (
    DistillationConfig,
    LossConfig,
    check_layer_map,
    default_layer_map,
    num_layers,
    resolve_losses,
    resolve_mode,
)
from .losses import build_distill_module, last_hidden
from .precision import autocast, resolve_precision
from .student import build_student, load_model_state

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DistillationTrainer", "distill"]


def distill(state: ModelState, config: DistillationConfig, ctx: StepContext,
            on_step: Callable[[int, float], None] | None = None) -> StepResult:
    """Run distillation; ``on_step(step, loss)`` is called after every optimizer step (tests, UIs)."""
    return DistillationTrainer(state, config, ctx, on_step).run()


# ---------------------------------------------------------------------------------------------
# Helpers of the loop


def _model_inputs(model: Any, enc: dict[str, Any], task: str) -> dict[str, Any]:
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    keep = {"input_ids", "attention_mask", "token_type_ids"}
    out = {k: v for k, v in enc.items() if k in keep and (k in accepted or "kwargs" in accepted)}
    if task == "text-generation":
        out.pop("token_type_ids", None)
    return out


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
# The trainer


class DistillationTrainer:
    """One distillation step of a pipeline. Phases run in this order (``run``), and their order is
    part of the behaviour: the random state each phase sees is what makes runs reproducible."""

    # set by the setup phases
    texts: list[str]
    labels: list[int] | None
    task: str
    mode: str
    losses: LossConfig
    teacher: ModelState
    teacher_model: Any
    student_state: ModelState
    student_info: dict[str, Any]
    student: Any
    tokenizer: Any
    layer_map: dict[int, int]
    widths: tuple[int, int]
    original_device: Any
    params_before: int
    module: Any
    precision: str
    frozen: list[Any]
    # set by the schedule and resume phases
    batches: Batches
    total_steps: int
    trainable: list[Any]
    optimizer: Any
    scheduler: Any
    ckpt_root: Path
    ckpt_fingerprint: str
    start_step: int
    history: list[list[float]]
    step_times: list[float]
    resumed_from: int | None
    pending: list[float]
    # set while training
    prepared_module: Any
    prepared_optimizer: Any
    progress: Any
    first_loss: float | None
    window: list[torch.Tensor]

    def __init__(self, state: ModelState, config: DistillationConfig, ctx: StepContext,
                 on_step: Callable[[int, float], None] | None = None) -> None:
        self.state, self.config, self.ctx, self.on_step = state, config, ctx, on_step
        self.accelerator = ctx.accelerator
        self.device = self.accelerator.device
        self.seed = ctx.seed if config.seed is None else config.seed
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.accum = config.gradient_accumulation_steps

    def run(self) -> StepResult:
        self.setup_data()
        self.setup_models()
        self.setup_module()
        self.probe()
        self.setup_schedule()
        self.resume()
        self.train()
        return self.finish()

    # -- 1. setup ----------------------------------------------------------------------------

    def setup_data(self) -> None:
        """Training texts and labels, and the mode and losses they allow."""
        config, data = self.config, self.ctx.train_data
        if data is None or len(data) == 0:
            raise BadInputError("distillation needs training text: give data (for example data: vader:movie)")
        self.texts = [str(t) for t in data["text"]]
        has_labels = "label" in data.column_names
        self.task = task = self.state.task
        self.mode = resolve_mode(config, task, has_labels)
        if self.mode == "task-specific" and not has_labels:
            raise BadInputError(
                "distillation mode: task-specific needs labelled data (a 'label' column); the data has only text. "
                "Use mode: task-agnostic or give labelled data (data.label_column)"
            )
        self.losses = losses = resolve_losses(config, task, self.mode)
        if losses.ce > 0 and task == "text-classification" and not has_labels:
            raise BadInputError("distillation losses.ce needs labels on text-classification; the data has none")
        use_labels = has_labels and losses.ce > 0 and task != "text-generation"
        self.labels = [int(x) for x in data["label"]] if use_labels else None

    def setup_models(self) -> None:
        """Teacher and student, checked against each other (tokenizer, layers, attention)."""
        import torch

        config, task, losses = self.config, self.task, self.losses
        teacher = load_model_state(config.teacher, task) if config.teacher else self.ctx.teacher()
        torch.manual_seed(derived_seed(self.seed, -2))  # a student built from a config starts the same on every rank
        self.student_state, self.student_info = build_student(self.state, config, teacher)
        self.student = student = self.student_state.model
        if student is teacher.model:  # a teacher callable that hands back the live model: keep a frozen copy
            import copy

            teacher = ModelState(copy.deepcopy(teacher.model), teacher.tokenizer, teacher.task)
        self.teacher = teacher
        self.tokenizer = self.student_state.tokenizer or teacher.tokenizer
        if self.student_state.tokenizer is not None and teacher.tokenizer is not None:
            probe_text = self.texts[0]
            if self.student_state.tokenizer(probe_text)["input_ids"] != teacher.tokenizer(probe_text)["input_ids"]:
                raise BadInputError(
                    "distillation: the teacher and the student tokenize text differently; token-level losses need "
                    "the same tokenizer. Pick a student/teacher of the same family"
                )

        n_t, n_s = num_layers(teacher.model.config), num_layers(student.config)
        self.layer_map = {int(k): int(v) for k, v in (losses.layer_map or default_layer_map(n_s, n_t)).items()}
        check_layer_map(self.layer_map, n_s, n_t, type(student).__name__)
        self.widths = (int(student.config.hidden_size), int(teacher.model.config.hidden_size))
        if losses.attention > 0:  # attention probabilities only exist in the eager implementation
            for m in (student, teacher.model):
                try:
                    m.set_attn_implementation("eager")
                except Exception as exc:  # custom modeling code may not support switching
                    raise BadInputError(
                        f"distillation losses.attention: {type(m).__name__} cannot return attention "
                        f"probabilities ({exc}); set losses.attention to 0"
                    ) from exc

    def setup_module(self) -> None:
        """Models on the device: a frozen teacher, and the trainable student + projections."""
        import torch

        self.original_device = next(self.student.parameters()).device
        self.teacher_model = self.teacher.model.to(self.device).eval()
        self.teacher_model.requires_grad_(False)
        self.params_before = sum(p.numel() for p in self.state.model.parameters())

        torch.manual_seed(derived_seed(self.seed, -1))  # same projection init on every rank
        self.module = build_distill_module(self.student, self.losses, self.layer_map, self.task,
                                           self.widths).to(self.device)
        self.module.train()
        if not self.config.dropout or self.losses.attention > 0:
            self.student.eval()  # eval mode only switches dropout off in these models; gradients still flow
        self.precision = resolve_precision(self.config, self.accelerator)

    def encode(self, idx: list[int]) -> tuple[dict[str, Any], Any]:
        """Texts ``idx`` tokenized for the student, on the device, with their labels when used."""
        import torch

        enc = self.tokenizer([self.texts[i] for i in idx], padding=True, truncation=True,
                             max_length=self.config.sequence_length, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in _model_inputs(self.student, enc, self.task).items()}
        labels = self.labels
        lab = torch.tensor([labels[i] for i in idx], device=self.device) if labels is not None else None
        return inputs, lab

    def teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the active losses need from the teacher, without gradients."""
        import torch

        losses = self.losses
        t_inputs = _model_inputs(self.teacher_model, inputs, self.task)
        with torch.no_grad(), autocast(self.accelerator, self.precision):
            out = self.teacher_model(**t_inputs, output_hidden_states=losses.hidden_mse > 0 or losses.cosine > 0
                                     or losses.relational > 0,
                                     output_attentions=losses.attention > 0)
        result: dict[str, Any] = {}
        if losses.kl > 0:
            result["logits"] = out.logits
        if losses.hidden_mse > 0:
            result["hidden_states"] = out.hidden_states
        if losses.attention > 0:
            result["attentions"] = out.attentions
        if losses.cosine > 0 or losses.relational > 0:
            result["last"] = last_hidden(out)
        return result

    # -- 2. probe ----------------------------------------------------------------------------

    def probe(self) -> None:
        """A probe step on two short texts, before training: it validates shapes (head counts, vocab,
        widths) so a mismatch is a BadInputError, not a crash mid-run, and finds parameters that get
        no gradient (e.g. BERT's pooler under an embedding loss). Those are frozen: they would not
        change anyway, and DDP would otherwise stop with "parameters that were not used"."""
        probe_inputs, probe_labels = self.encode(list(range(min(2, len(self.texts)))))
        probe_inputs = {k: v[:, :16] for k, v in probe_inputs.items()}
        probe_t = self.teacher_outputs(probe_inputs)
        self._check_probe_shapes(probe_inputs, probe_t)
        with autocast(self.accelerator, self.precision):
            probe_loss, _ = self.module(probe_inputs, probe_t, probe_labels)
        probe_loss.backward()
        self.frozen = [p for p in self.module.parameters() if p.requires_grad and p.grad is None]
        for p in self.frozen:
            p.requires_grad_(False)
        self.module.zero_grad(set_to_none=True)

    def _check_probe_shapes(self, probe_inputs: dict[str, Any], probe_t: dict[str, Any]) -> None:
        import torch

        student, losses = self.student, self.losses
        if losses.attention > 0:
            with torch.no_grad():
                s_out = student(**probe_inputs, output_attentions=True)
            for s, t in self.layer_map.items():
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

    # -- 3. schedule -------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Batches, the number of optimizer steps, AdamW and the learning-rate schedule."""
        import torch
        from transformers import get_scheduler

        config = self.config
        self.batches = Batches(len(self.texts), config.batch_size, self.world, self.seed)
        steps_per_epoch = max(1, self.batches.per_epoch // self.accum)
        total_steps = config.max_steps or 0
        if config.epochs is not None:
            by_epochs = max(1, math.ceil(config.epochs * steps_per_epoch))
            total_steps = min(total_steps, by_epochs) if total_steps else by_epochs
        self.total_steps = total_steps

        self.trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        # The scheduler is stepped by us once per optimizer step (not prepared: Accelerate would step it
        # once per process), so the schedule is the same whatever the process count.
        self.scheduler = get_scheduler(config.lr_scheduler, self.optimizer,
                                       num_warmup_steps=int(config.warmup_ratio * total_steps),
                                       num_training_steps=total_steps)

    # -- 4. resume ---------------------------------------------------------------------------

    def resume(self) -> None:
        """Start from the newest checkpoint of the same run (same fingerprint), if any."""
        self.ckpt_root = Path(self.ctx.work_dir) / CHECKPOINT_DIR
        self.ckpt_fingerprint = fingerprint(self.config, self.module, len(self.texts), self.world)
        self.start_step, self.history, self.step_times = 0, [], []
        self.resumed_from, self.pending = None, []
        if self.config.resume:
            found = choose_checkpoint(self.accelerator, self.ckpt_root, self.ckpt_fingerprint)
            if found is not None:
                saved = load_checkpoint(found, self.module, self.optimizer, self.scheduler, self.device)
                self.start_step, self.history, self.step_times = saved["step"], saved["loss_history"], saved["step_seconds"]
                self.pending = saved["pending_losses"]
                self.resumed_from = self.start_step
        self.accelerator.wait_for_everyone()  # nobody reads a checkpoint that the main process is replacing

    # -- 5. train ----------------------------------------------------------------------------

    def train(self) -> None:
        """The loop: one optimizer step, then logging, progress, the callback and checkpointing."""
        import torch
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        self.prepared_module, self.prepared_optimizer = accelerator.prepare(self.module, self.optimizer)
        # A caller that set the plugins' logger above INFO (a search running its trials quietly)
        # silences the bar too; an unset level (a plain Python caller) keeps it.
        shown = logging.getLogger(__name__.split(".")[0]).level <= logging.INFO
        self.progress = tqdm(total=self.total_steps, initial=self.start_step, desc="distillation",
                             disable=not (self.config.progress_bar and accelerator.is_main_process and shown))
        self.first_loss = self.history[0][1] if self.history else None
        # Per-step losses not yet logged (kept in checkpoints so a resumed history matches exactly).
        self.window = [torch.tensor(v, device=self.device) for v in self.pending]
        try:
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device.type == "cuda" else []):
                for step in range(self.start_step, self.total_steps):
                    t0 = time.perf_counter()
                    step_loss = self.optimizer_step(step)
                    done = step + 1
                    self.log(done, step_loss)
                    self.step_times.append(time.perf_counter() - t0)
                    self.progress.update(1)
                    if self.on_step is not None:
                        self.on_step(done, float(step_loss))
                    self.maybe_checkpoint(done)
        finally:
            self.progress.close()
            _forget_prepared(accelerator, self.prepared_module, self.prepared_optimizer)

    def optimizer_step(self, step: int) -> torch.Tensor:
        """Optimizer step ``step`` (0-based): its micro-batches, clipping, optimizer and schedule."""
        import torch

        accelerator, accum = self.accelerator, self.accum
        torch.manual_seed(derived_seed(self.seed, step, self.rank))
        step_loss = torch.zeros((), device=self.device)
        for micro in range(accum):
            inputs, lab = self.encode(self.batches.indices(step * accum + micro, self.rank))
            t_out = self.teacher_outputs(inputs)
            last_micro = micro == accum - 1
            sync = accelerator.no_sync(self.prepared_module) if not last_micro else _nullcontext()
            with sync, autocast(accelerator, self.precision):
                loss, _ = self.prepared_module(inputs, t_out, lab)
            accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
        if self.config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.prepared_optimizer.step()
        self.scheduler.step()
        self.prepared_optimizer.zero_grad(set_to_none=True)
        return step_loss

    def log(self, done: int, step_loss: torch.Tensor) -> None:
        """Record the step's loss; every ``log_every`` steps (and the first and last) log the mean."""
        import torch

        self.window.append(step_loss)
        if done % self.config.log_every == 0 or done == self.total_steps or self.first_loss is None:
            # One reduction per log interval keeps the hot loop free of host syncs.
            mean = self.accelerator.reduce(torch.stack(self.window).mean(), reduction="mean")
            value = float(mean)
            if self.first_loss is None:
                self.first_loss = round(value, 6)
            self.history.append([done, round(value, 6)])
            self.window = []
            self.progress.set_postfix(loss=f"{value:.4f}")

    def maybe_checkpoint(self, done: int) -> None:
        """Every ``checkpoint_every`` steps (not the last), the main process saves; all ranks wait."""
        import torch

        config, accelerator = self.config, self.accelerator
        if not (config.checkpoint_every and done % config.checkpoint_every == 0 and done < self.total_steps):
            return
        if self.window and self.world > 1:  # averaging is linear: reducing now changes no logged value
            self.window = list(accelerator.reduce(torch.stack(self.window), reduction="mean"))
        if accelerator.is_main_process:
            trainer_state = {"step": done, "fingerprint": self.ckpt_fingerprint, "loss_history": self.history,
                             "step_seconds": self.step_times, "pending_losses": [float(v) for v in self.window]}
            save_checkpoint(self.ckpt_root, done, accelerator.unwrap_model(self.prepared_module),
                            self.optimizer, self.scheduler, trainer_state, config.keep_checkpoints)
        accelerator.wait_for_everyone()

    # -- 6. finish ---------------------------------------------------------------------------

    def finish(self) -> StepResult:
        """The trained student in the incoming state's format, the report, and no checkpoints left."""
        for p in self.frozen:
            p.requires_grad_(True)
        student = self.accelerator.unwrap_model(self.prepared_module).student
        student.eval()
        student.to(self.original_device)

        info = dict(self.student_state.info)
        info["distillation"] = {k: v for k, v in self.student_info.items() if k != "config"}
        out_state = ModelState(
            model=student, tokenizer=self.tokenizer, task=self.task, format=self.student_state.format,
            saver=self.student_state.saver, loader=self.student_state.loader, info=info,
        )
        changes = self.changes(student)
        if self.accelerator.is_main_process and self.ckpt_root.exists():
            shutil.rmtree(self.ckpt_root, ignore_errors=True)  # finished: the step cache holds the result
        self.accelerator.wait_for_everyone()
        return StepResult(out_state, changes)

    def changes(self, student: Any) -> dict[str, Any]:
        """What ``results.json`` records about this step (docs/techniques/distillation.md)."""
        config, losses, history = self.config, self.losses, self.history
        # Steady-state timing: the first step pays for allocations and lazy initialisation.
        timed = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        sec_per_step = sum(timed) / len(timed) if timed else 0.0
        global_batch = config.batch_size * self.world * self.accum
        return {
            "teacher": config.teacher or "original",
            "student": self.student_info,
            "mode": self.mode,
            "losses": losses.active(),
            "temperature": losses.temperature if losses.kl > 0 else None,
            "layer_map": ({str(k): v for k, v in self.layer_map.items()}
                          if (losses.hidden_mse or losses.attention) else None),
            "projections": sorted(getattr(self.module, "projections", {}).keys()),
            "num_parameters_before": self.params_before,
            "num_parameters_after": sum(p.numel() for p in student.parameters()),
            "steps": self.total_steps,
            "resumed_from_step": self.resumed_from,
            "global_batch_size": global_batch,
            "sequence_length": config.sequence_length,
            "num_processes": self.world,
            "device": str(self.device),
            "mixed_precision": self.precision,
            "loss_first": self.first_loss,
            "loss_last": history[-1][1] if history else None,
            "loss_history": history,
            "seconds_per_step": round(sec_per_step, 6),
            "samples_per_second": round(global_batch / sec_per_step, 3) if sec_per_step else None,
        }
