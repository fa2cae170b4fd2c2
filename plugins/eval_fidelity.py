"""Evaluator ``fidelity``: how closely the compressed model reproduces the base model.

- feature-extraction: cosine similarity of mean-pooled embeddings, per sample
  (``fidelity_cosine_mean``, ``fidelity_cosine_min``), and retrieval agreement: the share of each
  held-out text's 10 nearest neighbours (cosine, among the other held-out texts) that the
  compressed model's embeddings keep (``fidelity_neighbour_overlap``). Cosine can stay high while
  the neighbourhoods reshuffle; the overlap says whether a vector index built with the base
  model still returns the same results;
- text-classification: top-1 agreement of the predicted class and KL(base || compressed) of the
  class distributions (``fidelity_top1_agreement``, ``fidelity_kl``, mean per sample);
- text-generation: the same two over the next-token distribution at every real token
  position (token-weighted means). The base runs in lockstep with the compressed model, batch
  by batch, so full-vocabulary logits are never kept for all samples.

It applies only to the compressed model (the base is the reference). Select it in a recipe:

    evaluate:
      evaluators: [fidelity, task-metrics, speed, size]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfcompress.plugin import EvalContext, Evaluator, Metric, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import torch


NEIGHBOURS = 10


class Fidelity(Evaluator):
    name = "fidelity"
    summary = "Agreement with the base model: embedding cosine, top-1 agreement, KL(base||compressed)"
    # perfect: the base measured against itself; the gate's max_drop counts from there (no base value)
    metrics = (
        Metric("fidelity_cosine_mean", label="Fidelity: embedding cosine, mean", perfect=1.0, role="fidelity"),
        Metric("fidelity_cosine_min", label="Fidelity: embedding cosine, min", perfect=1.0),
        Metric("fidelity_neighbour_overlap", label=f"Fidelity: top-{NEIGHBOURS} neighbour overlap", perfect=1.0),
        Metric("fidelity_top1_agreement", label="Fidelity: top-1 agreement", perfect=1.0, role="fidelity"),
        # "‖", not "||": a pipe would split the card's table cell
        Metric("fidelity_kl", label="Fidelity: KL(base ‖ compressed)", higher_is_better=False, perfect=0.0),
    )

    def applies_to(self, ctx: EvalContext) -> bool:
        return ctx.reference is not None and ctx.data is not None and len(ctx.data) > 0

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import collect_outputs

        assert ctx.reference is not None
        task = ctx.state.task
        if task == "text-generation":
            sums = collect_outputs(ctx, lockstep=True).lockstep
            assert sums is not None
            positions = sum(sums["positions"])
            if positions == 0:
                return {}
            return {
                "fidelity_top1_agreement": sum(sums["agree"]) / positions,
                "fidelity_kl": sum(sums["kl"]) / positions,
            }
        mine = collect_outputs(ctx).vectors
        base = collect_outputs(ctx.reference).vectors
        assert mine is not None and base is not None
        if mine.shape != base.shape:
            raise ValueError(
                f"base outputs {tuple(base.shape)} and compressed outputs {tuple(mine.shape)} differ in shape; "
                "fidelity needs the same embedding size or label set"
            )
        if task == "feature-extraction":
            return {**_cosine(base, mine), **neighbour_overlap(base, mine)}
        return _classification(base, mine)


def _cosine(base: torch.Tensor, mine: torch.Tensor) -> dict[str, float]:
    import torch

    cos = torch.nn.functional.cosine_similarity(base.double(), mine.double(), dim=-1)
    return {"fidelity_cosine_mean": float(cos.mean()), "fidelity_cosine_min": float(cos.min())}


def neighbour_overlap(base: torch.Tensor, mine: torch.Tensor, k: int = NEIGHBOURS) -> dict[str, float]:
    """Mean share of each row's ``k`` nearest rows (cosine, itself excluded) under ``base`` that are
    also among its ``k`` nearest under ``mine``; nothing with fewer than 2 rows."""
    import torch

    k = min(k, base.shape[0] - 1)
    if k < 1:
        return {}

    def nearest(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x.double(), dim=-1)
        sims = x @ x.T
        sims.fill_diagonal_(float("-inf"))
        return sims.topk(k, dim=-1).indices

    a, b = nearest(base), nearest(mine)
    kept = (a.unsqueeze(2) == b.unsqueeze(1)).any(-1).sum(-1).double() / k
    return {"fidelity_neighbour_overlap": float(kept.mean())}


def _classification(base: torch.Tensor, mine: torch.Tensor) -> dict[str, float]:
    import torch

    base_logp = torch.log_softmax(base.double(), dim=-1)
    logp = torch.log_softmax(mine.double(), dim=-1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1).clamp(min=0.0)
    agree = (base.argmax(-1) == mine.argmax(-1)).double()
    return {"fidelity_top1_agreement": float(agree.mean()), "fidelity_kl": float(kl.mean())}


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(Fidelity)
