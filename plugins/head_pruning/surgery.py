"""Surgery: take the removed rows/columns out of the weight matrices and rebuild the model.

``prune_in_place`` slices every layer's projections (the incoming model is modified, so no second
full copy is held in memory); ``rebuild`` then moves the sliced weights into a fresh model of the
class and config that will reload them: the stock class when the pruned shape fits the family's
stock config fields, else the matching class of ``modeling_hfcompress_pruned.py``.
"""

from __future__ import annotations

from typing import Any

from .layout import REMOVED_HEADS, REMOVED_KV_HEADS, REMOVED_NEURONS, Layout


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
        ffn_in_blocks,
        get_module,
        head_row_linears,
        model_layers,
        set_attention_attributes,
        set_module,
    )

    paths = FAMILIES[lay.family]["paths"]
    d = lay.head_dim
    blocks = ffn_in_blocks(lay.family)

    def rows(heads: list[int], offset: int = 0) -> list[int]:
        return [offset + h * d + j for h in heads for j in range(d)]

    for i, layer in enumerate(model_layers(model, lay.family)):
        kv_keep = keep_kv[i] if lay.kind == "decoder" else keep_heads[i]
        # a block of query-head rows holds heads[i] heads, a block of key/value rows kv_heads[i]
        keep = {"q": keep_heads[i], "kv": kv_keep}
        size = {"q": lay.heads[i] * d, "kv": lay.kv_heads[i] * d}
        for path, linear, parts in head_row_linears(layer, lay.family):
            index, offset = [], 0
            for part in parts:
                index += rows(keep[part], offset)
                offset += size[part]
            set_module(layer, path, _slice_linear(linear, torch.tensor(index, dtype=torch.long), 0))
        q_idx = torch.tensor(rows(keep_heads[i]), dtype=torch.long)
        set_module(layer, paths["o"], _slice_linear(get_module(layer, paths["o"]), q_idx, 1))
        # a fused GLU input (ModernBERT) holds [input | gate]: neuron n is row n of every block
        width = lay.intermediate[i]
        n_in = torch.tensor([b * width + n for b in range(blocks) for n in keep_neurons[i]], dtype=torch.long)
        for name in paths["ffn_in"]:
            set_module(layer, name, _slice_linear(get_module(layer, name), n_in, 0))
        n_idx = torch.tensor(keep_neurons[i], dtype=torch.long)
        set_module(layer, paths["ffn_out"], _slice_linear(get_module(layer, paths["ffn_out"]), n_idx, 1))
        set_attention_attributes(get_module(layer, paths["attention"]), lay.family, len(keep_heads[i]), len(kv_keep), d)


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
    uniform = len(set(new.heads)) == 1 and len(set(new.kv_heads)) == 1 and len(set(new.intermediate)) == 1
    heads_unchanged = not any(new.removed_heads)
    already_custom = getattr(model.config, "pruned_layout", None) is not None
    # BERT-style heads are hidden_size / num_attention_heads wide, so only an unchanged head count
    # fits their stock config; Llama-style configs carry head_dim, so any uniform shape fits.
    standard = uniform and not already_custom and (new.kind == "decoder" or heads_unchanged)
    cls, config = _stock_config(model, new) if standard else _custom_config(model, new)
    config.architectures = [cls.__name__]
    config._attn_implementation = model.config._attn_implementation
    return _load_pruned_weights(cls, config, model), standard


def _removal_records(new: Layout) -> dict[str, list[list[int]]]:
    """The config fields that record the removed heads/neurons (original indices per layer)."""
    records = {REMOVED_HEADS: new.removed_heads, REMOVED_NEURONS: new.removed_neurons}
    if new.kind == "decoder":
        records[REMOVED_KV_HEADS] = new.removed_kv_heads
    return records


def _stock_config(model: Any, new: Layout) -> tuple[Any, Any]:
    """The model's own class, and its config with the uniform pruned shape in stock fields."""
    import copy

    config = copy.deepcopy(model.config)
    if new.family == "distilbert":
        config.hidden_dim = new.intermediate[0]
    else:
        config.intermediate_size = new.intermediate[0]
    if new.kind == "decoder":
        config.num_attention_heads = new.heads[0]
        config.num_key_value_heads = new.kv_heads[0]
        config.head_dim = new.head_dim  # no longer hidden_size / num_attention_heads
    for key, value in _removal_records(new).items():
        setattr(config, key, value)
    return type(model), config


def _custom_config(model: Any, new: Layout) -> tuple[Any, Any]:
    """The ``modeling_hfcompress_pruned`` class for the family and head, and a config with the
    per-layer shape in ``pruned_layout`` and an ``auto_map`` to the modeling file."""
    from hfcompress_plugins.modeling import modeling_hfcompress_pruned as pruned_code

    config_dict = model.config.to_dict()
    cls = pruned_code.MODEL_CLASSES[(new.family, _model_head(model))]
    for key in ("model_type", "auto_map", "architectures", "transformers_version", "pruned_layout"):
        config_dict.pop(key, None)
    layout = {"head_dim": new.head_dim, "num_attention_heads": new.heads, "intermediate_size": new.intermediate}
    if new.kind == "decoder":
        layout["num_key_value_heads"] = new.kv_heads
    config = cls.config_class(**{**config_dict, **_removal_records(new)}, pruned_layout=layout)
    config.auto_map = pruned_code.auto_map(new.family)
    return cls, config


def _load_pruned_weights(cls: Any, config: Any, model: Any) -> Any:
    """An instance of ``cls(config)`` holding ``model``'s (sliced) weights, dtype, device and mode."""
    import copy

    from transformers.initialization import no_init_weights

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
    return fresh
