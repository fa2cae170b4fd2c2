"""Structured pruning ``head-pruning``: remove whole attention heads and FFN neurons.

The removed rows/columns really leave the weight matrices, so the model gets smaller and faster
(the FFN holds about two thirds of a BERT layer's linear FLOPs, hence ``ffn_ratio``).

    steps:
      - head-pruning:
          ratio: 0.33            # fraction of all attention (query) heads to remove
          ffn_ratio: 0.5         # fraction of all FFN (intermediate) neurons to remove
          scope: global          # global: rank across layers | per-layer: same fraction in every layer
          importance: gradient   # gradient: Michel et al. 2019 head-mask sensitivity on the data
                                 # magnitude: weight norms, needs no data
          never_prune: [[0, 0]]  # [layer, head] pairs that stay
          # heads_to_remove: [4, 4, 4, 4, 4, 4]   # instead of ratio: heads to remove in each layer
          # neurons_to_remove: [768, 768, ...]    # instead of ffn_ratio
          # gqa: query-heads     # decoders: remove query heads evenly from every KV group, or kv-groups

Families: BERT-style encoders (bert, roberta, xlm-roberta, camembert, electra, distilbert) and
Llama-style decoders (llama, mistral, qwen2, qwen3). With grouped-query attention the number of KV
heads always divides the number of query heads: ``gqa: query-heads`` removes the same number of
query heads from every KV group of a layer, ``gqa: kv-groups`` removes whole groups (a KV head
and its query heads).

Reloading without hfcompress: a Llama-family model pruned uniformly (``scope: per-layer``) gets
stock config fields (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
``intermediate_size``) and loads with plain ``from_pretrained``. Any other shape (BERT derives the
head size from ``hidden_size / num_attention_heads``, so pruned heads never fit its stock config)
is saved with ``modeling_hfcompress_pruned.py`` and an ``auto_map`` in the folder:
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works where hfcompress is not
installed, and ``hfcompress.load(folder)`` works without ``trust_remote_code``. ``config.json`` names
the stock family as ``model_type``, so the tokenizer (no custom code) loads with plain
``AutoTokenizer.from_pretrained(folder)``, without a "run the custom code?" prompt. The removed heads and
neurons (original indices per layer) are recorded in ``config.json``
(``hfcompress_removed_heads``, ``hfcompress_removed_kv_heads``, ``hfcompress_removed_neurons``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

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

# Kept in sync with plugins/modeling/modeling_hfcompress_pruned.py (FAMILIES), which this module
# imports only inside functions so that `hfcompress plugins` does not import torch/transformers.
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PRUNED_PREFIX = "hfcompress-pruned-"
REMOVED_HEADS = "hfcompress_removed_heads"
REMOVED_KV_HEADS = "hfcompress_removed_kv_heads"
REMOVED_NEURONS = "hfcompress_removed_neurons"


class HeadPruningConfig(TechniqueConfig):
    """Which heads/neurons to remove and how to rank them."""

    ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of all attention (query) heads to remove (0: keep all heads)."""
    ffn_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of all FFN (intermediate) neurons to remove (0: keep the FFN)."""
    heads_to_remove: list[int] | None = None
    """Instead of ``ratio``: how many heads to remove in each layer (one number per layer)."""
    neurons_to_remove: list[int] | None = None
    """Instead of ``ffn_ratio``: how many FFN neurons to remove in each layer."""
    scope: Literal["global", "per-layer"] = "global"
    """``global`` ranks heads of all layers together (scores normalised per layer, as Michel et al.);
    ``per-layer`` removes the same fraction from every layer (uniform shapes)."""
    importance: Literal["gradient", "magnitude"] = "gradient"
    """``gradient``: head-mask sensitivity on the training/calibration data; ``magnitude``: weight norms."""
    never_prune: list[tuple[int, int]] = []
    """``[layer, head]`` pairs (original query-head indices) that are never removed."""
    gqa: Literal["query-heads", "kv-groups"] = "query-heads"
    """Decoders with grouped-query attention: remove query heads evenly from every KV group, or whole groups."""
    min_heads_per_layer: int = Field(1, ge=1)
    """Every layer keeps at least this many heads (a layer without heads cannot attend)."""
    ffn_multiple_of: int = Field(8, ge=1)
    """With ``ffn_ratio``, round each layer's kept FFN width to a multiple of this (fast matmul shapes)."""
    reconstruction: Literal["none", "least-squares"] = "none"
    """``least-squares``: after removing heads/neurons, refit each layer's attention output projection
    and FFN output projection by ridge least squares so that, on the calibration texts, the kept
    inputs reproduce the unpruned layer's output (the "mask tuning" step of Kwon et al. 2022, with
    FLAP's bias compensation as its bias term). Off by default: measured on all-MiniLM-L6-v2 at 50%
    heads + 50% FFN it raised the sentiment-probe accuracy of the pruned model (0.680 -> 0.735, base
    0.780) but lowered its mean cosine to the base (0.658 -> 0.563), and after 200 distillation
    steps the two were equal within noise (see docs/techniques/head-pruning.md)."""
    reconstruction_damping: float = Field(0.01, ge=0.0, lt=10.0)
    """Ridge strength, as a fraction of the mean diagonal of each Gram matrix (SparseGPT's convention)."""
    calibration_samples: int = Field(256, gt=0)
    """Texts of the training split used for gradient importance and reconstruction."""
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(128, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> HeadPruningConfig:
        if self.heads_to_remove is not None and self.ratio > 0:
            raise ValueError("give either 'ratio' or 'heads_to_remove', not both")
        if self.neurons_to_remove is not None and self.ffn_ratio > 0:
            raise ValueError("give either 'ffn_ratio' or 'neurons_to_remove', not both")
        for name in ("heads_to_remove", "neurons_to_remove"):
            counts = getattr(self, name)
            if counts is not None and any(c < 0 for c in counts):
                raise ValueError(f"'{name}' holds a negative count: {counts}")
        if (
            self.ratio == 0
            and self.ffn_ratio == 0
            and not any(self.heads_to_remove or [])
            and not any(self.neurons_to_remove or [])
        ):
            raise ValueError(
                "nothing to prune: set 'ratio' (fraction of heads) and/or 'ffn_ratio' (fraction of FFN neurons), "
                "or 'heads_to_remove' / 'neurons_to_remove'"
            )
        return self

    @property
    def prunes_heads(self) -> bool:
        return self.ratio > 0 or any(self.heads_to_remove or [])

    @property
    def prunes_ffn(self) -> bool:
        return self.ffn_ratio > 0 or any(self.neurons_to_remove or [])


# ---------------------------------------------------------------------------------------------
# Shapes: what the model has now, before any weights are loaded


@dataclass
class Layout:
    """Per-layer shape of a model: query heads, KV heads, FFN width; plus original indices."""

    family: str
    kind: str  # "encoder" | "decoder"
    head_dim: int
    heads: list[int]
    kv_heads: list[int]
    intermediate: list[int]
    removed_heads: list[list[int]]
    removed_kv_heads: list[list[int]]
    removed_neurons: list[list[int]]

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def group_size(self, layer: int) -> int:
        return self.heads[layer] // self.kv_heads[layer]

    def unit_size(self, gqa: str, layer: int) -> int:
        """Query heads removed together: 1 for encoders/MHA, else by the GQA mode."""
        if self.kind == "encoder" or self.group_size(layer) == 1:
            return 1
        return self.kv_heads[layer] if gqa == "query-heads" else self.group_size(layer)

    def original_heads(self, layer: int) -> list[int]:
        """Original index of each current query head of ``layer``."""
        removed = set(self.removed_heads[layer])
        return [i for i in range(self.heads[layer] + len(removed)) if i not in removed]

    def original_kv_heads(self, layer: int) -> list[int]:
        removed = set(self.removed_kv_heads[layer])
        return [i for i in range(self.kv_heads[layer] + len(removed)) if i not in removed]

    def original_neurons(self, layer: int) -> list[int]:
        removed = set(self.removed_neurons[layer])
        return [i for i in range(self.intermediate[layer] + len(removed)) if i not in removed]


def family_of(config: Any) -> str | None:
    model_type = str(getattr(config, "model_type", ""))
    if model_type.startswith(PRUNED_PREFIX):
        model_type = model_type[len(PRUNED_PREFIX) :]
    return model_type if model_type in ENCODER_TYPES + DECODER_TYPES else None


def layout_of(config: Any) -> Layout:
    """The current shape, from stock fields or from a pruned model's ``pruned_layout``."""
    family = family_of(config)
    assert family is not None
    kind = "decoder" if family in DECODER_TYPES else "encoder"
    n_layers = int(config.n_layers if family == "distilbert" else config.num_hidden_layers)
    pruned = getattr(config, "pruned_layout", None)
    if pruned:
        head_dim = int(pruned["head_dim"])
        heads = [int(h) for h in pruned["num_attention_heads"]]
        kv = [int(h) for h in (pruned.get("num_key_value_heads") or heads)]
        inter = [int(n) for n in pruned["intermediate_size"]]
    elif family == "distilbert":
        heads = [int(config.n_heads)] * n_layers
        kv = list(heads)
        head_dim = int(config.dim) // int(config.n_heads)
        inter = [int(config.hidden_dim)] * n_layers
    else:
        h = int(config.num_attention_heads)
        heads = [h] * n_layers
        if kind == "decoder":
            kv = [int(getattr(config, "num_key_value_heads", None) or h)] * n_layers
            head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // h)
        else:
            kv = list(heads)
            head_dim = int(config.hidden_size) // h
        inter = [int(config.intermediate_size)] * n_layers

    def record(name: str) -> list[list[int]]:
        value = getattr(config, name, None)
        return [list(map(int, v)) for v in value] if value else [[] for _ in range(n_layers)]

    return Layout(
        family=family, kind=kind, head_dim=head_dim, heads=heads, kv_heads=kv, intermediate=inter,
        removed_heads=record(REMOVED_HEADS), removed_kv_heads=record(REMOVED_KV_HEADS),
        removed_neurons=record(REMOVED_NEURONS),
    )


# ---------------------------------------------------------------------------------------------
# How many to remove where (pure Python, shared by check and apply)


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even; 0.5 * 9 heads should remove 5, not 4
    return int(math.floor(x + 0.5))


def head_unit_counts(cfg: HeadPruningConfig, lay: Layout) -> tuple[list[int] | None, int | None]:
    """Units to remove: per layer (per-layer scope / explicit counts) or one global total."""
    if not cfg.prunes_heads:
        return [0] * lay.num_layers, None
    units = [lay.unit_size(cfg.gqa, i) for i in range(lay.num_layers)]
    if cfg.heads_to_remove is not None:
        return [c // u for c, u in zip(cfg.heads_to_remove, units, strict=True)], None
    if cfg.scope == "per-layer":
        return [_round_half_up(cfg.ratio * h / u) for h, u in zip(lay.heads, units, strict=True)], None
    return None, _round_half_up(cfg.ratio * sum(lay.heads) / max(units))


def validate_heads(cfg: HeadPruningConfig, lay: Layout, arch: str) -> None:
    """Raise BadInputError for counts that are impossible on this model."""
    n = lay.num_layers
    for layer, head in cfg.never_prune:
        if not (0 <= layer < n) or not (0 <= head < lay.heads[layer] + len(lay.removed_heads[layer])):
            raise BadInputError(
                f"never_prune: [{layer}, {head}] does not exist in {arch} ({n} layers, {lay.heads[0]} heads per layer)"
            )
    if not cfg.prunes_heads:
        return
    units = [lay.unit_size(cfg.gqa, i) for i in range(n)]
    min_units = [math.ceil(cfg.min_heads_per_layer / u) for u in units]
    if cfg.heads_to_remove is not None:
        if len(cfg.heads_to_remove) != n:
            raise BadInputError(f"heads_to_remove has {len(cfg.heads_to_remove)} entries; {arch} has {n} layers")
        for i, (c, u) in enumerate(zip(cfg.heads_to_remove, units, strict=True)):
            if c % u:
                raise BadInputError(
                    f"heads_to_remove[{i}] = {c}: with grouped-query attention ({lay.heads[i]} query heads, "
                    f"{lay.kv_heads[i]} KV heads, gqa: {cfg.gqa}) heads go in units of {u}; use a multiple of {u}"
                )
    per_layer, total = head_unit_counts(cfg, lay)
    what = f"ratio {cfg.ratio}" if cfg.heads_to_remove is None else "heads_to_remove"
    if per_layer is not None:
        for i, c in enumerate(per_layer):
            if c > lay.heads[i] // units[i] - min_units[i]:
                raise BadInputError(
                    f"{what} removes {c * units[i]} of the {lay.heads[i]} heads of layer {i} of {arch}; every layer "
                    f"keeps at least min_heads_per_layer={cfg.min_heads_per_layer}. Use a smaller ratio/count."
                )
        if cfg.heads_to_remove is None and not any(per_layer):
            raise BadInputError(
                f"ratio {cfg.ratio} removes no head of {arch} ({lay.heads[0]} heads per layer, units of {units[0]}); "
                "use a larger ratio or scope: global"
            )
    else:
        assert total is not None
        room = sum(lay.heads[i] // units[i] - min_units[i] for i in range(n))
        if total > room:
            raise BadInputError(
                f"ratio {cfg.ratio} asks for {total * max(units)} of {sum(lay.heads)} heads of {arch}, but keeping "
                f"min_heads_per_layer={cfg.min_heads_per_layer} in each of {n} layers leaves at most "
                f"{room * max(units)} removable; use a smaller ratio"
            )
        if total == 0:
            raise BadInputError(f"ratio {cfg.ratio} removes no head of {arch} ({sum(lay.heads)} heads); use a larger ratio")


def validate_ffn(cfg: HeadPruningConfig, lay: Layout, arch: str) -> None:
    n = lay.num_layers
    if cfg.neurons_to_remove is not None:
        if len(cfg.neurons_to_remove) != n:
            raise BadInputError(f"neurons_to_remove has {len(cfg.neurons_to_remove)} entries; {arch} has {n} layers")
        for i, c in enumerate(cfg.neurons_to_remove):
            if c >= lay.intermediate[i]:
                raise BadInputError(
                    f"neurons_to_remove[{i}] = {c} removes every FFN neuron of layer {i} of {arch} "
                    f"(intermediate size {lay.intermediate[i]}); keep at least one"
                )
    elif cfg.ffn_ratio > 0 and _round_half_up(cfg.ffn_ratio * min(lay.intermediate)) == 0:
        raise BadInputError(f"ffn_ratio {cfg.ffn_ratio} removes no FFN neuron of {arch}; use a larger ffn_ratio")


# ---------------------------------------------------------------------------------------------
# Importance


def _linear(layer: Any, path: str) -> Any:
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import get_module

    return get_module(layer, path)


def magnitude_importance(model: Any, lay: Layout, heads: bool, ffn: bool) -> tuple[list[Any], list[Any]]:
    """Norm of the weights each head / neuron owns (q/k/v rows and output columns; FFN rows/columns)."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, model_layers

    paths = FAMILIES[lay.family]["paths"]
    head_scores, neuron_scores = [], []
    with torch.no_grad():
        for i, layer in enumerate(model_layers(model, lay.family)):
            d = lay.head_dim
            if heads:
                sq = _linear(layer, paths["q"]).weight.float().view(lay.heads[i], d, -1).pow(2).sum((1, 2))
                sq = sq + _linear(layer, paths["o"]).weight.float().view(-1, lay.heads[i], d).pow(2).sum((0, 2))
                if lay.kind == "encoder":  # each encoder head owns its K/V rows; decoder KV heads are shared
                    for name in ("k", "v"):
                        sq = sq + _linear(layer, paths[name]).weight.float().view(lay.heads[i], d, -1).pow(2).sum((1, 2))
                head_scores.append(sq.sqrt().cpu())
            if ffn:
                sq = _linear(layer, paths["ffn_out"]).weight.float().pow(2).sum(0)
                for name in paths["ffn_in"]:
                    sq = sq + _linear(layer, name).weight.float().pow(2).sum(1)
                neuron_scores.append(sq.sqrt().cpu())
    return head_scores, neuron_scores


def _calibration_batches(state: ModelState, cfg: HeadPruningConfig, data: Any) -> list[dict[str, Any]]:
    texts = [t for t in data["text"][: cfg.calibration_samples]]
    labels = list(data["label"][: cfg.calibration_samples]) if "label" in data.column_names else None
    batches = []
    for start in range(0, len(texts), cfg.batch_size):
        enc = state.tokenizer(
            texts[start : start + cfg.batch_size], padding=True, truncation=True,
            max_length=cfg.max_length, return_tensors="pt",
        )
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if state.task == "text-generation":
            batch.pop("token_type_ids", None)
        if labels is not None:
            import torch

            batch["labels"] = torch.tensor(labels[start : start + cfg.batch_size])
        batches.append(batch)
    return batches


def _loss(state: ModelState, model: Any, batch: dict[str, Any], generator: Any) -> tuple[Any, str, str]:
    """The calibration loss and how its gradients are accumulated.

    Michel et al. (2019) score a head by E|dL/d xi_h| for the task loss L. That works for the LM loss
    and for labelled classification. A fidelity loss to the unpruned model (MSE/cosine of embeddings,
    KL to the original logits) is exactly at its minimum at xi = 1, so its gradient is zero there and
    its first-order score is meaningless; its second-order term is the Gauss-Newton/Fisher
    quantity E||dy/d xi_h||^2, which we estimate with squared gradients of a random projection
    (embeddings) or of the log-likelihood of labels sampled from the model (classifier logits).
    Scores are then sqrt(mean squared gradient): the size of the first-order output change.
    """
    import torch
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if state.task == "text-generation":
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        return model(**inputs, labels=labels).loss, "abs", "causal LM loss on the data (Michel et al.)"
    out = model(**inputs)
    if state.task == "text-classification":
        logits = out.logits.float()
        if "labels" in batch:
            return F.cross_entropy(logits, batch["labels"].to(logits.device)), "abs", "cross-entropy with labels (Michel et al.)"
        sampled = torch.multinomial(logits.detach().softmax(-1).cpu(), 1, generator=generator).squeeze(1)
        loss = F.cross_entropy(logits, sampled.to(logits.device), reduction="sum")
        return loss, "sq", "Fisher of KL to the unpruned logits (labels sampled from the model)"
    hidden = out.last_hidden_state.float()
    mask = inputs["attention_mask"].to(hidden.dtype).unsqueeze(-1)
    pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)
    probe = torch.randn(pooled.shape, generator=generator).to(pooled.device)
    return (pooled * probe).sum(), "sq", "Gauss-Newton of cosine fidelity of mean-pooled embeddings"


def gradient_importance(
    state: ModelState, lay: Layout, cfg: HeadPruningConfig, ctx: StepContext, heads: bool, ffn: bool
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Head-mask (and FFN-neuron-mask) sensitivity on calibration data, Michel et al. 2019."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, model_layers

    model = state.model
    if ctx.train_data is None or len(ctx.train_data) == 0:
        raise BadInputError("head-pruning with importance: gradient needs data; give data or use importance: magnitude")
    device = next(model.parameters()).device
    paths = FAMILIES[lay.family]["paths"]
    layers = list(model_layers(model, lay.family))
    head_masks = [torch.ones(lay.heads[i], device=device, requires_grad=True) for i in range(len(layers))] if heads else []
    neuron_masks = [torch.ones(lay.intermediate[i], device=device, requires_grad=True) for i in range(len(layers))] if ffn else []

    # Multiplying the input of the attention output projection by a per-head mask is exactly the
    # head mask xi_h of Michel et al.; the same on the FFN output projection masks neurons.
    def head_hook(mask: Any) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            shaped = x.view(*x.shape[:-1], mask.shape[0], lay.head_dim) * mask.to(x.dtype).view(-1, 1)
            return (shaped.view(x.shape), *args[1:])

        return hook

    def neuron_hook(mask: Any) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0] * mask.to(args[0].dtype), *args[1:])

        return hook

    handles = []
    for i, layer in enumerate(layers):
        if heads:
            handles.append(_linear(layer, paths["o"]).register_forward_pre_hook(head_hook(head_masks[i])))
        if ffn:
            handles.append(_linear(layer, paths["ffn_out"]).register_forward_pre_hook(neuron_hook(neuron_masks[i])))
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    generator = torch.Generator().manual_seed(ctx.seed)
    masks = head_masks + neuron_masks
    totals = [torch.zeros_like(m) for m in masks]
    mode, loss_name, losses = "abs", "", []
    batches = _calibration_batches(state, cfg, ctx.train_data)
    try:
        model.eval()  # no dropout: the score is about the deterministic model we ship
        for p in model.parameters():
            p.requires_grad_(False)  # only the masks need gradients
        with torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, mode, loss_name = _loss(state, model, batch, generator)
                grads = torch.autograd.grad(loss, masks)
                for total, g in zip(totals, grads, strict=True):
                    total += g.detach().abs() if mode == "abs" else g.detach().pow(2)
                losses.append(float(loss.detach()))
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    scores = [(t / len(batches)).cpu() for t in totals]
    if mode == "sq":
        scores = [s.sqrt() for s in scores]
    info = {"loss": loss_name, "calibration_samples": min(cfg.calibration_samples, len(ctx.train_data)),
            "batches": len(batches), "mean_loss": sum(losses) / max(len(losses), 1)}
    return scores[: len(head_masks)], scores[len(head_masks) :], info


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass
class Unit:
    layer: int
    heads: list[int]  # current query-head indices removed together
    kv_head: int | None  # current KV head removed with them (kv-groups mode)
    score: float
    removable: bool


def head_units(lay: Layout, cfg: HeadPruningConfig, scores: list[Any]) -> list[list[Unit]]:
    """Group each layer's heads into the units that can be removed while keeping GQA consistent."""
    protected = {(layer, head) for layer, head in cfg.never_prune}
    out = []
    for i in range(lay.num_layers):
        orig = lay.original_heads(i)
        s = [float(x) for x in scores[i]]
        is_protected = [(i, orig[h]) in protected for h in range(lay.heads[i])]
        size = lay.unit_size(cfg.gqa, i)
        units: list[Unit] = []
        if size == 1:
            g = lay.group_size(i)
            for h in range(lay.heads[i]):
                # MHA decoders (group size 1): a head goes with its own KV head
                kv = h if lay.kind == "decoder" and g == 1 else None
                units.append(Unit(i, [h], kv, s[h], not is_protected[h]))
        elif cfg.gqa == "kv-groups":
            g = lay.group_size(i)
            for kv in range(lay.kv_heads[i]):
                members = list(range(kv * g, (kv + 1) * g))
                units.append(Unit(i, members, kv, sum(s[h] for h in members), not any(is_protected[h] for h in members)))
        else:
            # query-heads: the r-th unit takes the r-th least important head of every KV group, so
            # each group loses the same number of heads and KV heads still divide query heads
            g = lay.group_size(i)
            ranked = [
                sorted(range(kv * g, (kv + 1) * g), key=lambda h: (is_protected[h], s[h]))
                for kv in range(lay.kv_heads[i])
            ]
            for r in range(g):
                members = sorted(group[r] for group in ranked)
                units.append(Unit(i, members, None, sum(s[h] for h in members), not any(is_protected[h] for h in members)))
        out.append(units)
    return out


def _normalized(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm > 0 else list(values)


def select_head_units(lay: Layout, cfg: HeadPruningConfig, units: list[list[Unit]]) -> list[list[Unit]]:
    per_layer, total = head_unit_counts(cfg, lay)
    min_units = [math.ceil(cfg.min_heads_per_layer / lay.unit_size(cfg.gqa, i)) for i in range(lay.num_layers)]
    chosen: list[list[Unit]] = [[] for _ in units]
    if per_layer is not None:
        for i, count in enumerate(per_layer):
            candidates = sorted((u for u in units[i] if u.removable), key=lambda u: u.score)
            if count > len(candidates) or len(units[i]) - count < min_units[i]:
                raise BadInputError(
                    f"layer {i}: cannot remove {count} head unit(s); only {len(candidates)} are not protected by "
                    f"never_prune and {min_units[i]} must stay"
                )
            chosen[i] = candidates[:count]
        return chosen
    assert total is not None
    # Michel et al. normalise importance per layer before ranking globally, so that layers whose
    # gradients are simply larger do not lose all their heads first.
    ranked = []
    for i in range(lay.num_layers):
        normed = _normalized([u.score for u in units[i]])
        ranked += [(n, u) for n, u in zip(normed, units[i], strict=True) if u.removable]
    ranked.sort(key=lambda pair: pair[0])
    left = total
    for _, unit in ranked:
        if left == 0:
            break
        if len(units[unit.layer]) - len(chosen[unit.layer]) > min_units[unit.layer]:
            chosen[unit.layer].append(unit)
            left -= 1
    if left:
        raise BadInputError(
            f"ratio {cfg.ratio}: only {total - left} of {total} head units could be removed without emptying a "
            "layer or touching never_prune heads; use a smaller ratio"
        )
    return chosen


def select_neurons(lay: Layout, cfg: HeadPruningConfig, scores: list[Any]) -> list[list[int]]:
    """Current indices of the FFN neurons to remove in each layer."""
    n = lay.num_layers
    if cfg.neurons_to_remove is not None:
        counts = list(cfg.neurons_to_remove)
    else:
        if cfg.scope == "per-layer":
            counts = [_round_half_up(cfg.ffn_ratio * size) for size in lay.intermediate]
        else:
            total = _round_half_up(cfg.ffn_ratio * sum(lay.intermediate))
            flat = []
            for i in range(n):
                flat += [(v, i) for v in _normalized([float(x) for x in scores[i]])]
            flat.sort(key=lambda pair: pair[0])
            counts = [0] * n
            for _, i in flat[:total]:
                counts[i] += 1
        m = cfg.ffn_multiple_of
        rounded = []
        for size, c in zip(lay.intermediate, counts, strict=True):
            # Round the width we KEEP to a multiple of m (matmul kernels like aligned shapes), never
            # dropping below m neurons or above the current width.
            keep = min(size, max(m, m * _round_half_up((size - c) / m))) if size > m else max(1, size - c)
            rounded.append(size - keep)
        counts = rounded
    removed = []
    for i in range(n):
        order = sorted(range(lay.intermediate[i]), key=lambda j: float(scores[i][j]))
        removed.append(sorted(order[: counts[i]]))
    return removed


# ---------------------------------------------------------------------------------------------
# Reconstruction: refit the projections that read the pruned units


def reconstruction_grams(state: ModelState, lay: Layout, cfg: HeadPruningConfig, ctx: StepContext) -> list[dict[str, Any]]:
    """Per layer, the Gram matrix [x, 1]^T [x, 1] of the inputs x of the attention output projection
    (``o``) and of the FFN output projection (``ffn_out``), over the real (non-padded) tokens of the
    calibration texts, from one no-grad pass of the unpruned model. Accumulated in fp64 from fp32
    batch products: a Gram over tens of thousands of tokens loses precision in fp32."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, model_layers

    model = state.model
    paths = FAMILIES[lay.family]["paths"]
    device = next(model.parameters()).device
    grams: list[dict[str, Any]] = [{} for _ in range(lay.num_layers)]
    current_mask: list[Any] = [None]

    def hook(i: int, key: str) -> Any:
        def fn(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            x = x[current_mask[0]] if current_mask[0] is not None else x.reshape(-1, x.shape[-1])
            x = torch.cat([x, torch.ones(x.shape[0], 1, device=x.device)], dim=1)
            g = (x.T @ x).double()
            grams[i][key] = grams[i][key] + g if key in grams[i] else g

        return fn

    handles = []
    for i, layer in enumerate(model_layers(model, lay.family)):
        handles.append(_linear(layer, paths["o"]).register_forward_pre_hook(hook(i, "o")))
        handles.append(_linear(layer, paths["ffn_out"]).register_forward_pre_hook(hook(i, "ffn_out")))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in _calibration_batches(state, cfg, ctx.train_data):
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                current_mask[0] = inputs["attention_mask"].bool()
                model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return grams


def _ridge_refit(linear: Any, gram: Any, keep: list[int], damping: float) -> tuple[Any, Any, float]:
    """Weights for ``linear`` reading only input columns ``keep`` that best reproduce its full output
    on the calibration inputs: W'^T = (G_KK + lambda I)^-1 G_K,all W^T, the bias riding along as the
    constant column. Returns (weight, bias or None, relative reconstruction error)."""
    import torch

    d = linear.weight.shape[1]
    has_bias = linear.bias is not None
    w_full = linear.weight.detach().double().cpu()
    if has_bias:
        w_full = torch.cat([w_full, linear.bias.detach().double().cpu().unsqueeze(1)], dim=1)
        cols = [*keep, d]
    else:
        gram = gram[:d, :d]
        cols = list(keep)
    idx = torch.tensor(cols, dtype=torch.long)
    g_kk = gram[idx][:, idx]
    target = gram[idx] @ w_full.T  # (|K|, out): E[x_K y^T] with y = W x
    lam = damping * float(g_kk.diagonal().mean())
    sol = torch.linalg.solve(g_kk + lam * torch.eye(len(cols), dtype=g_kk.dtype), target)
    # Error of the reconstruction on the calibration data, relative to the output energy:
    # E||y - y'||^2 = tr(W G W^T) - 2 tr(S^T target) + tr(S^T G_KK S)
    energy = float(torch.einsum("od,de,oe->", w_full, gram, w_full))
    err = energy - 2 * float((sol * target).sum()) + float((sol * (g_kk @ sol)).sum())
    weight = sol[: len(keep)].T
    bias = sol[len(keep)] if has_bias else None
    return weight, bias, max(err, 0.0) / max(energy, 1e-30)


def least_squares_refits(model: Any, lay: Layout, grams: list[dict[str, Any]], keep_heads: list[list[int]],
                         keep_neurons: list[list[int]], damping: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The refitted ``o`` and ``ffn_out`` weights of every layer that loses heads or neurons (computed
    before slicing, from the unpruned weights), and the per-layer relative errors for the record."""
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, model_layers

    paths = FAMILIES[lay.family]["paths"]
    d = lay.head_dim
    refits: list[dict[str, Any]] = []
    errors: dict[str, list[float | None]] = {"o": [], "ffn_out": []}
    for i, layer in enumerate(model_layers(model, lay.family)):
        refit: dict[str, Any] = {}
        keep = {"o": [h * d + j for h in keep_heads[i] for j in range(d)], "ffn_out": keep_neurons[i]}
        full = {"o": lay.heads[i] * d, "ffn_out": lay.intermediate[i]}
        for key in ("o", "ffn_out"):
            if len(keep[key]) == full[key]:
                errors[key].append(None)
                continue
            weight, bias, err = _ridge_refit(_linear(layer, paths[key]), grams[i][key], keep[key], damping)
            refit[key] = (weight, bias)
            errors[key].append(round(err, 5))
        refits.append(refit)
    info = {"method": "least-squares", "damping": damping,
            "relative_error_attention_out": errors["o"], "relative_error_ffn_out": errors["ffn_out"]}
    return refits, info


def apply_refits(model: Any, lay: Layout, refits: list[dict[str, Any]]) -> None:
    """Copy the refitted weights into the sliced projections (same shapes by construction)."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, model_layers

    paths = FAMILIES[lay.family]["paths"]
    with torch.no_grad():
        for layer, refit in zip(model_layers(model, lay.family), refits, strict=True):
            for key, (weight, bias) in refit.items():
                linear = _linear(layer, paths[key])
                linear.weight.copy_(weight.to(linear.weight.dtype))
                if bias is not None:
                    linear.bias.copy_(bias.to(linear.bias.dtype))


# ---------------------------------------------------------------------------------------------
# Surgery


def _slice_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new Linear holding only ``index`` along ``dim`` (0: outputs, 1: inputs); dtype/device kept."""
    import torch
    from torch import nn

    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[index] if dim == 0 else linear.bias.detach())
    new.weight.requires_grad_(linear.weight.requires_grad)
    if linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def prune_in_place(
    model: Any, lay: Layout, keep_heads: list[list[int]], keep_kv: list[list[int]], keep_neurons: list[list[int]]
) -> None:
    """Remove rows/columns from every layer's projections; keep_* hold current indices to keep."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import (
        FAMILIES,
        get_module,
        model_layers,
        set_attention_attributes,
        set_module,
    )

    paths = FAMILIES[lay.family]["paths"]
    d = lay.head_dim

    def rows(heads: list[int]) -> Any:
        return torch.tensor([h * d + j for h in heads for j in range(d)], dtype=torch.long)

    for i, layer in enumerate(model_layers(model, lay.family)):
        q_idx = rows(keep_heads[i])
        kv_idx = rows(keep_kv[i]) if lay.kind == "decoder" else q_idx
        set_module(layer, paths["q"], _slice_linear(get_module(layer, paths["q"]), q_idx, 0))
        set_module(layer, paths["k"], _slice_linear(get_module(layer, paths["k"]), kv_idx, 0))
        set_module(layer, paths["v"], _slice_linear(get_module(layer, paths["v"]), kv_idx, 0))
        set_module(layer, paths["o"], _slice_linear(get_module(layer, paths["o"]), q_idx, 1))
        n_idx = torch.tensor(keep_neurons[i], dtype=torch.long)
        for name in paths["ffn_in"]:
            set_module(layer, name, _slice_linear(get_module(layer, name), n_idx, 0))
        set_module(layer, paths["ffn_out"], _slice_linear(get_module(layer, paths["ffn_out"]), n_idx, 1))
        kv_count = len(keep_kv[i]) if lay.kind == "decoder" else len(keep_heads[i])
        set_attention_attributes(get_module(layer, paths["attention"]), lay.family, len(keep_heads[i]), kv_count, d)


def _model_head(model: Any) -> str:
    name = type(model).__name__
    for head in ("ForSequenceClassification", "ForCausalLM"):
        if name.endswith(head):
            return head
    return "Model"


def rebuild(model: Any, lay: Layout, new: Layout) -> tuple[Any, bool]:
    """A fresh model of the pruned shape holding the pruned weights; True when stock fields fit.

    Rebuilding (instead of keeping the patched modules) makes the in-memory model an instance of
    exactly the class that reloads it, with a config that describes it: saving and reloading are
    then plain transformers operations, whatever a later step does with the model.
    """
    import copy

    from hfcompress_plugins.modeling import modeling_hfcompress_pruned as pruned_code
    from transformers.initialization import no_init_weights

    uniform = len(set(new.heads)) == 1 and len(set(new.kv_heads)) == 1 and len(set(new.intermediate)) == 1
    heads_unchanged = not any(new.removed_heads)
    already_custom = getattr(model.config, "pruned_layout", None) is not None
    # BERT-style heads are hidden_size / num_attention_heads wide, so only an unchanged head count
    # fits their stock config; Llama-style configs carry head_dim, so any uniform shape fits.
    standard = uniform and not already_custom and (new.kind == "decoder" or heads_unchanged)

    config_dict = model.config.to_dict()
    records = {REMOVED_HEADS: new.removed_heads, REMOVED_NEURONS: new.removed_neurons}
    if new.kind == "decoder":
        records[REMOVED_KV_HEADS] = new.removed_kv_heads
    if standard:
        config = copy.deepcopy(model.config)
        if new.family == "distilbert":
            config.hidden_dim = new.intermediate[0]
        else:
            config.intermediate_size = new.intermediate[0]
        if new.kind == "decoder":
            config.num_attention_heads = new.heads[0]
            config.num_key_value_heads = new.kv_heads[0]
            config.head_dim = new.head_dim  # no longer hidden_size / num_attention_heads
        for key, value in records.items():
            setattr(config, key, value)
        cls = type(model)
    else:
        cls = pruned_code.MODEL_CLASSES[(new.family, _model_head(model))]
        for key in ("model_type", "auto_map", "architectures", "transformers_version", "pruned_layout"):
            config_dict.pop(key, None)
        layout = {"head_dim": new.head_dim, "num_attention_heads": new.heads, "intermediate_size": new.intermediate}
        if new.kind == "decoder":
            layout["num_key_value_heads"] = new.kv_heads
        config = cls.config_class(**{**config_dict, **records}, pruned_layout=layout)
        config.auto_map = pruned_code.auto_map(new.family)
    config.architectures = [cls.__name__]
    config._attn_implementation = model.config._attn_implementation
    with no_init_weights():
        fresh = cls(config)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    fresh.to(dtype=dtype, device=device)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # tying happens in from_pretrained, not in the constructor: without this an LM with tied
    # embeddings (SmolLM2) would come out with a separate 28M-parameter lm_head copy
    fresh.tie_weights()
    tied = set(getattr(fresh, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"pruned weights do not fit the rebuilt model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hasattr(model, "generation_config") and getattr(model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.train(model.training)
    return fresh, standard


# ---------------------------------------------------------------------------------------------
# The technique


class HeadPruning(Technique[HeadPruningConfig]):
    """Remove whole attention heads and FFN neurons (structured pruning); reloads without hfcompress."""

    name = "head-pruning"
    summary = "Structured pruning of attention heads and FFN neurons (BERT- and Llama-family), gradient or magnitude importance"
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
        if config.importance == "gradient":
            head_scores, neuron_scores, how = gradient_importance(
                state, lay, config, ctx, config.prunes_heads, config.prunes_ffn
            )
        else:
            head_scores, neuron_scores = magnitude_importance(model, lay, config.prunes_heads, config.prunes_ffn)
            how = {"loss": "weight norms (no data)"}
        scoring_seconds = time.perf_counter() - start

        keep_heads, keep_kv, keep_neurons = [], [], []
        new = Layout(family=lay.family, kind=lay.kind, head_dim=lay.head_dim, heads=[], kv_heads=[], intermediate=[],
                     removed_heads=[], removed_kv_heads=[], removed_neurons=[])
        chosen = select_head_units(lay, config, head_units(lay, config, head_scores)) if config.prunes_heads else [
            [] for _ in range(lay.num_layers)]
        removed_neurons = select_neurons(lay, config, neuron_scores) if config.prunes_ffn else [
            [] for _ in range(lay.num_layers)]
        for i in range(lay.num_layers):
            gone = {h for unit in chosen[i] for h in unit.heads}
            gone_kv = {unit.kv_head for unit in chosen[i] if unit.kv_head is not None}
            keep_heads.append([h for h in range(lay.heads[i]) if h not in gone])
            keep_kv.append([k for k in range(lay.kv_heads[i]) if k not in gone_kv])
            gone_n = set(removed_neurons[i])
            keep_neurons.append([j for j in range(lay.intermediate[i]) if j not in gone_n])
            orig_h, orig_kv, orig_n = lay.original_heads(i), lay.original_kv_heads(i), lay.original_neurons(i)
            new.heads.append(len(keep_heads[i]))
            new.kv_heads.append(len(keep_kv[i]) if lay.kind == "decoder" else len(keep_heads[i]))
            new.intermediate.append(len(keep_neurons[i]))
            new.removed_heads.append(sorted(lay.removed_heads[i] + [orig_h[h] for h in gone]))
            new.removed_kv_heads.append(sorted(lay.removed_kv_heads[i] + [orig_kv[k] for k in gone_kv]))
            new.removed_neurons.append(sorted(lay.removed_neurons[i] + [orig_n[j] for j in gone_n]))

        refits: list[dict[str, Any]] | None = None
        reconstruction: dict[str, Any] = {"method": "none"}
        if config.reconstruction == "least-squares":
            start = time.perf_counter()
            grams = reconstruction_grams(state, lay, config, ctx)
            refits, reconstruction = least_squares_refits(model, lay, grams, keep_heads, keep_neurons,
                                                          config.reconstruction_damping)
            reconstruction["seconds"] = round(time.perf_counter() - start, 3)
            del grams
        prune_in_place(model, lay, keep_heads, keep_kv, keep_neurons)
        if refits is not None:
            apply_refits(model, lay, refits)
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


@hookimpl
def hfcompress_register_techniques(register: Any) -> None:
    register(HeadPruning)


__all__ = ["HeadPruning", "HeadPruningConfig"]
