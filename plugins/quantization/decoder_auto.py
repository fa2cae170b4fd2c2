"""``backend: auto`` for causal LMs: choose on what a user of a text generator sees.

A forward pass over a padded batch (what ``auto`` times for encoders) says little about a
generator: decoding runs one token at a time through a KV cache, and the logits' cosine hides
perplexity. So for ``text-generation`` each candidate is measured with :mod:`hfcompress.generation`
(the routine of the ``generation`` evaluator and the decoder benchmark), on the calibration texts:

- quality: perplexity on the texts (same token ids for every candidate) must stay within
  ``max_perplexity_increase`` of the input model's, and the greedy agreement (first 32 new tokens
  over ``agreement_prompts`` prompts) at or above ``min_greedy_agreement``;
- speed: decode tokens/s at batch 1 (greedy, EOS ignored), the input and every passing candidate
  in turn for ``timing_batches`` rounds after a warm-up each, medians; the fastest wins, and
  within ``tie_margin`` of it the smallest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import ModelState, StepContext, StepResult

from .backends import build

if TYPE_CHECKING:  # pragma: no cover
    from .config import QuantizationConfig

log = logging.getLogger(__name__)

PERPLEXITY_TOKENS = 64  # each calibration text cut to this many tokens, unpadded
SPEED_NEW_TOKENS = 64


class Probe:
    """The calibration texts as token ids, and the input model's numbers on them."""

    def __init__(self, state: ModelState, texts: list[str], config: QuantizationConfig) -> None:
        from hfcompress.plugin import continuations, pad_id, perplexity, prompt_ids

        self.config = config
        self.ids = prompt_ids(state.tokenizer, texts, max_tokens=PERPLEXITY_TOKENS)
        # prompts come from the end of the texts, so they are not the perplexity's first tokens
        self.prompts = prompt_ids(state.tokenizer, list(reversed(texts))[: config.agreement_prompts])
        self.pad_id = pad_id(state.tokenizer)
        self.perplexity = perplexity(state.model, self.ids, config.threads)
        self.greedy = continuations(state.model, self.prompts, threads=config.threads, pad_token_id=self.pad_id)

    def quality(self, state: ModelState) -> dict[str, float]:
        from hfcompress.plugin import continuations, greedy_agreement, perplexity

        ppl = perplexity(state.model, self.ids, self.config.threads)
        mine = continuations(state.model, self.prompts, threads=self.config.threads, pad_token_id=self.pad_id)
        return {"perplexity": round(ppl, 4), "perplexity_increase": round(ppl / self.perplexity - 1.0, 5),
                **greedy_agreement(self.greedy, mine)}

    def failure(self, quality: dict[str, float]) -> str | None:
        c = self.config
        if quality["perplexity_increase"] > c.max_perplexity_increase:
            return (f"perplexity {quality['perplexity']:.2f} is {quality['perplexity_increase']:+.2%} vs the input's "
                    f"{self.perplexity:.2f} (max_perplexity_increase {c.max_perplexity_increase:.0%})")
        if quality["greedy_agreement"] < c.min_greedy_agreement:
            return f"greedy agreement {quality['greedy_agreement']:.3f} < min_greedy_agreement {c.min_greedy_agreement}"
        return None


def _try(name: str, row: dict[str, Any], state: ModelState, config: QuantizationConfig, texts: list[str],
         work_dir: Path, probe: Probe, skip: str | None) -> ModelState | None:
    if skip:
        row.update(status="skipped", reason=skip)
        return None
    try:
        started = time.perf_counter()
        candidate, details = build(state, config.for_candidate(name), texts, work_dir=work_dir, copy_model=True)
        row["build_seconds"] = round(time.perf_counter() - started, 2)
        row.update({k: v for k, v in details.items() if k in ("size_bytes", "weights", "builder")})
        row.update(probe.quality(candidate))
    except Exception as exc:  # one broken candidate must not stop the search
        log.warning("quantization auto: candidate %s failed: %s", name, exc)
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
        return None
    failed = probe.failure(row)
    row.update(status="rejected" if failed else "passed", **({"reason": failed} if failed else {}))
    log.info("quantization auto: %s %s (perplexity %+.2f%%, greedy agreement %.3f)", name, row["status"],
             100 * row["perplexity_increase"], row["greedy_agreement"])
    return None if failed else candidate


def pick(passing: list[str], measured: dict[str, dict[str, Any]], margin: float) -> str:
    """The fastest decoder, or the smallest among those within ``margin`` of its tokens/s."""
    fastest = max(measured[n]["decode_tokens_per_s"] for n in passing)
    tied = [n for n in passing if measured[n]["decode_tokens_per_s"] >= fastest / (1.0 + margin)]
    return min(tied, key=lambda n: (measured[n].get("size_bytes") or float("inf"), -measured[n]["decode_tokens_per_s"]))


def run(state: ModelState, config: QuantizationConfig, ctx: StepContext, texts: list[str], names: list[str],
        skip_reason: Any, work_dir: Any, conclude: Any) -> StepResult:
    """``auto`` for a causal LM; ``skip_reason``/``work_dir``/``conclude`` are auto's own helpers."""
    from hfcompress.plugin import decode_speeds, model_device

    device = model_device(state)
    probe = Probe(state, texts, config)
    measured: dict[str, dict[str, Any]] = {}
    passing: dict[str, ModelState] = {}
    for name in names:
        measured[name] = {"candidate": name}
        candidate = _try(name, measured[name], state, config, texts, work_dir(ctx, name), probe,
                         skip_reason(name, device, state))
        if candidate is not None:
            passing[name] = candidate
    speed = decode_speeds({name: s.model for name, s in {"input": state, **passing}.items()}, probe.prompts[0],
                          SPEED_NEW_TOKENS, config.timing_batches, config.threads, probe.pad_id)
    for name in passing:
        measured[name].update(speed[name])
        measured[name]["decode_speedup"] = round(speed[name]["decode_tokens_per_s"]
                                                 / speed["input"]["decode_tokens_per_s"], 3)
    changes: dict[str, Any] = {
        "backend": "auto", "device": str(device), "threads": config.threads, "task": "text-generation",
        "timing": f"greedy decoding at batch 1, {SPEED_NEW_TOKENS} new tokens (EOS ignored) after a "
                  f"{int(probe.prompts[0].shape[1])}-token prompt, input and passing candidates in turn for "
                  f"{config.timing_batches} rounds after a warm-up each; decode tokens/s = "
                  f"{SPEED_NEW_TOKENS - 1} / (time for {SPEED_NEW_TOKENS} tokens - time for 1), medians; "
                  "the fastest wins, and within tie_margin of it the smallest artifact",
        "quality_gate": {"max_perplexity_increase": config.max_perplexity_increase,
                         "min_greedy_agreement": config.min_greedy_agreement,
                         "texts": len(probe.ids), "perplexity_tokens_per_text": PERPLEXITY_TOKENS,
                         "agreement_prompts": len(probe.prompts), "agreement_new_tokens": 32},
        "input": {"perplexity": round(probe.perplexity, 4), **speed["input"]},
        "candidates": list(measured.values()),
    }
    best = pick(list(passing), measured, config.tie_margin) if passing else None
    return conclude(state, config, ctx, measured, passing, best, changes)
