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

Families: BERT-style encoders (bert, roberta, xlm-roberta, camembert, electra, distilbert, mpnet,
deberta-v2, modernbert) and Llama-style decoders (llama, mistral, qwen2, qwen3). With grouped-query attention the number of KV
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

The package, one concern per module (the technique class is in ``technique.py``):

- ``config.py``: ``HeadPruningConfig``, the recipe fields and the rules that need no model;
- ``layout.py``: the supported families and a model's per-layer shape (heads, KV heads, FFN width);
- ``counts.py``: how many heads/neurons each layer loses, and whether that fits the model;
- ``importance.py``: magnitude and gradient (head-mask) importance scores;
- ``calibration.py``: the calibration texts, tokenized;
- ``selection.py``: which head units and neurons go, and what each layer keeps;
- ``reconstruction.py``: least-squares refits of the output projections;
- ``surgery.py``: slicing the projections and rebuilding the model in its reloadable class;
- ``technique.py``: ``HeadPruning`` (``check``, ``apply``, ``load_artifact``).

Only pure-Python modules are imported here; torch and transformers are imported inside functions,
so that ``hfcompress plugins`` stays fast.
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import hookimpl

from .config import HeadPruningConfig
from .technique import HeadPruning

__all__ = ["HeadPruning", "HeadPruningConfig"]


@hookimpl
def hfcompress_register_techniques(register: Any) -> None:
    register(HeadPruning)
