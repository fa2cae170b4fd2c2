"""Evaluator ``transfer-probes`` (embedding models): classification probes trained on each model's
*own* embeddings, on data sets other than the recipe's.

The ``task-metrics`` probe scores the compressed model on the recipe's held-out data. An embedding
user also wants to know whether the vectors still carry what they carried for tasks the
compression never saw. This evaluator follows MTEB's classification protocol: embed a training
and a test part of a labelled data set with the model being evaluated, fit a logistic regression
(``max_iter=100``) on the model's own training embeddings, report test accuracy, averaged over
``EXPERIMENTS`` seeded subsamples of the training part. Base and compressed model get the same
texts, parts and seeds, so the difference is what compression cost on that task.

Data sets (``SOURCES``): the built-in ``vader:tweets``, ``vader:amazon`` and ``vader:nyt``
(human-rated sentences shipped in the ``vaderSentiment`` package, MIT; label = mean rating > 0).
The default recipe distils and calibrates on ``vader:movie`` only, so for it these are unseen
domains; a recipe trained on one of them (``data.extra_train``) should read that probe as
in-domain, and the card says so next to it. Each set is cut
deterministically (shuffled with seed 0) into ``PER_PART`` training and as many test sentences.

Embeddings are what all-MiniLM-style sentence encoders publish: mean-pooled over real tokens and
L2-normalised (MTEB feeds the model's normalised output to the classifier too).
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import EvalContext, Evaluator, Metric, hookimpl

SOURCES = ("vader:tweets", "vader:amazon", "vader:nyt")
PER_PART = 512
"""Training and test sentences per data set (fewer when ``evaluate.max_samples`` is smaller)."""
EXPERIMENTS = 5
SUBSAMPLE = 256
"""Training sentences per experiment (MTEB also fits on undersampled training sets, for variance)."""
SEQUENCE_LENGTH = 64  # 99% of the vader sentences fit in 64 tokens


def metric_name(source: str) -> str:
    return "transfer_probe_accuracy_" + source.replace(":", "_")


def _parts(source: str, per_part: int) -> tuple[list[str], list[int], list[str], list[int]]:
    from hfcompress.plugin import load_spec

    data = load_spec(source).shuffle(seed=0)
    data = data.select(range(min(len(data), 2 * per_part)))
    texts, labels = list(data["text"]), [int(x) for x in data["label"]]
    return texts[:per_part], labels[:per_part], texts[per_part:], labels[per_part:]


def probe_accuracy(train_x: Any, train_y: list[int], test_x: Any, test_y: list[int]) -> float:
    """Mean test accuracy of logistic regressions fit on ``EXPERIMENTS`` seeded training subsamples."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    scores = []
    labels = np.asarray(train_y)
    for seed in range(EXPERIMENTS):
        pick = np.random.default_rng(seed).permutation(len(labels))[: min(SUBSAMPLE, len(labels))]
        if len(set(labels[pick].tolist())) < 2:
            continue  # a one-class subsample cannot train a classifier
        model = LogisticRegression(max_iter=100).fit(train_x[pick], labels[pick])
        scores.append(float((model.predict(test_x) == np.asarray(test_y)).mean()))
    return float(np.mean(scores)) if scores else float("nan")


class TransferProbes(Evaluator):
    name = "transfer-probes"
    summary = "Embedding models: logistic-regression probes on each model's own embeddings, other data sets (MTEB-style)"
    metrics = (
        Metric("transfer_probe_accuracy", label="Transfer probes: accuracy, mean over data sets"),
        *(Metric(metric_name(s), label=f"Transfer probe accuracy, {s}") for s in SOURCES),
        Metric("transfer_probe_sentences", label="sentences per transfer data set (train + test)", setting=True),
    )

    def applies_to(self, ctx: EvalContext) -> bool:
        return ctx.state.task == "feature-extraction"

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import sentence_embeddings

        def embed(texts: list[str]) -> Any:
            return sentence_embeddings(ctx.state, texts, max_length=SEQUENCE_LENGTH).numpy()

        result: dict[str, float] = {}
        per_part = min(PER_PART, ctx.settings.max_samples)
        for source in SOURCES:
            train_texts, train_y, test_texts, test_y = _parts(source, per_part)
            result[metric_name(source)] = probe_accuracy(embed(train_texts), train_y, embed(test_texts), test_y)
        result["transfer_probe_accuracy"] = sum(result[metric_name(s)] for s in SOURCES) / len(SOURCES)
        result["transfer_probe_sentences"] = float(2 * per_part)
        return result


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(TransferProbes)
