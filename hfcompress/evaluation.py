"""Runs the evaluator plugins on the base and the compressed model, the same way.

The base is evaluated first; its :class:`EvalContext` becomes the ``reference`` of the
compressed model's context, so fidelity evaluators compare against it. Every model is run over
the held-out batches once (:func:`collect_outputs`, cached in ``ctx.cache``); evaluators read
the compact per-sample results from there instead of running the model again. Causal LMs are
the exception: their full-vocabulary logits are too large to keep for hundreds of samples, so
fidelity for an LM runs the base in lockstep with the compressed model, batch by batch, and
keeps only per-sample sums.

Numbers are rounded to 6 significant digits when a block is built, so results.json, the card
and the gate all see the same value (the card prints exactly what results.json holds).

Each evaluator declares the metrics it returns (:class:`hfcompress.plugin.Metric`: label, unit,
direction, whether it is a setting); :func:`metric_declarations` collects them for the evaluators
that run, and the card, the gate and the plot read labels and directions from there. A value
declared as a setting goes to the block's ``settings``; ``metrics`` holds measurements only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInputError, HfCompressError
from .model_io import eval_texts, fixed_threads, forward, mean_pool, tokenize
from .plugin import EvalContext, EvalSettings, Metric, ModelState

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "LOCAL_METRICS",
    "TOP_LEVEL",
    "EvalOutputs",
    "check_metrics",
    "collect_outputs",
    "compare_blocks",
    "declaration",
    "evaluate_state",
    "evaluator_declarations",
    "higher_is_better",
    "load_metric",
    "metric_declarations",
    "round_value",
]

# These three are lifted out of ``metrics`` to the top of a results.json block (docs/contract.md); their
# labels and directions come from the evaluators that declare them (size, speed) like any other.
TOP_LEVEL = ("size_bytes", "num_parameters", "latency_ms")

# Default task metrics ship inside the package so they load offline with evaluate.load(path).
LOCAL_METRICS_DIR = Path(__file__).parent / "metrics"
LOCAL_METRICS = tuple(sorted(p.name for p in LOCAL_METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file()))


# -- what evaluators declare --------------------------------------------------------------------
def _evaluator_names(settings: EvalSettings) -> list[str]:
    from .registry import get_registry

    return sorted(get_registry().evaluators) if settings.evaluators is None else list(settings.evaluators)


def evaluator_declarations(settings: EvalSettings | None = None) -> dict[str, tuple[Metric, ...]]:
    """Evaluator name → the metrics it declares, for the evaluators that run under ``settings``.

    Those are ``settings.evaluators`` (default: every registered evaluator), in the order they run.
    Which of them applies is only known once a model is loaded (fidelity skips the base,
    task-metrics needs labels), so this is what *may* be measured. An unknown evaluator name is a
    :class:`BadInputError` naming the field.
    """
    from .registry import get_registry

    settings = settings or EvalSettings()
    registry = get_registry()
    out: dict[str, tuple[Metric, ...]] = {}
    for name in _evaluator_names(settings):
        try:
            evaluator = registry.evaluator(name)
        except BadInputError as exc:
            raise BadInputError(f"evaluate.evaluators: {exc}") from None
        out[name] = tuple(evaluator.declared_metrics(settings))
    return out


def metric_declarations(settings: EvalSettings | None = None) -> dict[str, Metric]:
    """Metric name → its :class:`Metric`, for the evaluators that run under ``settings``.

    In the order the evaluators run and declare them; when two evaluators declare one name, the
    first one's declaration is used.
    """
    out: dict[str, Metric] = {}
    for metrics in evaluator_declarations(settings).values():
        for metric in metrics:
            out.setdefault(metric.name, metric)
    return out


def declaration(name: str, declarations: Mapping[str, Metric] | None = None) -> Metric:
    """The declaration of ``name``; an undeclared name gets ``Metric(name)`` (higher is better).

    ``declarations`` defaults to those of every registered evaluator.
    """
    table = metric_declarations() if declarations is None else declarations
    return table.get(name) or Metric(name)


def higher_is_better(name: str, declarations: Mapping[str, Metric] | None = None) -> bool:
    """Direction of a metric as its evaluator declares it: "change" on the card, the gate's "drop", the plot."""
    return declaration(name, declarations).higher_is_better


