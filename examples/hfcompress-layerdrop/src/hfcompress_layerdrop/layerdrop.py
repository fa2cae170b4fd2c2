"""Technique ``layer-drop``: remove whole transformer layers from BERT- and Llama-family models.

Either name the layers to drop, or say how many to ``keep`` and let a criterion choose:

    steps:
      - layer-drop: {keep: 4}                          # drop the 2 least important of 6 layers
      - layer-drop: {layers: [3, -2]}                  # drop these (negative: from the end)
      - layer-drop: {keep: 4, criterion: top}          # drop the topmost layers, needs no data
      - layer-drop:
          keep: 20
          criterion: block-influence                   # the default
          max_samples: 64                              # calibration texts scored
          sequence_length: 128
          batch_size: 8

``block-influence`` scores each layer by how much it changes the hidden state it receives,
``1 - cos(h_in, h_out)`` averaged over the non-padding tokens of calibration text (the "Block
Influence" of Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant
Than You Expect"; Gromov et al., 2024 use the same angular signal). A layer that barely rotates
its input contributes little, so the lowest-scoring layers are dropped. ``top`` drops the layers
nearest the output, the strongest simple strategy for BERT in Sajjad et al., 2023 ("On the effect
of dropping layers of pre-trained transformer models").

The result is an ordinary, smaller model of the same architecture: the kept layers are
renumbered and ``num_hidden_layers`` (and ``layer_types`` where the config has it) is updated,
so plain ``from_pretrained`` loads the output folder; no hfcompress needed to use it.
Dropping layers loses quality; follow it with ``distillation`` to recover.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from hfcompress.plugin import (
    BadInputError,
    ModelState,
    ModelTarget,
    StepContext,
    StepResult,
    Technique,
    TechniqueConfig,
)
from pydantic import Field, model_validator

if TYPE_CHECKING:  # pragma: no cover - hints only; torch is imported inside functions
    import torch
    from torch import nn

# model_type -> where the list of transformer layers lives under ``model.base_model``. These
# families keep one homogeneous nn.ModuleList whose length is ``config.num_hidden_layers``.
LAYER_LISTS: dict[str, str] = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
}


class LayerDropConfig(TechniqueConfig):
    """Which layers to remove: ``layers`` (explicit indices) or ``keep`` (a count, chosen by ``criterion``)."""

    layers: list[int] | None = None
    """Indices of layers to drop; negative indices count from the last layer (-1 = last)."""
    keep: int | None = Field(None, ge=1)
    """Number of layers to keep; the others are chosen by ``criterion``."""
    criterion: Literal["block-influence", "top"] = "block-influence"
    """How ``keep`` chooses: lowest block influence on calibration text, or the topmost layers."""
    max_samples: int = Field(64, ge=1, le=100_000)
    """Calibration texts used to score layers (block-influence only)."""
    sequence_length: int = Field(128, ge=8, le=32_768)
    batch_size: int = Field(8, ge=1, le=1024)

    @model_validator(mode="after")
    def _one_selection(self) -> LayerDropConfig:
        if (self.layers is None) == (self.keep is None):
            raise ValueError("give exactly one of 'layers' (indices to drop) or 'keep' (how many layers to keep)")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("'layers' is empty: list at least one layer index to drop, or use 'keep'")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"'layers' lists an index twice: {self.layers}")
        return self


def _num_layers(config: Any) -> int:
    return int(config.num_hidden_layers)


def _resolve_indices(indices: list[int], n: int, where: str) -> list[int]:
    """Normalize negative indices; reject out-of-range and aliases (2 and -1 on 3 layers)."""
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise BadInputError(
            f"layer-drop: layers {bad} out of range for {where} with num_hidden_layers={n}; "
            f"valid indices are 0..{n - 1} (or -{n}..-1 from the end)"
        )
    resolved = sorted({i % n for i in indices})
    if len(resolved) != len(indices):
        raise BadInputError(f"layer-drop: layers {indices} name the same layer twice on {where} ({n} layers)")
    if len(resolved) >= n:
        raise BadInputError(f"layer-drop: layers {indices} would drop all {n} layers of {where}; keep at least one")
    return resolved


def layer_list(model: Any) -> tuple[Any, str, nn.ModuleList]:
    """(parent module, attribute name, the nn.ModuleList of transformer layers) of ``model``."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LAYER_LISTS:
        raise BadInputError(f"layer-drop: model_type {model_type!r} is not supported; supported: {', '.join(LAYER_LISTS)}")
    parent = model.base_model
    *path, attr = LAYER_LISTS[model_type].split(".")
    for name in path:
        parent = getattr(parent, name)
    return parent, attr, getattr(parent, attr)


