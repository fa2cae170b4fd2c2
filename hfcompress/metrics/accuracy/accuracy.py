"""Accuracy: the fraction of predictions equal to the reference labels.

A local `evaluate` metric module shipped with hfcompress, so the default task metrics load
offline with ``evaluate.load(<this folder>)``; it takes the same arguments and returns the
same key as the Hub's ``accuracy`` metric. NumPy only (no scikit-learn needed at run time).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground truth labels.
    normalize (bool): return the fraction (default) instead of the count of correct predictions.
    sample_weight (list of float): optional per-sample weights.
Returns:
    accuracy (float): in [0, 1] when normalize is True.
Examples:
    >>> metric = evaluate.load("hfcompress/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):  # type: ignore[no-untyped-def]
        pred = np.asarray(predictions)
        ref = np.asarray(references)
        if pred.shape != ref.shape:
            raise ValueError(f"predictions has {pred.shape[0]} items but references has {ref.shape[0]}")
        weights = np.ones(len(pred)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        correct = float(((pred == ref) * weights).sum())
        return {"accuracy": correct / float(weights.sum()) if normalize else correct}