def round_value(value: Any) -> Any:
    """6 significant digits for floats; integers (bytes, parameters) stay exact."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return value
        if value.is_integer() and abs(value) < 2**53:  # counts (bytes, parameters) stay exact
            return int(value)
        rounded = float(f"{value:.6g}")
        # whole numbers print without ".0" on the card and in JSON, whatever produced them
        return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded
    return value


# -- metric modules -------------------------------------------------------------------------
def load_metric(name: str) -> Any:
    """``evaluate.load`` for a metric: the packaged module when we ship one, else the name as given.

    Names we ship (accuracy, f1) never touch the network. Other names are passed to
    ``evaluate.load`` unchanged (a Hub metric for users online, or a local path).
    """
    import evaluate

    local = LOCAL_METRICS_DIR / name
    target = str(local) if name in LOCAL_METRICS else name
    try:
        return evaluate.load(target)
    except Exception as exc:
        raise BadInputError(
            f"evaluate.metrics: could not load metric {name!r} ({type(exc).__name__}: {exc}). Metrics that work "
            f"offline: {', '.join(LOCAL_METRICS)}; other names need access to the Hugging Face Hub "
            "(HF_HUB_OFFLINE unset) or a local metric script path."
        ) from exc


def check_metrics(settings: EvalSettings) -> None:
    """Load every extra metric named in ``settings.metrics`` now, so a typo fails before any heavy work."""
    for name in settings.metrics:
        load_metric(name)


# -- one pass of a model over the held-out batches ------------------------------------------
@dataclass
class EvalOutputs:
    """Compact per-sample results of one model over the evaluation texts (all on CPU, float32).

    ``vectors``: mean-pooled embeddings (feature-extraction) or class logits (classification);
    None for causal LMs. ``nll``/``tokens``: summed next-token negative log-likelihood and the
    number of predicted tokens per sample (causal LMs). ``lockstep``: per-sample sums against the
    reference model for causal LMs (``kl``, ``agree``, ``positions``), when requested.
    """

    texts: list[str]
    vectors: torch.Tensor | None = None
    nll: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    lockstep: dict[str, list[float]] | None = None


def _as_tensor(value: Any) -> torch.Tensor:
    import torch

    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _output_tensor(state: ModelState, output: Any) -> torch.Tensor:
    """``last_hidden_state`` or ``logits`` as a float32 CPU tensor, whatever the runtime returned."""
    name = "last_hidden_state" if state.task == "feature-extraction" else "logits"
    value = getattr(output, name, None)
    if value is None:
        value = output[name] if isinstance(output, dict) else output[0]
    return _as_tensor(value).float().cpu()


def _lm_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed next-token NLL and token count.

    Position t predicts token t+1; a pair counts only when both are real tokens, which is right
    for left and right padding alike.
    """
    import torch

    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = input_ids[:, 1:].long()
    valid = (mask[:, 1:] * mask[:, :-1]).to(torch.float32)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * valid
    return nll.sum(1), valid.sum(1)


