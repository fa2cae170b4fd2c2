"""Transformer models with a different number of attention heads / FFN neurons in each layer.

Written by hfcompress's ``head-pruning`` technique into every output folder whose pruned shape no
stock transformers config can describe (BERT-family encoders, MPNet, DeBERTa-v2 and ModernBERT once
heads go, because they derive the head size from ``hidden_size / num_attention_heads``; Llama-family
models when layers differ). The file is self-contained: it needs only ``torch`` and
``transformers``, never hfcompress, so

    AutoModel.from_pretrained(folder, trust_remote_code=True)

works anywhere. Each class subclasses the stock transformers class of the original model and, after
the stock constructor built the full-size layers, replaces the projections of every layer with
smaller ones of the shapes listed in ``config.pruned_layout``::

    {"head_dim": 32, "num_attention_heads": [8, 9, ...], "num_key_value_heads": [...],
     "intermediate_size": [768, 770, ...]}

(``num_key_value_heads`` only for decoders). Everything else, forward passes included, is the stock
transformers code, so outputs match the model that was pruned in memory exactly. One addition:
MPNet adds a relative position bias with one column per head, computed once for all layers from a
shared embedding, so each pruned MPNet layer's attention (``PrunedMPNetSelfAttention``) takes the
columns of the heads it kept. Which heads and neurons were removed (original indices) is recorded
in ``config.hfcompress_removed_heads`` and ``config.hfcompress_removed_neurons``. ``config.json``
names the stock family (``"model_type": "bert"``) and these classes in ``architectures``/``auto_map``:
readers of the config alone (tokenizers, sentence-transformers, ONNX tools) need no remote code; the
model needs ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any

import transformers
from torch import nn
from transformers.models.mpnet import modeling_mpnet

LAYOUT_KEY = "pruned_layout"

# Where the prunable pieces live in one layer of each supported family, relative to the base
# model (``model.base_model``). ``heads_attr`` are the attention-module attributes that the stock
# forward pass reads and that depend on the number of heads.
ENCODER_PATHS = {
    "layers": "encoder.layer",
    "attention": "attention.self",
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ffn_in": ("intermediate.dense",),
    "ffn_out": "output.dense",
}
DISTILBERT_PATHS = {
    "layers": "transformer.layer",
    "attention": "attention",
    "q": "attention.q_lin",
    "k": "attention.k_lin",
    "v": "attention.v_lin",
    "o": "attention.out_lin",
    "ffn_in": ("ffn.lin1",),
    "ffn_out": "ffn.lin2",
}
DECODER_PATHS = {
    "layers": "layers",
    "attention": "self_attn",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_out": "mlp.down_proj",
}

MPNET_PATHS = {
    "layers": "encoder.layer",
    "attention": "attention.attn",
    "q": "attention.attn.q",
    "k": "attention.attn.k",
    "v": "attention.attn.v",
    "o": "attention.attn.o",
    "ffn_in": ("intermediate.dense",),
    "ffn_out": "output.dense",
}
# DeBERTa-v2's disentangled attention projects the shared relative-position embeddings through
# per-layer, per-head projections as well (absent with share_att_key or without c2p/p2c): their
# output rows belong to the heads like the query rows. Optional paths are skipped where absent.
DEBERTA_V2_PATHS = {
    **ENCODER_PATHS,
    "q": "attention.self.query_proj",
    "k": "attention.self.key_proj",
    "v": "attention.self.value_proj",
    "head_rows_optional": ("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
}
# ModernBERT fuses Q, K and V into one projection (rows [q heads | k heads | v heads]) and the
# GLU's input and gate into one (rows [input | gate], chunked in two by the forward pass).
MODERNBERT_PATHS = {
    "layers": "layers",
    "attention": "attn",
    "qkv": "attn.Wqkv",
    "o": "attn.Wo",
    "ffn_in": ("mlp.Wi",),
    "ffn_in_blocks": 2,
    "ffn_out": "mlp.Wo",
}

# model_type -> kind, class-name prefix in transformers, paths inside one layer
FAMILIES: dict[str, dict[str, Any]] = {
    "bert": {"kind": "encoder", "prefix": "Bert", "paths": ENCODER_PATHS},
    "roberta": {"kind": "encoder", "prefix": "Roberta", "paths": ENCODER_PATHS},
    "xlm-roberta": {"kind": "encoder", "prefix": "XLMRoberta", "paths": ENCODER_PATHS},
    "camembert": {"kind": "encoder", "prefix": "Camembert", "paths": ENCODER_PATHS},
    "electra": {"kind": "encoder", "prefix": "Electra", "paths": ENCODER_PATHS},
    "distilbert": {"kind": "encoder", "prefix": "DistilBert", "paths": DISTILBERT_PATHS},
    "mpnet": {"kind": "encoder", "prefix": "MPNet", "paths": MPNET_PATHS},
    "deberta-v2": {"kind": "encoder", "prefix": "DebertaV2", "paths": DEBERTA_V2_PATHS},
    "modernbert": {"kind": "encoder", "prefix": "ModernBert", "paths": MODERNBERT_PATHS},
    "llama": {"kind": "decoder", "prefix": "Llama", "paths": DECODER_PATHS},
    "mistral": {"kind": "decoder", "prefix": "Mistral", "paths": DECODER_PATHS},
    "qwen2": {"kind": "decoder", "prefix": "Qwen2", "paths": DECODER_PATHS},
    "qwen3": {"kind": "decoder", "prefix": "Qwen3", "paths": DECODER_PATHS},
}
HEAD_FIELDS = {"distilbert": "n_heads"}
FFN_FIELDS = {"distilbert": "hidden_dim"}
HIDDEN_FIELDS = {"distilbert": "dim"}
TASK_HEADS = {"encoder": ("Model", "ForSequenceClassification"), "decoder": ("Model", "ForCausalLM")}
AUTO_CLASS_OF_HEAD = {
    "Model": "AutoModel",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForCausalLM": "AutoModelForCausalLM",
}


def get_module(root: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def find_module(root: nn.Module, dotted: str) -> Any:
    """The module at ``dotted``, or None where the model has none (optional projections)."""
    module: Any = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)


def model_layers(model: nn.Module, family: str) -> Any:
    base = getattr(model, "base_model", model)
    return get_module(base, FAMILIES[family]["paths"]["layers"])


def head_row_linears(layer: nn.Module, family: str) -> list[tuple[str, Any, tuple[str, ...]]]:
    """The projections of one layer whose output rows belong to heads: (path, linear, blocks) with
    one entry of ``blocks`` per block of rows along the output dimension, ``"q"`` for a block of
    query heads and ``"kv"`` for a block of key/value heads (the same heads in encoders); each block
    is laid out head by head, ``head_dim`` rows each. Paths in ``head_rows_optional`` are left out
    where the layer has no such module; any other missing path raises ``AttributeError``."""
    paths = FAMILIES[family]["paths"]
    if "qkv" in paths:
        return [(paths["qkv"], get_module(layer, paths["qkv"]), ("q", "kv", "kv"))]
    linears: list[tuple[str, Any, tuple[str, ...]]] = [
        (paths[name], get_module(layer, paths[name]), (part,)) for name, part in (("q", "q"), ("k", "kv"), ("v", "kv"))
    ]
    for path in paths.get("head_rows_optional", ()):
        linear = find_module(layer, path)
        if linear is not None:
            linears.append((path, linear, ("q",)))
    return linears


def ffn_in_blocks(family: str) -> int:
    """Blocks of ``intermediate_size`` rows in each FFN input projection (2 for a fused GLU)."""
    return int(FAMILIES[family]["paths"].get("ffn_in_blocks", 1))


class PrunedMPNetSelfAttention(modeling_mpnet.MPNetSelfAttention):
    """MPNet self-attention that keeps only some heads of the relative position bias.

    MPNet computes one relative position bias per head, once for all layers, from an embedding
    with one column per original head (``encoder.relative_attention_bias``), and adds it to every
    layer's attention scores. A layer that lost heads takes the columns of the heads it kept
    (original indices in ``bias_heads``); the shared embedding itself stays whole, since other
    layers may keep other heads. Swapped in by ``apply_layout``; never constructed directly.
    """

    bias_heads: list[int] | None = None

    def forward(  # type: ignore[override]
        self, hidden_states: Any, attention_mask: Any = None, position_bias: Any = None,
        output_attentions: bool = False, **kwargs: Any,
    ) -> Any:
        if position_bias is not None and self.bias_heads is not None:
            position_bias = position_bias[:, self.bias_heads]
        return super().forward(hidden_states, attention_mask, position_bias, output_attentions=output_attentions,
                               **kwargs)


def select_position_bias_heads(attention: Any, kept: list[int], total: int) -> None:
    """Make an MPNet layer's attention read the shared position bias of its ``kept`` heads only."""
    attention.__class__ = PrunedMPNetSelfAttention
    attention.bias_heads = None if list(kept) == list(range(total)) else [int(h) for h in kept]


