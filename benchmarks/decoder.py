"""Suite ``decoder``: SmolLM2-135M (Llama architecture) — perplexity, generation speed, size.

Perplexity is token-level, on held-out vader:movie sentences (real English text the model did
not see in this run's training/calibration split): ``exp(mean NLL)`` over every non-padded
next-token prediction, the same batches for every variant. Generation speed: greedy decoding
of 32 new tokens for one prompt with the KV cache (``model.generate``), timed by the shared
timing routine at every thread count.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

from .common import build_hfcompress, forward_tensor, state_dict_bytes, torch_dtype_of
from .flops import linear_shapes
from .harness import Built, VariantSpec
from .timing import Timing, make_batches, time_call

log = logging.getLogger("benchmarks")

__all__ = ["DecoderSettings", "DecoderSuite", "perplexity"]

MODEL = "builtin:SmolLM2-135M"
DATA = "vader:movie"
NEW_TOKENS = 32


@dataclass
class DecoderSettings:
    eval_samples: int = 256
    sequence_length: int = 64
    batch_size: int = 16
    generation_repeats: int = 5
    # A 135M-parameter forward over 8 x 128 tokens is ~0.3 TFLOP: seconds per call on one core.
    warmup: int = 1
    repeats: int = 5
    distill_max_steps: int = 40
    calibration_samples: int = 64

    @classmethod
    def quick(cls) -> DecoderSettings:
        return cls(eval_samples=48, generation_repeats=2, warmup=1, repeats=2, distill_max_steps=8,
                   calibration_samples=16)


def perplexity(logits: Any, input_ids: Any, attention_mask: Any) -> tuple[float, int]:
    """Summed next-token NLL and the number of predicted tokens (padding excluded)."""
    import torch

    shift_logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), targets.reshape(-1),
                                            reduction="none").view_as(targets)
    return float(nll[mask].sum()), int(mask.sum())


class DecoderSuite:
    name = "decoder"

    def __init__(self, settings: DecoderSettings) -> None:
        self.settings = settings
        self.timing = Timing(settings.warmup, settings.repeats)
        self.batches: dict[str, dict[str, Any]] = {}
        self.tokens_per_s: dict[str, dict[str, dict[str, float]]] = {}

    def prepare(self, light: bool = False) -> None:
        from transformers import AutoTokenizer

        from hfcompress.data import DataConfig, load_data
        from hfcompress.models import resolve_model

        s = self.settings
        self.path = resolve_model(MODEL).path
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        splits = load_data(DataConfig.model_validate(DATA))
        # vader:movie is stored sorted by rating: draw the subset at random (seeded).
        evl = splits.eval.shuffle(seed=0).select(range(min(s.eval_samples, len(splits.eval))))
        self.eval_texts = list(evl["text"])
        self.data_fingerprint = splits.fingerprint
        self.batches = {k: {n: t for n, t in v.items() if n != "token_type_ids"}
                        for k, v in make_batches(self.tokenizer, self.eval_texts).items()}
        self.chunks = []
        for i in range(0, len(self.eval_texts), s.batch_size):
            enc = self.tokenizer(self.eval_texts[i : i + s.batch_size], padding="max_length", truncation=True,
                                 max_length=s.sequence_length, return_tensors="pt")
            self.chunks.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        self.prompt = self.tokenizer(self.eval_texts[0], return_tensors="pt")

    def describe(self) -> dict[str, Any]:
        return {"model": MODEL, "model_path": self.path, "data": DATA, "data_fingerprint": self.data_fingerprint,
                "eval_samples": len(self.eval_texts), "settings": self.settings.__dict__,
                "generation": {"new_tokens": NEW_TOKENS, "batch": 1, "greedy": True,
                               "prompt_tokens": int(self.prompt["input_ids"].shape[1])}}

    def quality(self, spec: VariantSpec, built: Built) -> dict[str, float]:
        total, count = 0.0, 0
        for chunk in self.chunks:
            nll, n = perplexity(built.forward(chunk), chunk["input_ids"], chunk["attention_mask"])
            total, count = total + nll, count + n
        return {"perplexity": math.exp(total / max(1, count)), "eval_tokens": count}

    def timing_metrics(self, spec: VariantSpec, threads: int) -> dict[str, float]:
        """Generation speed measured by ``extra_timings`` at ``threads``."""
        value = self.tokens_per_s.get(spec.name, {}).get(str(threads))
        return {f"generation_tokens_per_s_{threads}t": value["tokens_per_s"]} if value else {}

    def extra_timings(self, spec: VariantSpec, built: Built, threads: int) -> dict[str, float]:
        model = built.model
        if model is None or not hasattr(model, "generate"):
            return {}
        prompt = dict(self.prompt)

        def generate() -> Any:
            return model.generate(**prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)

        t = time_call(generate, Timing(warmup=1, repeats=self.settings.generation_repeats))
        self.tokens_per_s.setdefault(spec.name, {})[str(threads)] = {"tokens_per_s": round(NEW_TOKENS / (t["median"] / 1000), 2)}
        return {f"generate_{NEW_TOKENS}_tokens": round(t["median"], 2)}

    # -- variants -----------------------------------------------------------------------------
    def _load(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.path).eval()

    def _built(self, model: Any, params: int | None = None, dtype: str | None = None) -> Built:
        from hfcompress.models import num_parameters

        def forward(batch: dict[str, Any]) -> Any:
            return forward_tensor(model, {k: v for k, v in batch.items() if k != "token_type_ids"}, "text-generation")

        return Built(forward=forward, size_bytes=state_dict_bytes(model), num_parameters=params or num_parameters(model),
                     shapes=linear_shapes(model), compute_dtype=dtype or torch_dtype_of(model), model=model)

    def _fp32(self) -> Built:
        return self._built(self._load())

    def _bf16(self) -> Built:
        import torch

        return self._built(self._load().to(torch.bfloat16))

    def _quanto(self, bits: int) -> Built:
        from optimum.quanto import freeze, qint4, qint8, quantize

        model = self._load()
        params = sum(p.numel() for p in model.parameters())
        # lm_head shares its weight with the embeddings; quantizing it would untie and duplicate it
        quantize(model, weights=qint8 if bits == 8 else qint4, exclude=["lm_head"])
        freeze(model)
        return self._built(model, params, "fp32")

    def _torch_int8(self) -> Built:
        import torch

        base = self._load()
        params, shapes = sum(p.numel() for p in base.parameters()), linear_shapes(base)
        model = torch.ao.quantization.quantize_dynamic(base, {torch.nn.Linear}, dtype=torch.qint8)
        built = self._built(model, params, "int8")
        built.shapes = shapes
        return built

    def recipes(self) -> dict[str, tuple[str, dict[str, Any]]]:
        steps = self.settings.distill_max_steps
        evaluate = {"max_samples": 32, "repeats": 2, "warmup": 1, "evaluators": ["fidelity"]}
        prune = {"head-pruning": {"ratio": 0.33, "ffn_ratio": 0.5, "calibration_samples": self.settings.calibration_samples,
                                  "max_length": 64}}
        distil = {"distillation": {"max_steps": steps, "batch_size": 8, "sequence_length": 64}}
        return {
            "hfcompress quantization only": (
                "quantization {backend auto}: measured candidates, quality-gated (top-1 agreement with the input model)",
                {"data": DATA, "task": "text-generation", "steps": [{"quantization": {"backend": "auto"}}],
                 "evaluate": evaluate}),
            "hfcompress pruning + distillation": (
                f"head-pruning {{ratio 0.33, ffn_ratio 0.5}} -> distillation {{max_steps {steps}}}",
                {"data": DATA, "task": "text-generation", "steps": [prune, distil], "evaluate": evaluate}),
            "hfcompress pruning + distillation + quantization": (
                f"head-pruning {{ratio 0.33, ffn_ratio 0.5}} -> distillation {{max_steps {steps}}} -> quantization auto",
                {"data": DATA, "task": "text-generation",
                 "steps": [prune, distil, {"quantization": {"backend": "auto"}}], "evaluate": evaluate}),
        }

    def variants(self) -> list[VariantSpec]:
        out = [
            VariantSpec("PyTorch fp32", "torch", "AutoModelForCausalLM, float32", self._fp32),
            VariantSpec("PyTorch bf16", "torch", "model.to(torch.bfloat16)", self._bf16),
            VariantSpec("torch.ao dynamic int8", "torch.ao.quantization",
                        "quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)", self._torch_int8),
            VariantSpec("optimum-quanto int8 weights", "optimum-quanto",
                        "quantize(model, weights=qint8, exclude=lm_head); freeze", lambda: self._quanto(8)),
            VariantSpec("optimum-quanto int4 weights", "optimum-quanto",
                        "quantize(model, weights=qint4, exclude=lm_head); freeze", lambda: self._quanto(4)),
        ]
        for name, (desc, recipe) in self.recipes().items():
            out.append(VariantSpec(name, "hfcompress", desc,
                                   functools.partial(build_hfcompress, name, copy.deepcopy(recipe), MODEL), group="hfcompress"))
        return out
