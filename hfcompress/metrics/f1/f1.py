"""F1: the harmonic mean of precision and recall.

A local `evaluate` metric module shipped with hfcompress, so the default task metrics load
offline with ``evaluate.load(<this folder>)``; it takes the same arguments as the Hub's ``f1``
metric (``average`` = binary | macro | micro | weighted, ``pos_label``, ``labels``) and returns
``{"f1": value}``. NumPy only, and a class with no predicted and no true samples scores 0 (as
scikit-learn does with ``zero_division=0``).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 = 2 * (precision * recall) / (precision + recall)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground truth labels.
    average (str): 'binary' (default: the F1 of class pos_label), 'macro', 'micro' or 'weighted'.
    pos_label (int): the positive class for average='binary' (default 1).
    labels (list of int): the classes to average over (default: every class seen).
Returns:
    f1 (float): in [0, 1].
Examples:
    >>> metric = evaluate.load("hfcompress/metrics/f1")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'f1': 0.6666666666666666}
"""


def _class_f1(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[float, int]:
    tp = int(((pred == label) & (ref == label)).sum())
    fp = int(((pred == label) & (ref != label)).sum())
    fn = int(((pred != label) & (ref == label)).sum())
    denom = 2 * tp + fp + fn
    return (2 * tp / denom if denom else 0.0), tp + fn


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1, labels=None):  # type: ignore[no-untyped-def]
        pred = np.asarray(predictions)
        ref = np.asarray(references)
        if pred.shape != ref.shape:
            raise ValueError(f"predictions has {pred.shape[0]} items but references has {ref.shape[0]}")
        if average == "binary":
            return {"f1": _class_f1(pred, ref, pos_label)[0]}
        classes = list(labels) if labels is not None else sorted(set(pred.tolist()) | set(ref.tolist()))
        if average == "micro":
            # every sample is one true positive or one (fp, fn) pair: micro F1 equals accuracy
            mask = np.isin(ref, classes) | np.isin(pred, classes)
            tp = int(((pred == ref) & np.isin(ref, classes)).sum())
            fp = int((mask & (pred != ref) & np.isin(pred, classes)).sum())
            fn = int((mask & (pred != ref) & np.isin(ref, classes)).sum())
            denom = 2 * tp + fp + fn
            return {"f1": 2 * tp / denom if denom else 0.0}
        scores = [_class_f1(pred, ref, c) for c in classes]
        if average == "macro":
            return {"f1": float(np.mean([s for s, _ in scores])) if scores else 0.0}
        if average == "weighted":
            support = sum(n for _, n in scores)
            return {"f1": float(sum(s * n for s, n in scores) / support) if support else 0.0}
        raise ValueError(f"average={average!r} is not supported; use binary, macro, micro or weighted")
