"""Where heads and FFN neurons live: the supported families and each model's per-layer shape.

Pure Python, read from a ``transformers`` config before any weights load (``check`` runs on it).
The module paths inside a layer (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_out``) are in
``plugins/modeling/modeling_hfcompress_pruned.py`` (``FAMILIES``), imported only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Kept in sync with plugins/modeling/modeling_hfcompress_pruned.py (FAMILIES), which this package
# imports only inside functions so that `hfcompress plugins` does not import torch/transformers.
ENCODER_TYPES = (
    "bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet", "deberta-v2", "modernbert",
)
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PRUNED_PREFIX = "hfcompress-pruned-"
REMOVED_HEADS = "hfcompress_removed_heads"
REMOVED_KV_HEADS = "hfcompress_removed_kv_heads"
REMOVED_NEURONS = "hfcompress_removed_neurons"


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
            # DeBERTa-v2 may set attention_head_size; every other encoder uses hidden_size / heads
            explicit = getattr(config, "attention_head_size", None) if family == "deberta-v2" else None
            head_dim = int(explicit or int(config.hidden_size) // h)
        inter = [int(config.intermediate_size)] * n_layers

    def record(name: str) -> list[list[int]]:
        value = getattr(config, name, None)
        return [list(map(int, v)) for v in value] if value else [[] for _ in range(n_layers)]

    return Layout(
        family=family, kind=kind, head_dim=head_dim, heads=heads, kv_heads=kv, intermediate=inter,
        removed_heads=record(REMOVED_HEADS), removed_kv_heads=record(REMOVED_KV_HEADS),
        removed_neurons=record(REMOVED_NEURONS),
    )
