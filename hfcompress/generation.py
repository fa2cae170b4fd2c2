"""Greedy generation, measured the same way for every causal LM (PyTorch, onnxruntime-genai, ...).

Shared by the quantization step's ``auto`` choice for causal LMs, the ``generation`` evaluator
and the decoder benchmark, so the numbers on a card, in a step's changes and in a benchmark are
the same measurement:

- :func:`prompt_ids`: unpadded prompts of at most ``max_tokens`` token ids each, from the tokenizer
  once: every model gets identical ids (same BOS handling), or nothing compares;
- :func:`continuations` / :func:`greedy_agreement`: greedy decoding of ``new_tokens`` tokens
  (EOS ignored until then) and the share of positions where a model's tokens equal the
  reference's, averaged over prompts (``matching_prefix``: the mean length of the identical start);
- :func:`decode_speeds` / :func:`decode_speed`: time to first token (prompt + one new token) and
  decode tokens/s (``(n - 1) / (t(n) - t(1))``: the prefill and first token excluded), models
  timed in turn, medians over rounds;
- :func:`perplexity`: ``exp(mean NLL)`` over every predicted token of unpadded texts.

A model only needs transformers' calling convention: ``model(input_ids=...).logits`` and
``model.generate(input_ids, attention_mask=..., max_new_tokens=..., min_new_tokens=...,
do_sample=False)``. PyTorch is pinned to ``threads``; a model with ``set_num_threads`` (the
runtime wrappers) is pinned through it.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

NEW_TOKENS = 32
PROMPT_TOKENS = 24


def prompt_ids(tokenizer: Any, texts: list[str], max_tokens: int = PROMPT_TOKENS) -> list[Any]:
    """One ``(1, n)`` LongTensor of token ids per non-empty text, cut to ``max_tokens``."""
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
        if ids.shape[1]:
            out.append(ids)
    return out


def _pin(model: Any, threads: int) -> None:
    setter = getattr(model, "set_num_threads", None)
    if setter is not None:
        setter(threads)


def greedy(model: Any, prompt: Any, new_tokens: int, pad_token_id: int | None = None) -> list[int]:
    """Exactly ``new_tokens`` greedy tokens after ``prompt`` (EOS does not stop it earlier)."""
    import torch

    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id)
    return [int(t) for t in out[0, prompt.shape[1]:].tolist()]


def continuations(model: Any, prompts: list[Any], new_tokens: int = NEW_TOKENS, threads: int = 1,
                  pad_token_id: int | None = None) -> list[list[int]]:
    """``greedy`` for each prompt, PyTorch (and the model's runtime) pinned to ``threads``."""
    from .model_io import fixed_threads

    _pin(model, threads)
    with fixed_threads(threads):
        return [greedy(model, p, new_tokens, pad_token_id) for p in prompts]


def greedy_agreement(reference: list[list[int]], candidate: list[list[int]]) -> dict[str, float]:
    """``greedy_agreement``: share of positions with the reference's token, mean over prompts;
    ``matching_prefix``: mean number of leading tokens identical to the reference's."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"{len(candidate)} continuations for {len(reference)} reference continuations")
    shares, prefixes = [], []
    for ref, got in zip(reference, candidate, strict=True):
        same = [a == b for a, b in zip(ref, got, strict=False)]
        shares.append(sum(same) / max(1, len(ref)))
        prefixes.append(same.index(False) if False in same else len(same))
    return {"greedy_agreement": round(statistics.fmean(shares), 4),
            "matching_prefix": round(statistics.fmean(prefixes), 2)}


def pad_id(tokenizer: Any) -> int | None:
    """The pad id ``generate`` gets: the tokenizer's, else its EOS (causal LMs often have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def decode_speeds(models: dict[str, Any], prompt: Any, new_tokens: int = 64, rounds: int = 3, threads: int = 1,
                  pad_token_id: int | None = None) -> dict[str, dict[str, float]]:
    """``ttft_ms`` (prompt + 1 token) and ``decode_tokens_per_s`` at batch 1, greedy, per model.

    After one warm-up each, every round times each model in turn (1 token, then ``new_tokens``):
    on a shared machine a busy neighbour then slows all of them alike. Medians over ``rounds``.
    """
    from .model_io import fixed_threads

    if new_tokens < 2:
        raise ValueError("decode_speeds needs new_tokens >= 2")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    with fixed_threads(threads):
        for model in models.values():
            _pin(model, threads)
            greedy(model, prompt, 2, pad_token_id)  # warm-up: allocations, kernel selection, lazy sessions
        for _ in range(rounds):
            for name, model in models.items():
                started = time.perf_counter()
                greedy(model, prompt, 1, pad_token_id)
                first = time.perf_counter() - started
                started = time.perf_counter()
                greedy(model, prompt, new_tokens, pad_token_id)
                runs[name].append((first, time.perf_counter() - started))
    out = {}
    for name, pairs in runs.items():
        first = statistics.median(p[0] for p in pairs)
        full = statistics.median(p[1] for p in pairs)
        out[name] = {"ttft_ms": round(first * 1000.0, 2),
                     "decode_tokens_per_s": round((new_tokens - 1) / max(full - first, 1e-9), 2)}
    return out


def decode_speed(model: Any, prompt: Any, new_tokens: int = 64, repeats: int = 3, threads: int = 1,
                 pad_token_id: int | None = None) -> dict[str, float]:
    """:func:`decode_speeds` for one model."""
    return decode_speeds({"model": model}, prompt, new_tokens, repeats, threads, pad_token_id)["model"]


def perplexity(model: Any, ids: list[Any], threads: int = 1) -> float:
    """exp(mean next-token NLL) over every predicted token of the given unpadded ``(1, n)`` ids."""
    import torch

    from .model_io import fixed_threads

    _pin(model, threads)
    total, count = 0.0, 0
    with fixed_threads(threads), torch.no_grad():
        for row in ids:
            if row.shape[1] < 2:
                continue
            logits = model(input_ids=row).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits[0, :-1], row[0, 1:], reduction="sum"))
            count += row.shape[1] - 1
    if not count:
        raise ValueError("perplexity: no text with two or more tokens")
    return math.exp(total / count)
