"""The ``head-pruning`` config: which heads/neurons to remove and how to rank them.

Only the rules that need no model live here (pydantic, checked when the recipe is parsed); the
counts that must fit a given model are checked in ``counts.py`` by the technique's ``check``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hfcompress.plugin import TechniqueConfig


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
