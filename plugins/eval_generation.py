"""Evaluator ``generation`` (causal LMs): greedy decoding speed at batch 1 and agreement with the base.

Measured by :mod:`hfcompress.generation`, the routine the quantization step's ``auto`` and the
decoder benchmark use, so the card's numbers are the ones the choice was made on:

- ``decode_tokens_per_s``: tokens per second after the first one, batch 1, greedy, with the
  model's own KV cache (transformers ``generate``, onnxruntime-genai's ``Generator``), pinned to
  ``evaluate.threads``; ``ttft_ms``: time to the first new token (prompt prefill included);
- ``greedy_agreement`` (compressed model only): over up to 32 held-out prompts (each cut to 24
  tokens, the same token ids for both models), the share of the first 32 greedy new tokens equal
  to the base's; ``greedy_matching_prefix``: how many leading tokens match, on average. A single
  flipped near-tie changes every later token, so this is far stricter than the perplexity:
  measured on SmolLM2-135M, a bf16 cast gets 0.73 and llama.cpp running the very same Q4_1
  weights 0.62 (docs/techniques/quantization.md).

Batch-8 prefill latency is the ``speed`` evaluator's ``latency_ms`` (its batch x sequence length).
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import EvalContext, Evaluator, Metric, hookimpl

PROMPTS = 32
SPEED_NEW_TOKENS = 64


def _prompts(ctx: EvalContext) -> list[Any]:
    from hfcompress.plugin import prompt_ids

    texts = [t for t in (ctx.data["text"] if ctx.data is not None else []) if isinstance(t, str) and t.strip()]
    return prompt_ids(ctx.state.tokenizer, texts[: min(PROMPTS, ctx.settings.max_samples)])


def _continuations(ctx: EvalContext, prompts: list[Any]) -> list[list[int]]:
    from hfcompress.plugin import continuations, pad_id

    return continuations(ctx.state.model, prompts, threads=ctx.settings.threads, pad_token_id=pad_id(ctx.state.tokenizer))


def reference_continuations(ctx: EvalContext) -> list[list[int]]:
    """The base model's greedy tokens for this context's prompts (computed once, cached on it)."""
    if "greedy" not in ctx.cache:
        ctx.cache["greedy"] = _continuations(ctx, _prompts(ctx))
    return list(ctx.cache["greedy"])


class Generation(Evaluator):
    name = "generation"
    summary = "Causal LMs: greedy decode tokens/s and time to first token (batch 1), greedy agreement with the base"
    metrics = (
        Metric("decode_tokens_per_s", label="Decode speed, batch 1, greedy", unit="tokens/s"),
        Metric("ttft_ms", label="Time to first token, batch 1", unit="ms", higher_is_better=False),
        Metric("greedy_agreement", label="Greedy agreement with the base (first 32 new tokens)", perfect=1.0),
        Metric("greedy_matching_prefix", label="Greedy tokens identical to the base's before the first difference",
               unit="tokens", perfect=32.0),
        Metric("generation_prompts", label="prompts (greedy agreement; 24 tokens each)", setting=True),
        Metric("generation_new_tokens", label="new tokens timed (decode speed)", setting=True),
    )

    def applies_to(self, ctx: EvalContext) -> bool:
        return (ctx.state.task == "text-generation" and hasattr(ctx.state.model, "generate")
                and ctx.data is not None and len(ctx.data) > 0)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from hfcompress.plugin import decode_speed, greedy_agreement, pad_id

        prompts = _prompts(ctx)
        if not prompts:
            return {}
        result: dict[str, float] = {
            **decode_speed(ctx.state.model, prompts[0], new_tokens=SPEED_NEW_TOKENS, repeats=min(3, ctx.settings.repeats),
                           threads=ctx.settings.threads, pad_token_id=pad_id(ctx.state.tokenizer)),
            "generation_prompts": float(len(prompts)), "generation_new_tokens": float(SPEED_NEW_TOKENS),
        }
        if ctx.reference is None:
            ctx.cache["greedy"] = _continuations(ctx, prompts)  # the compressed model compares with these
            return result
        mine = _continuations(ctx, prompts)
        agreement = greedy_agreement(reference_continuations(ctx.reference), mine)
        result["greedy_agreement"] = agreement["greedy_agreement"]
        result["greedy_matching_prefix"] = agreement["matching_prefix"]
        return result


@hookimpl
def hfcompress_register_evaluators(register):  # type: ignore[no-untyped-def]
    register(Generation)
