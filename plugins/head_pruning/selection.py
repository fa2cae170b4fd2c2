"""Which heads and FFN neurons go: rank the importance scores within the counts of ``counts.py``.

Heads are grouped into *units* removed together, so that grouped-query attention stays consistent
(every KV group keeps the same number of query heads, or loses whole groups). ``plan_removal`` turns
the choice into the indices each layer keeps and the layout the pruned model will have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hfcompress.plugin import BadInputError

from .config import HeadPruningConfig
from .counts import head_unit_counts, round_half_up
from .layout import Layout


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
            counts = [round_half_up(cfg.ffn_ratio * size) for size in lay.intermediate]
        else:
            total = round_half_up(cfg.ffn_ratio * sum(lay.intermediate))
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
            keep = min(size, max(m, m * round_half_up((size - c) / m))) if size > m else max(1, size - c)
            rounded.append(size - keep)
        counts = rounded
    removed = []
    for i in range(n):
        order = sorted(range(lay.intermediate[i]), key=lambda j: float(scores[i][j]))
        removed.append(sorted(order[: counts[i]]))
    return removed



@dataclass
class RemovalPlan:
    """What each layer keeps (current indices) and the layout of the pruned model (original indices)."""

    keep_heads: list[list[int]]
    keep_kv: list[list[int]]
    keep_neurons: list[list[int]]
    new: Layout


def plan_removal(lay: Layout, cfg: HeadPruningConfig, head_scores: list[Any], neuron_scores: list[Any]) -> RemovalPlan:
    """Choose the head units and neurons to remove, and record them against the original indices."""
    chosen = select_head_units(lay, cfg, head_units(lay, cfg, head_scores)) if cfg.prunes_heads else [
        [] for _ in range(lay.num_layers)]
    removed_neurons = select_neurons(lay, cfg, neuron_scores) if cfg.prunes_ffn else [
        [] for _ in range(lay.num_layers)]
    plan = RemovalPlan(keep_heads=[], keep_kv=[], keep_neurons=[], new=Layout(
        family=lay.family, kind=lay.kind, head_dim=lay.head_dim, heads=[], kv_heads=[], intermediate=[],
        removed_heads=[], removed_kv_heads=[], removed_neurons=[]))
    keep_heads, keep_kv, keep_neurons, new = plan.keep_heads, plan.keep_kv, plan.keep_neurons, plan.new
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
    return plan