def set_attention_attributes(attention: Any, family: str, heads: int, kv_heads: int, head_dim: int) -> None:
    """Update what the stock forward pass reads about the number of heads of one layer."""
    kind = FAMILIES[family]["kind"]
    if family == "modernbert":
        return  # the stock forward pass reshapes with -1 heads and head_dim
    if kind == "decoder":
        # the stock code reshapes with -1 heads and repeats each KV head num_key_value_groups times
        attention.num_key_value_groups = heads // kv_heads
    elif family == "distilbert":
        attention.n_heads = heads
    else:
        attention.num_attention_heads = heads
        attention.all_head_size = heads * head_dim


def _resized(linear: nn.Linear, out_features: int | None = None, in_features: int | None = None) -> nn.Linear:
    """An uninitialised Linear with new shape, on the same device/dtype (weights get loaded later)."""
    return nn.Linear(
        in_features if in_features is not None else linear.in_features,
        out_features if out_features is not None else linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )


def apply_layout(model: nn.Module, family: str, layout: dict[str, Any]) -> None:
    """Shrink every layer of a freshly built stock model to the shapes in ``layout``."""
    paths = FAMILIES[family]["paths"]
    head_dim = int(layout["head_dim"])
    heads = layout["num_attention_heads"]
    kv_heads = layout.get("num_key_value_heads") or heads
    inter = layout["intermediate_size"]
    blocks = ffn_in_blocks(family)
    for i, layer in enumerate(model_layers(model, family)):
        h, kv, n = int(heads[i]), int(kv_heads[i]), int(inter[i])
        for path, linear, parts in head_row_linears(layer, family):
            rows = sum((h if part == "q" else kv) * head_dim for part in parts)
            set_module(layer, path, _resized(linear, out_features=rows))
        set_module(layer, paths["o"], _resized(get_module(layer, paths["o"]), in_features=h * head_dim))
        for name in paths["ffn_in"]:
            set_module(layer, name, _resized(get_module(layer, name), out_features=n * blocks))
        set_module(layer, paths["ffn_out"], _resized(get_module(layer, paths["ffn_out"]), in_features=n))
        set_attention_attributes(get_module(layer, paths["attention"]), family, h, kv, head_dim)
    if family == "mpnet":
        _apply_mpnet_position_bias(model, heads)


