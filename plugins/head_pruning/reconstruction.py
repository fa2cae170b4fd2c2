"""Least-squares reconstruction (``reconstruction: least-squares``): refit the projections that
read the pruned units, so the kept inputs reproduce the unpruned layer's output on calibration text.

The refits are computed from the unpruned weights, before surgery, and copied into the sliced
projections after it (same shapes by construction).
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import ModelState, StepContext

from .calibration import calibration_batches
from .config import HeadPruningConfig
from .layout import Layout


def reconstruction_grams(state: ModelState, lay: Layout, cfg: HeadPruningConfig, ctx: StepContext) -> list[dict[str, Any]]:
    """Per layer, the Gram matrix [x, 1]^T [x, 1] of the inputs x of the attention output projection
    (``o``) and of the FFN output projection (``ffn_out``), over the real (non-padded) tokens of the
    calibration texts, from one no-grad pass of the unpruned model. Accumulated in fp64 from fp32
    batch products: a Gram over tens of thousands of tokens loses precision in fp32."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, get_module, model_layers

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
        handles.append(get_module(layer, paths["o"]).register_forward_pre_hook(hook(i, "o")))
        handles.append(get_module(layer, paths["ffn_out"]).register_forward_pre_hook(hook(i, "ffn_out")))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in calibration_batches(state, cfg, ctx.train_data):
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
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, get_module, model_layers

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
            weight, bias, err = _ridge_refit(get_module(layer, paths[key]), grams[i][key], keep[key], damping)
            refit[key] = (weight, bias)
            errors[key].append(round(err, 5))
        refits.append(refit)
    info = {"method": "least-squares", "damping": damping,
            "relative_error_attention_out": errors["o"], "relative_error_ffn_out": errors["ffn_out"]}
    return refits, info


def apply_refits(model: Any, lay: Layout, refits: list[dict[str, Any]]) -> None:
    """Copy the refitted weights into the sliced projections (same shapes by construction)."""
    import torch
    from hfcompress_plugins.modeling.modeling_hfcompress_pruned import FAMILIES, get_module, model_layers

    paths = FAMILIES[lay.family]["paths"]
    with torch.no_grad():
        for layer, refit in zip(model_layers(model, lay.family), refits, strict=True):
            for key, (weight, bias) in refit.items():
                linear = get_module(layer, paths[key])
                linear.weight.copy_(weight.to(linear.weight.dtype))
                if bias is not None:
                    linear.bias.copy_(bias.to(linear.bias.dtype))

