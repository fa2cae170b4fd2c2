"""How many heads/neurons to remove in each layer, and whether that fits the model.

Pure Python, shared by ``check`` (before any weights load) and ``apply`` (``selection.py``), so that
what ``check`` accepts is exactly what ``apply`` can do.
"""

from __future__ import annotations

import math

from hfcompress.plugin import BadInputError

from .config import HeadPruningConfig
from .layout import Layout


def round_half_up(x: float) -> int:
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
        return [round_half_up(cfg.ratio * h / u) for h, u in zip(lay.heads, units, strict=True)], None
    return None, round_half_up(cfg.ratio * sum(lay.heads) / max(units))


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
    elif cfg.ffn_ratio > 0 and round_half_up(cfg.ffn_ratio * min(lay.intermediate)) == 0:
        raise BadInputError(f"ffn_ratio {cfg.ffn_ratio} removes no FFN neuron of {arch}; use a larger ffn_ratio")
