"""The ``head-pruning`` technique: ``check`` before any weights load, ``apply`` in named phases
(score, select, reconstruct, slice, rebuild), and ``load_artifact`` for folders saved with
``modeling_hfcompress_pruned.py``. The other modules of this package hold each phase."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from hfcompress.plugin import (
    BadInputError,
    ModelState,
    ModelTarget,
    StepContext,
    StepResult,
    Technique,
)

from .config import HeadPruningConfig
from .counts import validate_ffn, validate_heads
from .importance import gradient_importance, magnitude_importance
from .layout import DECODER_TYPES, ENCODER_TYPES, Layout, family_of, layout_of
from .reconstruction import apply_refits, least_squares_refits, reconstruction_grams
from .selection import RemovalPlan, plan_removal
from .surgery import prune_in_place, rebuild


class HeadPruning(Technique[HeadPruningConfig]):
    """Remove whole attention heads and FFN neurons (structured pruning); reloads without hfcompress."""

    name = "head-pruning"
    summary = (
        "Structured pruning of attention heads and FFN neurons (BERT-family incl. MPNet, DeBERTa-v2, ModernBERT; "
        "Llama-family), gradient or magnitude importance"
    )
    Config = HeadPruningConfig
    produces_formats = ("pytorch",)

    def data_requirement(self, config: HeadPruningConfig) -> Literal["none", "text", "labels"]:
        needs_text = config.importance == "gradient" or config.reconstruction == "least-squares"
        return "text" if needs_text else "none"

    def check(self, config: HeadPruningConfig, target: ModelTarget) -> None:
        arch = target.architecture
        if target.format != "pytorch":
            raise BadInputError(
                f"head-pruning needs a PyTorch model, got format {target.format!r}; put head-pruning before "
                "steps that export or quantize"
            )
        family = family_of(target.config)
        if family is None:
            raise BadInputError(
                f"head-pruning does not support architecture {arch} (model_type {target.model_type!r}); supported: "
                f"BERT-family encoders ({', '.join(ENCODER_TYPES)}) and Llama-family decoders ({', '.join(DECODER_TYPES)})"
            )
        tasks = ("feature-extraction", "text-generation") if family in DECODER_TYPES else (
            "feature-extraction", "text-classification")
        if target.task not in tasks:
            raise BadInputError(f"head-pruning on {arch}: task {target.task!r} is not supported; supported: {', '.join(tasks)}")
        if config.importance == "gradient" and not target.has_data:
            raise BadInputError(
                "head-pruning: importance: gradient needs calibration text (the recipe's data); give data or set "
                "importance: magnitude"
            )
        if config.reconstruction == "least-squares" and not target.has_data:
            raise BadInputError(
                "head-pruning: reconstruction: least-squares needs calibration text (the recipe's data); give data or "
                "set reconstruction: none"
            )
        lay = layout_of(target.config)
        if family in DECODER_TYPES and any(h % kv for h, kv in zip(lay.heads, lay.kv_heads, strict=True)):
            raise BadInputError(f"{arch}: num_key_value_heads does not divide num_attention_heads; cannot prune consistently")
        validate_heads(config, lay, arch)
        validate_ffn(config, lay, arch)

    def apply(self, state: ModelState, config: HeadPruningConfig, ctx: StepContext) -> StepResult:
        """Score, select, slice, rebuild. The incoming model's layers are sliced in place (no second
        full copy in memory), so the input state must not be used afterwards; the pipeline's
        teacher is a fresh load of the original."""
        model = state.model
        self.check(config, ModelTarget(config=model.config, task=state.task, format=state.format,
                                  has_data=ctx.train_data is not None))
        lay = layout_of(model.config)
        params_before = sum(p.numel() for p in model.parameters())
        start = time.perf_counter()
        head_scores, neuron_scores, how = _score(state, lay, config, ctx)
        scoring_seconds = time.perf_counter() - start
        plan = plan_removal(lay, config, head_scores, neuron_scores)
        new = plan.new
        reconstruction = _prune(state, lay, config, ctx, plan)
        pruned, standard = rebuild(model, lay, new)
        pruned.eval()
        params_after = sum(p.numel() for p in pruned.parameters())
        if not standard:
            from hfcompress_plugins.modeling.modeling_hfcompress_pruned import register_auto_classes

            register_auto_classes()

        removed_now = [[h for h in new.removed_heads[i] if h not in lay.removed_heads[i]] for i in range(lay.num_layers)]
        changes: dict[str, Any] = {
            "num_parameters_before": params_before,
            "num_parameters_after": params_after,
            "importance": config.importance,
            "importance_signal": how,
            "scoring_seconds": round(scoring_seconds, 3),
            "reconstruction": reconstruction,
            "heads_before": sum(lay.heads),
            "heads_after": sum(new.heads),
            "heads_per_layer": new.heads,
            "kv_heads_per_layer": new.kv_heads if lay.kind == "decoder" else None,
            "removed_heads": removed_now,
            "ffn_neurons_before": sum(lay.intermediate),
            "ffn_neurons_after": sum(new.intermediate),
            "ffn_neurons_per_layer": new.intermediate,
            "checkpoint": "stock config fields" if standard else "modeling_hfcompress_pruned.py + auto_map (trust_remote_code)",
        }
        info = dict(state.info)
        info["head_pruning"] = {
            "heads_per_layer": new.heads, "kv_heads_per_layer": changes["kv_heads_per_layer"],
            "ffn_neurons_per_layer": new.intermediate, "removed_heads": new.removed_heads,
        }
        next_state = ModelState(
            model=pruned, tokenizer=state.tokenizer, task=state.task, format="pytorch",
            saver=None, loader=None if standard else self.name, info=info,
        )
        return StepResult(state=next_state, changes=changes)

    @classmethod
    def load_artifact(cls, path: Path, info: dict[str, Any]) -> ModelState:
        """Load a folder with ``modeling_hfcompress_pruned.py`` through our own copy of that code."""
        from hfcompress_plugins.modeling import modeling_hfcompress_pruned as pruned_code

        from hfcompress.plugin import load_tokenizer

        pruned_code.register_auto_classes()
        config = json.loads((Path(path) / "config.json").read_text())
        arch = (config.get("architectures") or [""])[0]
        model_cls = getattr(pruned_code, arch, None)
        if model_cls is None:
            raise BadInputError(
                f"{path}: config.json names architecture {arch!r}, which modeling_hfcompress_pruned does not define"
            )
        model = model_cls.from_pretrained(str(path))
        model.eval()
        tokenizer = load_tokenizer(path)
        task = info.get("task") or ("text-generation" if arch.endswith("ForCausalLM") else
                                    "text-classification" if arch.endswith("ForSequenceClassification") else
                                    "feature-extraction")
        return ModelState(model=model, tokenizer=tokenizer, task=task, format=info.get("format", "pytorch"),
                          loader=cls.name, info=dict(info.get("info") or {}))


def _score(
    state: ModelState, lay: Layout, config: HeadPruningConfig, ctx: StepContext
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Importance of every head and FFN neuron, and what the signal was (for ``changes``)."""
    if config.importance == "gradient":
        return gradient_importance(state, lay, config, ctx, config.prunes_heads, config.prunes_ffn)
    head_scores, neuron_scores = magnitude_importance(state.model, lay, config.prunes_heads, config.prunes_ffn)
    return head_scores, neuron_scores, {"loss": "weight norms (no data)"}


def _prune(state: ModelState, lay: Layout, config: HeadPruningConfig, ctx: StepContext,
           plan: RemovalPlan) -> dict[str, Any]:
    """Slice the planned heads/neurons out of ``state.model`` in place, refitting the output projections
    first when reconstruction is on (the refits need the unpruned model); returns the reconstruction record."""
    model = state.model
    refits: list[dict[str, Any]] | None = None
    reconstruction: dict[str, Any] = {"method": "none"}
    if config.reconstruction == "least-squares":
        start = time.perf_counter()
        grams = reconstruction_grams(state, lay, config, ctx)
        refits, reconstruction = least_squares_refits(model, lay, grams, plan.keep_heads, plan.keep_neurons,
                                                      config.reconstruction_damping)
        reconstruction["seconds"] = round(time.perf_counter() - start, 3)
        del grams
    prune_in_place(model, lay, plan.keep_heads, plan.keep_kv, plan.keep_neurons)
    if refits is not None:
        apply_refits(model, lay, refits)
    return reconstruction
