"""Evaluator ``task-metrics``: the model's quality on the held-out split, measured with `evaluate`.

- text-classification with labels: ``accuracy`` and ``f1`` (binary) or ``f1_macro`` (more than
  two classes), computed by the metric modules shipped in ``hfcompress/metrics`` (they load
  offline with ``evaluate.load(path)``);
- feature-extraction with labels: ``probe_accuracy`` / ``probe_f1``: a nearest-centroid probe
  on the normalised mean-pooled embeddings, 5-fold cross-validated *within* the held-out split,
  so no training or calibration sample is involved and base and compressed get the same folds;
- text-generation: ``perplexity`` = exp(total next-token NLL / predicted tokens) over the
  held-out texts (token-weighted; padding excluded). evaluate's Hub ``perplexity`` metric would
  load a model by id and re-run it, so we compute it from the logits we already have.

Extra metric names (Hub ids for users online, or local metric script paths) are passed to
``evaluate.load`` and computed on the class predictions:

    evaluate:
      metrics: [matthews_correlation]

Their direction is not known, so they are declared higher-is-better under the metric's own name
(the last part of a path, without ``.py``), which is the key most `evaluate` metrics return. A
metric that returns other keys (or is lower-is-better) belongs in an evaluator of its own that
declares them.
"""

from __future__ import annotations

import math
from typing import Any

from hfcompress.plugin import EvalContext, EvalSettings, Evaluator, Metric, hookimpl

PROBE_FOLDS = 5


class TaskMetrics(Evaluator):
    name = "task-metrics"
    summary = "Accuracy/F1 (classification, embedding probe) and perplexity (causal LMs) via evaluate"
    metrics = (
        Metric("accuracy", label="Accuracy", role="quality"),
        Metric("f1", label="F1", role="quality"),
        Metric("f1_macro", label="F1 (macro)", role="quality"),
        Metric("probe_accuracy", label="Embedding probe accuracy", role="quality"),
        Metric("probe_f1", label="Embedding probe F1", role="quality"),
        Metric("perplexity", label="Perplexity", higher_is_better=False, role="quality"),
        Metric("eval_samples", label="held-out samples evaluated", setting=True),
    )

    def declared_metrics(self, settings: EvalSettings) -> tuple[Metric, ...]:
        known = {m.name for m in self.metrics}
        extra = dict.fromkeys(extra_metric_name(name) for name in settings.metrics)
        return self.metrics + tuple(Metric(name) for name in extra if name not in known)

    def applies_to(self, ctx: EvalContext) -> bool:
        if ctx.data is None or len(ctx.data) == 0:
            return False
        if ctx.state.task == "text-generation":
            return True
        return "label" in ctx.data.column_names

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import collect_outputs

        outputs = collect_outputs(ctx)
        result: dict[str, float] = {"eval_samples": float(len(outputs.texts))}
        if ctx.state.task == "text-generation":
            tokens = sum(outputs.tokens)
            if tokens:
                result["perplexity"] = math.exp(sum(outputs.nll) / tokens)
            return result
        assert ctx.data is not None and outputs.vectors is not None
        labels = [int(x) for x in ctx.data["label"][: len(outputs.texts)]]
        if ctx.state.task == "text-classification":
            predictions = outputs.vectors.argmax(-1).tolist()
            result.update(_scores(predictions, labels, prefix=""))
            result.update(_extra_metrics(ctx.settings.metrics, predictions, labels))
            return result
        probe = _probe_predictions(outputs.vectors, labels)
        if probe is not None:
            result.update(_scores(probe, labels, prefix="probe_"))
        return result


def _scores(predictions: list[int], labels: list[int], prefix: str) -> dict[str, float]:
    from hfcompress.plugin import load_metric

    accuracy = load_metric("accuracy").compute(predictions=predictions, references=labels)["accuracy"]
    classes = sorted(set(labels) | set(predictions))
    if len(classes) <= 2 and set(classes) <= {0, 1}:
        f1_name, average = "f1", "binary"
    else:
        f1_name, average = "f1_macro", "macro"
    f1 = load_metric("f1").compute(predictions=predictions, references=labels, average=average)["f1"]
    return {f"{prefix}accuracy": float(accuracy), f"{prefix}{f1_name}": float(f1)}


def extra_metric_name(name: str) -> str:
    """The result name declared for an extra metric: ``matthews_correlation``, ``./metrics/mcc.py`` -> ``mcc``."""
    last = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return last[: -len(".py")] if last.endswith(".py") else last


def _extra_metrics(names: list[str], predictions: list[int], labels: list[int]) -> dict[str, float]:
    from hfcompress.plugin import load_metric

    out: dict[str, float] = {}
    for name in names:
        values: dict[str, Any] = load_metric(name).compute(predictions=predictions, references=labels) or {}
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
    return out


def _probe_predictions(vectors: Any, labels: list[int]) -> list[int] | None:
    """Nearest-centroid predictions, each sample scored by centroids of the other folds only."""
    import torch

    n = len(labels)
    classes = sorted(set(labels))
    if n < 2 * PROBE_FOLDS or len(classes) < 2:
        return None
    emb = torch.nn.functional.normalize(vectors.double(), dim=-1)
    target = torch.tensor(labels)
    fold = torch.arange(n) % PROBE_FOLDS  # deterministic: base and compressed get the same folds
    predictions = torch.empty(n, dtype=torch.long)
    for k in range(PROBE_FOLDS):
        train, test = fold != k, fold == k
        centroids = []
        for c in classes:
            members = emb[train & (target == c)]
            centroid = members.mean(0) if len(members) else torch.zeros(emb.shape[1], dtype=emb.dtype)
            centroids.append(torch.nn.functional.normalize(centroid, dim=0))
        scores = emb[test] @ torch.stack(centroids).T
        predictions[test] = torch.tensor(classes)[scores.argmax(-1)]
    return [int(x) for x in predictions.tolist()]


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(TaskMetrics)