def block_influence(state: ModelState, texts: list[str], config: LayerDropConfig) -> list[float]:
    """Per layer: mean over non-padding tokens of ``1 - cos(input hidden state, output hidden state)``."""
    import torch
    from hfcompress.plugin import model_device

    model = state.model
    _, _, layers = layer_list(model)
    device = model_device(state)
    totals = torch.zeros(len(layers), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.float64)
    mask_holder: dict[str, torch.Tensor] = {}

    def make_hook(index: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # [batch, seq]
            mask = mask_holder["mask"]
            totals[index] += ((1.0 - cos) * mask).sum().double().cpu()

        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), config.batch_size):
                enc = state.tokenizer(
                    texts[start : start + config.batch_size], padding=True, truncation=True,
                    max_length=config.sequence_length, return_tensors="pt",
                )
                # token_type_ids mean nothing to decoders; only feed what every family accepts.
                batch = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
                mask_holder["mask"] = batch["attention_mask"].to(torch.float32)
                tokens += batch["attention_mask"].sum().double().cpu()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [float(x) for x in (totals / tokens.clamp(min=1.0))]


def drop_layers(model: Any, drop: list[int]) -> list[int]:
    """Remove layers ``drop`` (sorted, non-negative) from ``model`` in place; return the kept indices."""
    from torch import nn

    parent, attr, layers = layer_list(model)
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    # Attention modules index the KV cache by ``layer_idx``; a gap (0, 2, 3) would make
    # generation with a cache read the wrong slot, so the kept layers are renumbered 0..k-1,
    # exactly as from_pretrained builds them when the saved folder is reloaded.
    for new_index, layer in enumerate(getattr(parent, attr)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = model.config
    n = len(layers)
    config.num_hidden_layers = len(keep)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:  # e.g. sliding/full attention per layer
        config.layer_types = [layer_types[i] for i in keep]
    return keep


class LayerDrop(Technique[LayerDropConfig]):
    """Remove whole transformer layers (by index, or the least important ones by block influence)."""

    name = "layer-drop"
    summary = "remove whole transformer layers, by index or the least important by block influence (BERT, Llama)"
    Config = LayerDropConfig

    def data_requirement(self, config: LayerDropConfig) -> Literal["none", "text", "labels"]:
        return "text" if config.keep is not None and config.criterion == "block-influence" else "none"

    def check(self, config: LayerDropConfig, target: ModelTarget) -> None:
        where = f"{target.architecture} (model_type {target.model_type!r})"
        if target.model_type not in LAYER_LISTS:
            raise BadInputError(
                f"layer-drop does not support {where}; supported model types: {', '.join(LAYER_LISTS)}. "
                "Use a BERT- or Llama-family model, or remove the layer-drop step."
            )
        n = _num_layers(target.config)
        if config.layers is not None:
            _resolve_indices(config.layers, n, where)
        elif config.keep is not None and config.keep >= n:
            raise BadInputError(
                f"layer-drop: keep={config.keep} must be smaller than the {n} layers of {where}; "
                f"choose keep between 1 and {n - 1}"
            )
        if self.data_requirement(config) == "text" and not target.has_data:
            raise BadInputError(
                "layer-drop: criterion 'block-influence' needs calibration text; give 'data' in the recipe, "
                "use criterion: top, or list the 'layers' to drop"
            )

    def apply(self, state: ModelState, config: LayerDropConfig, ctx: StepContext) -> StepResult:
        import math

        model = state.model
        _, _, layers = layer_list(model)
        n = len(layers)
        where = f"{type(model).__name__} (model_type {model.config.model_type!r})"
        scores: list[float] | None = None
        samples = 0
        if config.layers is not None:
            drop = _resolve_indices(config.layers, n, where)
        else:
            assert config.keep is not None
            if config.keep >= n:
                raise BadInputError(f"layer-drop: keep={config.keep} must be smaller than the {n} layers of {where}")
            if config.criterion == "top":
                drop = list(range(config.keep, n))
            else:
                if ctx.train_data is None or len(ctx.train_data) == 0:
                    raise BadInputError("layer-drop: criterion 'block-influence' needs calibration text (data)")
                texts = [t for t in ctx.train_data["text"][: config.max_samples] if t and t.strip()]
                samples = len(texts)
                scores = block_influence(state, texts, config)
                if not all(math.isfinite(s) for s in scores):
                    raise RuntimeError(f"layer-drop: block influence is not finite: {scores}")
                # Stable sort: ties (identical scores) drop the later layer first, which keeps
                # the choice deterministic.
                order = sorted(range(n), key=lambda i: (scores[i], -i))  # type: ignore[index]
                drop = sorted(order[: n - config.keep])
        params_before = sum(p.numel() for p in model.parameters())
        kept = drop_layers(model, drop)
        params_after = sum(p.numel() for p in model.parameters())
        record = {"dropped": drop, "kept": kept, "criterion": None if config.layers is not None else config.criterion}
        state.info = {**state.info, "layer-drop": [*state.info.get("layer-drop", []), record]}
        changes: dict[str, Any] = {
            "layers_before": n,
            "layers_after": len(kept),
            "dropped": drop,
            "kept": kept,
            "criterion": record["criterion"],
            "parameters_before": params_before,
            "parameters_after": params_after,
        }
        if scores is not None:
            changes["block_influence"] = {str(i): round(s, 6) for i, s in enumerate(scores)}
            changes["calibration_samples"] = samples
        return StepResult(state, changes)