def _apply_mpnet_position_bias(model: nn.Module, heads: list[int]) -> None:
    """Point every MPNet layer at the position-bias columns of the heads it kept (original indices,
    from ``config.hfcompress_removed_heads``; the shared bias has ``num_attention_heads`` columns)."""
    config: Any = model.config
    total = int(config.num_attention_heads)
    layers = model_layers(model, "mpnet")
    removed = getattr(config, "hfcompress_removed_heads", None) or [[] for _ in range(len(layers))]
    attention = FAMILIES["mpnet"]["paths"]["attention"]
    for i, layer in enumerate(layers):
        gone = {int(h) for h in removed[i]}
        kept = [h for h in range(total) if h not in gone]
        if len(kept) != int(heads[i]):
            raise ValueError(
                f"layer {i}: {LAYOUT_KEY} has {heads[i]} heads but {total} heads minus the "
                f"{len(gone)} in config.hfcompress_removed_heads leave {len(kept)}"
            )
        select_position_bias_heads(get_module(layer, attention), kept, total)


def _make_config_class(family: str) -> type:
    prefix = FAMILIES[family]["prefix"]
    base = getattr(transformers, f"{prefix}Config")

    class PrunedConfig(base):  # type: ignore[misc,valid-type]
        __doc__ = f"{prefix}Config plus ``pruned_layout``: per-layer head and FFN-neuron counts."
        model_type = f"hfcompress-pruned-{family}"
        _auto_class = "AutoConfig"

        # In memory the class has its own model_type (registered with the Auto classes of this
        # process); config.json names the stock family instead. Every transformers loader reads
        # config.json first, the tokenizer's included (AutoTokenizer resolves the model config
        # before it reads tokenizer_config.json), and an unknown model_type whose auto_map names
        # a config class makes transformers ask "Do you wish to run the custom code? [y/N]". With
        # the stock type, AutoTokenizer, AutoConfig, sentence-transformers' config reading and
        # ONNX tools need no remote code; the model classes stay in architectures and auto_map,
        # so the model itself still loads only with trust_remote_code=True.
        def to_json_string(self, use_diff: bool = True) -> str:
            import json

            data = json.loads(super().to_json_string(use_diff))
            data["model_type"] = family
            return json.dumps(data, indent=2, sort_keys=True) + "\n"

        @classmethod
        def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            config_dict, unused = super().get_config_dict(*args, **kwargs)
            if config_dict.get("model_type") == family and LAYOUT_KEY in config_dict:
                config_dict["model_type"] = cls.model_type  # no "model of type bert" warning on reload
            return config_dict, unused

    PrunedConfig.__name__ = PrunedConfig.__qualname__ = f"Pruned{prefix}Config"
    PrunedConfig.__module__ = __name__
    return PrunedConfig


