"""Measuring helpers shared by the backends and ``auto``: calibration texts, batches, fidelity to
the input model and round-robin latency. torch is imported inside the functions."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import ModelState, StepContext

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import QuantizationConfig

# Used when no data is given (dynamic modes only): the fidelity check still runs on something.
FALLBACK_TEXTS = [
    "The movie was a delight from start to finish.",
    "I would not recommend this product to anyone.",
    "Stocks fell sharply after the announcement on Tuesday.",
    "What a wonderful day to go for a walk in the park!",
    "The service was slow and the food arrived cold.",
    "Researchers published the results in a peer-reviewed journal.",
    "Honestly, it was fine, nothing special.",
    "Thanks for the quick reply, that solved my problem.",
]


def calibration_texts(ctx: StepContext, config: QuantizationConfig) -> list[str]:
    data = ctx.train_data
    if data is None:
        return list(FALLBACK_TEXTS)
    texts = [t for t in data["text"][: config.calibration_samples * 2] if isinstance(t, str) and t.strip()]
    return texts[: config.calibration_samples]


def device_of(state: ModelState) -> Any:
    from hfcompress.plugin import model_device

    return model_device(state)


def tokenized_batches(state: ModelState, texts: list[str], config: QuantizationConfig) -> list[dict[str, Any]]:
    from hfcompress.plugin import tokenize

    return [tokenize(state, texts[i: i + config.batch_size], config.sequence_length)
            for i in range(0, len(texts), config.batch_size)]


def timing_batches(state: ModelState, texts: list[str], config: QuantizationConfig) -> list[dict[str, Any]]:
    """Full batches only (batch_size × sequence_length), repeating texts if there are few."""
    pool = list(texts) or list(FALLBACK_TEXTS)
    need = config.batch_size * config.timing_batches
    while len(pool) < need:
        pool += pool
    return tokenized_batches(state, pool[:need], config)


def run_forward(state: ModelState, batch: dict[str, Any]) -> Any:
    from hfcompress.plugin import forward

    return forward(state, batch)


def reduced_outputs(state: ModelState, texts: list[str], config: QuantizationConfig) -> torch.Tensor:
    import torch

    from hfcompress.plugin import reduce_output

    outs = [reduce_output(state, run_forward(state, b), b["attention_mask"])
            for b in tokenized_batches(state, texts, config)]
    return torch.cat(outs).float()


def fidelity(reference: torch.Tensor, outputs: torch.Tensor, task: str) -> dict[str, float]:
    import torch

    cos = torch.nn.functional.cosine_similarity(reference, outputs, dim=-1)
    result = {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6)}
    if task != "feature-extraction":
        result["top1_agreement"] = round(float((reference.argmax(-1) == outputs.argmax(-1)).float().mean()), 6)
    return result


def latency_round_robin(states: dict[str, ModelState], batches: list[dict[str, Any]],
                        threads: int) -> dict[str, dict[str, float]]:
    """Median/min ms per state: after a warm-up each, every batch runs on every state in turn."""
    import torch

    from hfcompress.plugin import fixed_threads

    times: dict[str, list[float]] = {name: [] for name in states}
    with fixed_threads(threads):
        for st in states.values():
            setter = getattr(st.model, "set_num_threads", None)
            if setter is not None:  # ONNX Runtime: same thread count as PyTorch
                setter(threads)
            run_forward(st, batches[0])  # warm-up: allocations, kernel selection, lazy init
        for batch in batches:
            for name, st in states.items():
                cuda = device_of(st).type == "cuda"
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run_forward(st, batch)
                if cuda:
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: {"median": round(statistics.median(t), 2), "min": round(min(t), 2)} for name, t in times.items()}


def tensor_bytes(model: Any) -> int:
    """Bytes of weights in memory (quantized tensors count their packed data and scales)."""
    total = 0
    for tensor in list(model.state_dict().values()):
        if hasattr(tensor, "nbytes"):
            total += int(tensor.nbytes)
        else:  # quanto tensors: sum their inner tensors
            inner = getattr(tensor, "__tensor_flatten__", None)
            if inner is not None:
                names, _ = inner()
                total += sum(int(getattr(tensor, n).nbytes) for n in names)
    return total