def _lockstep(base_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample sums of KL(base || compressed) and top-1 agreement over every real position."""
    import torch

    valid = mask.to(torch.float32)
    base_logp = torch.log_softmax(base_logits, dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1).clamp(min=0.0) * valid
    agree = (base_logits.argmax(-1) == logits.argmax(-1)).to(torch.float32) * valid
    return {"kl": kl.sum(1), "agree": agree.sum(1), "positions": valid.sum(1)}


def collect_outputs(ctx: EvalContext, lockstep: bool = False) -> EvalOutputs:
    """Run ``ctx.state`` over the held-out batches once and cache the compact results.

    With ``lockstep`` (causal LMs with a reference), the reference model runs on the same batch
    right after the evaluated one, so only one batch of full-vocabulary logits per model is ever
    held in memory.
    """
    cached: EvalOutputs | None = ctx.cache.get("outputs")
    want_lockstep = lockstep and ctx.state.task == "text-generation" and ctx.reference is not None
    if cached is not None and (not want_lockstep or cached.lockstep is not None):
        return cached
    import torch

    texts = eval_texts(ctx)
    out = EvalOutputs(texts=texts)
    vectors: list[torch.Tensor] = []
    sums: dict[str, list[float]] = {"kl": [], "agree": [], "positions": []}
    bs, seq = ctx.settings.batch_size, ctx.settings.sequence_length
    state = ctx.state
    for start in range(0, len(texts), bs):
        chunk = texts[start : start + bs]
        batch = tokenize(state, chunk, seq)
        tensor = _output_tensor(state, forward(state, batch))
        mask = batch["attention_mask"].cpu()
        if state.task == "feature-extraction":
            vectors.append(mean_pool(tensor, mask))
        elif state.task == "text-classification":
            vectors.append(tensor)
        else:
            nll, count = _lm_nll(tensor, batch["input_ids"].cpu(), mask)
            out.nll.extend(nll.tolist())
            out.tokens.extend(int(c) for c in count.tolist())
            if want_lockstep:
                assert ctx.reference is not None
                ref_state = ctx.reference.state
                ref_batch = tokenize(ref_state, chunk, seq)
                if not torch.equal(ref_batch["input_ids"], batch["input_ids"]):
                    raise HfCompressError(
                        "fidelity: the base and compressed tokenizers produce different token ids for the same "
                        "text, so their next-token distributions cannot be compared position by position"
                    )
                ref_logits = _output_tensor(ref_state, forward(ref_state, ref_batch))
                if ref_logits.shape != tensor.shape:
                    raise HfCompressError(
                        f"fidelity: base logits {tuple(ref_logits.shape)} and compressed logits "
                        f"{tuple(tensor.shape)} differ in shape (vocabulary changed?)"
                    )
                for key, value in _lockstep(ref_logits, tensor, mask).items():
                    sums[key].extend(value.tolist())
                del ref_logits
        del tensor
    if vectors:
        out.vectors = torch.cat(vectors)
    if want_lockstep:
        out.lockstep = sums
    ctx.cache["outputs"] = out
    return out


# -- blocks -----------------------------------------------------------------------------------
def evaluate_state(
    state: ModelState,
    data: datasets.Dataset | None,
    settings: EvalSettings,
    artifact_dir: Path | None = None,
    reference: EvalContext | None = None,
) -> tuple[dict[str, Any], EvalContext]:
    """Evaluate one model; returns its results.json block and its context.

    Evaluators run in name order (or ``settings.evaluators``' order) with PyTorch pinned to
    ``settings.threads``. A failing evaluator stops the evaluation with its name in the message: a
    block that silently lacks a metric would make base and compressed incomparable. Values the
    evaluator declares as settings go to the block's ``settings``, the rest to ``metrics`` (or
    the top level, for :data:`TOP_LEVEL`); a value it does not declare is kept as a metric, with
    a warning naming the evaluator.
    """
    from .registry import get_registry

    registry = get_registry()
    ctx = EvalContext(state=state, data=data, settings=settings, artifact_dir=artifact_dir, reference=reference)
    metrics: dict[str, Any] = {}
    conditions: dict[str, Any] = {}
    with fixed_threads(settings.threads):
        for name in _evaluator_names(settings):
            evaluator = registry.evaluator(name)
            if not evaluator.applies_to(ctx):
                continue
            log.info("evaluating %s with %s", "base" if reference is None else "compressed", name)
            try:
                produced = evaluator.evaluate(ctx)
            except HfCompressError:
                raise
            except Exception as exc:
                raise HfCompressError(f"evaluator {name!r} failed: {type(exc).__name__}: {exc}") from exc
            declared = {m.name: m for m in evaluator.declared_metrics(settings)}
            undeclared = sorted(str(k) for k in produced if str(k) not in declared)
            if undeclared:
                # a warning, not an error: the number is still measured; only its label and direction are guessed
                log.warning(
                    "evaluator %r returned %s that it does not declare; add them to %s.metrics "
                    "(hfcompress.plugin.Metric) so the card and the quality gate know their label and direction "
                    "(until then they count as higher-is-better and a gate cannot name them)",
                    name, ", ".join(repr(k) for k in undeclared), type(evaluator).__name__,
                )
            for key, value in produced.items():
                metric = declared.get(str(key))
                target = conditions if metric is not None and metric.setting else metrics
                target[str(key)] = round_value(value)
    block: dict[str, Any] = {key: metrics.pop(key, None) for key in TOP_LEVEL}
    block["metrics"] = dict(sorted(metrics.items()))
    block["settings"] = dict(sorted(conditions.items()))
    return block, ctx


def _value(block: dict[str, Any], name: str) -> Any:
    if name in TOP_LEVEL:
        return block.get(name)
    return (block.get("metrics") or {}).get(name)


def compare_blocks(base: dict[str, Any], compressed: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers for the card: per-metric change, speedup and size ratio (rounded like metrics).

    ``change`` is compressed - base; ``relative_change_pct`` is 100 * change / |base|. ``speedup`` is
    base latency / compressed latency; ``size_ratio`` compressed bytes / base bytes.
    """
    out: dict[str, Any] = {"metrics": {}}
    # settings (batch size, threads, ...) are in each block's "settings": conditions, never a change
    names = [k for k in TOP_LEVEL] + sorted(set(base.get("metrics") or {}) | set(compressed.get("metrics") or {}))
    for name in names:
        b, c = _value(base, name), _value(compressed, name)
        if not isinstance(b, (int, float)) or not isinstance(c, (int, float)):
            continue
        entry: dict[str, Any] = {"change": round_value(float(c) - float(b))}
        if b:
            entry["relative_change_pct"] = round_value(100.0 * (float(c) - float(b)) / abs(float(b)))
        out["metrics"][name] = entry
    bl, cl = base.get("latency_ms"), compressed.get("latency_ms")
    if isinstance(bl, (int, float)) and isinstance(cl, (int, float)) and cl > 0:
        out["speedup"] = round_value(float(bl) / float(cl))
    bs, cs = base.get("size_bytes"), compressed.get("size_bytes")
    if isinstance(bs, (int, float)) and isinstance(cs, (int, float)) and bs > 0:
        out["size_ratio"] = round_value(float(cs) / float(bs))
        out["base_size_mb"] = round_value(float(bs) / 1e6)
        out["compressed_size_mb"] = round_value(float(cs) / 1e6)
    return out
