"""How much each head and FFN neuron matters: the scores that ``selection.py`` ranks.

``magnitude``: the norm of the weights a head/neuron owns, no data. ``gradient``: the head-mask
sensitivity of Michel et al. (2019) on the calibration texts, extended to FFN neurons. Both return
one score tensor per layer (on CPU) for heads and for neurons; higher means more important.
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import BadInputError, ModelState, StepContext

from .calibration import calibration_batches
from .config import HeadPruningConfig
from .layout import Layout


def magnitude_importance(model: Any, lay: Layout, heads: bool, ffn: bool) -> tuple[list[Any], list[Any]]:
    """Norm of the weights each head / neuron owns (q/k/v rows and output columns; FFN rows/columns)."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import (
        FAMILIES,
        ffn_in_blocks,
        get_module,
        head_row_linears,
        model_layers,
    )

    paths = FAMILIES[lay.family]["paths"]
    blocks = ffn_in_blocks(lay.family)
    head_scores, neuron_scores = [], []
    with torch.no_grad():
        for i, layer in enumerate(model_layers(model, lay.family)):
            d = lay.head_dim
            if heads:
                parts = _head_row_norms(lay, i, head_row_linears(layer, lay.family))
                sq = parts[0] + get_module(layer, paths["o"]).weight.float().view(-1, lay.heads[i], d).pow(2).sum((0, 2))
                for part in parts[1:]:
                    sq = sq + part
                head_scores.append(sq.sqrt().cpu())
            if ffn:
                sq = get_module(layer, paths["ffn_out"]).weight.float().pow(2).sum(0)
                for name in paths["ffn_in"]:
                    sq = sq + get_module(layer, name).weight.float().pow(2).sum(1).view(blocks, -1).sum(0)
                neuron_scores.append(sq.sqrt().cpu())
    return head_scores, neuron_scores


def _head_row_norms(lay: Layout, i: int, linears: list[tuple[str, Any, tuple[str, ...]]]) -> list[Any]:
    """Squared norm per query head of each block of head rows it owns, query rows first. Each
    encoder head owns its K/V rows (and DeBERTa's position projections); decoder KV heads are
    shared by several query heads, so only their query rows count."""
    d = lay.head_dim
    size = {"q": lay.heads[i] * d, "kv": lay.kv_heads[i] * d}
    norms = []
    for _path, linear, parts in linears:
        weight, offset = linear.weight.float(), 0
        for part in parts:
            if part == "q" or lay.kind == "encoder":
                block = weight[offset : offset + size[part]]
                norms.append(block.reshape(lay.heads[i], d, -1).pow(2).sum((1, 2)))
            offset += size[part]
    return norms


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
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import model_layers

    model = state.model
    if ctx.train_data is None or len(ctx.train_data) == 0:
        raise BadInputError("head-pruning with importance: gradient needs data; give data or use importance: magnitude")
    device = next(model.parameters()).device
    layers = list(model_layers(model, lay.family))
    head_masks = [torch.ones(lay.heads[i], device=device, requires_grad=True) for i in range(len(layers))] if heads else []
    neuron_masks = [torch.ones(lay.intermediate[i], device=device, requires_grad=True) for i in range(len(layers))] if ffn else []
    batches = calibration_batches(state, cfg, ctx.train_data)
    generator = torch.Generator().manual_seed(ctx.seed)
    handles = _install_mask_hooks(layers, lay, head_masks, neuron_masks)
    try:
        totals, mode, loss_name, losses = _accumulate_mask_gradients(state, head_masks + neuron_masks, batches,
                                                                     generator)
    finally:
        for h in handles:
            h.remove()
    scores = [(t / len(batches)).cpu() for t in totals]
    if mode == "sq":
        scores = [s.sqrt() for s in scores]
    info = {"loss": loss_name, "calibration_samples": min(cfg.calibration_samples, len(ctx.train_data)),
            "batches": len(batches), "mean_loss": sum(losses) / max(len(losses), 1)}
    return scores[: len(head_masks)], scores[len(head_masks) :], info


def _install_mask_hooks(layers: list[Any], lay: Layout, head_masks: list[Any], neuron_masks: list[Any]) -> list[Any]:
    """Forward pre-hooks that multiply each layer's ``o`` / ``ffn_out`` input by its mask; their handles.

    Multiplying the input of the attention output projection by a per-head mask is exactly the
    head mask xi_h of Michel et al.; the same on the FFN output projection masks neurons.
    """
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, get_module

    paths = FAMILIES[lay.family]["paths"]

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
        if head_masks:
            handles.append(get_module(layer, paths["o"]).register_forward_pre_hook(head_hook(head_masks[i])))
        if neuron_masks:
            handles.append(get_module(layer, paths["ffn_out"]).register_forward_pre_hook(neuron_hook(neuron_masks[i])))
    return handles


def _accumulate_mask_gradients(
    state: ModelState, masks: list[Any], batches: list[dict[str, Any]], generator: Any
) -> tuple[list[Any], str, str, list[float]]:
    """Sum over batches of |dL/d mask| (or its square, by the loss's mode), with only the masks
    requiring gradients; the model's training mode and requires_grad flags are restored after."""
    import torch

    model = state.model
    device = next(model.parameters()).device
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    totals = [torch.zeros_like(m) for m in masks]
    mode, loss_name, losses = "abs", "", []
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
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return totals, mode, loss_name, losses
