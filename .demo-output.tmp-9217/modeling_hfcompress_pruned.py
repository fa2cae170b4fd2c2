"""Transformer models with a different number of attention heads / FFN neurons in each layer.

Written by hfcompress's ``head-pruning`` technique into every output folder whose pruned shape no
stock transformers config can describe (BERT-family models always, because BERT derives the head
size from ``hidden_size / num_attention_heads``; Llama-family models when layers differ). The file
is self-contained: it needs only ``torch`` and ``transformers``, never hfcompress, so

    AutoModel.from_pretrained(folder, trust_remote_code=True)

works anywhere. Each class subclasses the stock transformers class of the original model and, after
the stock constructor built the full-size layers, replaces the projections of every layer with
smaller ones of the shapes listed in ``config.pruned_layout``::

    {"head_dim": 32, "num_attention_heads": [8, 9, ...], "num_key_value_heads": [...],
     "intermediate_size": [768, 770, ...]}

(``num_key_value_heads`` only for decoders). Everything else, forward passes included, is the stock
transformers code, so outputs match the model that was pruned in memory exactly. Which heads and
neurons were removed (original indices) is recorded in ``config.hfcompress_removed_heads`` and
``config.hfcompress_removed_neurons``. ``config.json`` names the stock family (``"model_type": "bert"``)
and these classes in ``architectures``/``auto_map``: readers of the config alone (tokenizers,
sentence-transformers, ONNX tools) need no remote code; the model needs ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any

import transformers
from torch import nn

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

# model_type -> (kind, class-name prefix in transformers, paths, stock head-count field, stock FFN field)
FAMILIES: dict[str, dict[str, Any]] = {
    "bert": {"kind": "encoder", "prefix": "Bert", "paths": ENCODER_PATHS},
    "roberta": {"kind": "encoder", "prefix": "Roberta", "paths": ENCODER_PATHS},
    "xlm-roberta": {"kind": "encoder", "prefix": "XLMRoberta", "paths": ENCODER_PATHS},
    "camembert": {"kind": "encoder", "prefix": "Camembert", "paths": ENCODER_PATHS},
    "electra": {"kind": "encoder", "prefix": "Electra", "paths": ENCODER_PATHS},
    "distilbert": {"kind": "encoder", "prefix": "DistilBert", "paths": DISTILBERT_PATHS},
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


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)


def model_layers(model: nn.Module, family: str) -> Any:
    base = getattr(model, "base_model", model)
    return get_module(base, FAMILIES[family]["paths"]["layers"])


def set_attention_attributes(attention: Any, family: str, heads: int, kv_heads: int, head_dim: int) -> None:
    """Update what the stock forward pass reads about the number of heads of one layer."""
    kind = FAMILIES[family]["kind"]
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
    for i, layer in enumerate(model_layers(model, family)):
        h, kv, n = int(heads[i]), int(kv_heads[i]), int(inter[i])
        set_module(layer, paths["q"], _resized(get_module(layer, paths["q"]), out_features=h * head_dim))
        set_module(layer, paths["k"], _resized(get_module(layer, paths["k"]), out_features=kv * head_dim))
        set_module(layer, paths["v"], _resized(get_module(layer, paths["v"]), out_features=kv * head_dim))
        set_module(layer, paths["o"], _resized(get_module(layer, paths["o"]), in_features=h * head_dim))
        for name in paths["ffn_in"]:
            set_module(layer, name, _resized(get_module(layer, name), out_features=n))
        set_module(layer, paths["ffn_out"], _resized(get_module(layer, paths["ffn_out"]), in_features=n))
        set_attention_attributes(get_module(layer, paths["attention"]), family, h, kv, head_dim)


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
    "apply_layout",
    "auto_map",
    "register_auto_classes",
    *(cls.__name__ for cls in CONFIG_CLASSES.values()),
    *(cls.__name__ for cls in MODEL_CLASSES.values()),
]

