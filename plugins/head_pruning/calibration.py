"""The calibration texts, tokenized: what gradient importance and reconstruction run the model on."""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import ModelState

from .config import HeadPruningConfig


def calibration_batches(state: ModelState, cfg: HeadPruningConfig, data: Any) -> list[dict[str, Any]]:
    """The first ``calibration_samples`` texts, tokenized in batches (padded per batch), with labels if any."""
    texts = [t for t in data["text"][: cfg.calibration_samples]]
    labels = list(data["label"][: cfg.calibration_samples]) if "label" in data.column_names else None
    batches = []
    for start in range(0, len(texts), cfg.batch_size):
        enc = state.tokenizer(
            texts[start : start + cfg.batch_size], padding=True, truncation=True,
            max_length=cfg.max_length, return_tensors="pt",
        )
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if state.task == "text-generation":
            batch.pop("token_type_ids", None)
        if labels is not None:
            import torch

            batch["labels"] = torch.tensor(labels[start : start + cfg.batch_size])
        batches.append(batch)
    return batches