def _make_model_class(family: str, head: str, config_class: type) -> type:
    prefix = FAMILIES[family]["prefix"]
    base = getattr(transformers, f"{prefix}{head}")

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, config, *args, **kwargs)
        layout = getattr(config, LAYOUT_KEY, None)
        if not layout:
            raise ValueError(f"{type(self).__name__} needs config.{LAYOUT_KEY} (per-layer head/neuron counts)")
        apply_layout(self, family, layout)

    return type(
        f"Pruned{prefix}{head}",
        (base,),
        {
            "__module__": __name__,
            "__doc__": f"{prefix}{head} whose layers have the head/neuron counts of ``config.{LAYOUT_KEY}``.",
            "__init__": __init__,
            "config_class": config_class,
            "pruned_family": family,
            "_auto_class": AUTO_CLASS_OF_HEAD[head],
        },
    )


# One config class and one model class per task head for each family, created from the stock
# classes (PrunedBertConfig, PrunedBertModel, PrunedBertForSequenceClassification, PrunedLlamaForCausalLM...).
# A family whose classes this transformers version lacks is skipped rather than breaking the import.
CONFIG_CLASSES: dict[str, Any] = {}
MODEL_CLASSES: dict[tuple[str, str], Any] = {}
for _family, _spec in FAMILIES.items():
    try:
        _config_cls = _make_config_class(_family)
        CONFIG_CLASSES[_family] = _config_cls
        globals()[_config_cls.__name__] = _config_cls
        for _head in TASK_HEADS[_spec["kind"]]:
            _model_cls = _make_model_class(_family, _head, _config_cls)
            MODEL_CLASSES[(_family, _head)] = _model_cls
            globals()[_model_cls.__name__] = _model_cls
    except AttributeError:
        continue


def auto_map(family: str) -> dict[str, str]:
    """The ``auto_map`` entries that let the transformers Auto classes find these classes."""
    module = __name__.rsplit(".", 1)[-1]
    entries = {"AutoConfig": f"{module}.{CONFIG_CLASSES[family].__name__}"}
    for head in TASK_HEADS[FAMILIES[family]["kind"]]:
        entries[AUTO_CLASS_OF_HEAD[head]] = f"{module}.{MODEL_CLASSES[(family, head)].__name__}"
    return entries


def register_auto_classes() -> None:
    """Register the classes with the Auto classes of this process (no ``trust_remote_code`` needed)."""
    for family, config_cls in CONFIG_CLASSES.items():
        transformers.AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for head in TASK_HEADS[FAMILIES[family]["kind"]]:
            auto = getattr(transformers, AUTO_CLASS_OF_HEAD[head])
            auto.register(config_cls, MODEL_CLASSES[(family, head)], exist_ok=True)


__all__ = [
    "CONFIG_CLASSES",
    "FAMILIES",
    "LAYOUT_KEY",
    "MODEL_CLASSES",
    "PrunedMPNetSelfAttention",
    "apply_layout",
    "auto_map",
    "register_auto_classes",
    *(cls.__name__ for cls in CONFIG_CLASSES.values()),
    *(cls.__name__ for cls in MODEL_CLASSES.values()),
]

