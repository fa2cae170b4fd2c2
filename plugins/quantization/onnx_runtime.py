"""Everything ONNX-Runtime-specific: export, graph optimization, int8 quantization, and a wrapper
that makes an ``InferenceSession`` callable like a transformers model.

This is the one place that does what optimum-onnx's ``ORTModel`` / ``ORTOptimizer`` /
``ORTQuantizer`` would do. optimum-onnx 0.1.0 pins transformers < 4.58 and fails to import on
transformers 5 (checked with optimum-onnx 0.1.0), so this module uses ``torch.onnx.export`` and onnxruntime's own
APIs; once optimum-onnx supports transformers 5, only this module needs to change.

Decisions (each measured or forced, see docs/techniques/quantization.md):

- Export: ``torch.onnx.export(dynamo=False, opset 17)``, the model called with keyword
  arguments through a small wrapper module, eager attention (a plain MatMul/Softmax graph that
  ONNX Runtime's BERT fusion recognizes), dynamic batch and sequence axes, and a dummy batch
  that contains padding (so no "mask is all ones" shortcut is traced into the graph).
- Causal LMs are exported logits-only, without a KV cache (``use_cache=False``): good for
  scoring/classification-style use and for measuring, not for fast token-by-token generation.
- Graph optimization: ONNX Runtime's transformer fusions (``onnxruntime.transformers.optimizer``)
  for BERT-family graphs, kept only when the fused graph's outputs match the exported ones.
- Quantization: ``quantize_dynamic`` (int8 weights, activations quantized per batch at run time;
  ``per_channel=True`` kept MiniLM's cosine at 0.99) or ``quantize_static`` (QDQ, activations
  calibrated on data).

The quantization technique's ``onnxruntime`` backend (``onnx_backend``) turns a config into these
calls. Nothing here is imported at module import time of the plugin package: the backend module is
imported on first use, and this module imports torch/onnx/onnxruntime inside functions.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 17
# Model types whose exported graphs ONNX Runtime's BERT fusions understand.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "mpnet"}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Operators that make sense to quantize in transformer graphs; the defaults of each mode are
# onnxruntime's own (None), this is only what the config accepts.
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "Add", "Mul",
                   "Transpose", "Softmax", "LayerNormalization")
_CANDIDATE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def output_name(task: str) -> str:
    return "last_hidden_state" if task == "feature-extraction" else "logits"


def model_input_names(model: Any, task: str) -> list[str]:
    """Inputs the exported graph takes: those of input_ids/attention_mask/token_type_ids the
    model's ``forward`` accepts (decoders get no token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    names = [n for n in _CANDIDATE_INPUTS if n in params]
    if task == "text-generation" and "token_type_ids" in names:
        names.remove("token_type_ids")
    return names


def _export_module(model: Any, task: str, input_names: Sequence[str]) -> torch.nn.Module:
    import torch

    out_name = output_name(task)

    class KeywordCall(torch.nn.Module):
        """Positional graph inputs → keyword call; returns one tensor (no KV cache, no extras)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            kwargs: dict[str, Any] = dict(zip(input_names, args, strict=True))
            if task == "text-generation":
                kwargs["use_cache"] = False
            out = self.inner(**kwargs)
            return getattr(out, out_name) if hasattr(out, out_name) else out[0]

    # eval() on the wrapper, not only on the inner model: torch.onnx.export restores the
    # wrapper's train/eval mode afterwards, and a fresh wrapper is in training mode, which
    # would silently switch the inner model's dropout on.
    return KeywordCall(model).eval()


def export(model: Any, tokenizer: Any, task: str, path: Path, opset: int = OPSET) -> list[str]:
    """Export ``model`` to ``path`` (a .onnx file); returns the graph's input names."""
    import copy

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    if device.type != "cpu":  # export from a CPU copy: the traced graph must not hold CUDA tensors
        model = copy.deepcopy(model).to("cpu")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("ONNX export expects a float32 model; quantize to bf16/fp16 with the torch backend instead")
    input_names = model_input_names(model, task)
    # Sentences of different lengths: the dummy batch has padding, so the mask path is traced.
    enc = tokenizer(["a short sentence", "a somewhat longer sentence to make some padding appear"],
                    padding=True, return_tensors="pt")
    args = tuple(enc[name] if name in enc else torch.zeros_like(enc["input_ids"]) for name in input_names)
    out_name = output_name(task)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, out_name]}
    previous_attn = getattr(model.config, "_attn_implementation", None)
    _set_attention(model, "eager")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                _export_module(model, task, input_names), args, str(path), dynamo=False, opset_version=opset,
                input_names=list(input_names), output_names=[out_name], dynamic_axes=axes, do_constant_folding=True,
            )
    finally:
        if previous_attn is not None:
            _set_attention(model, previous_attn)
        model.train(was_training)
    return list(input_names)


def _set_attention(model: Any, impl: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter(impl)
        else:
            model.config._attn_implementation = impl
    except Exception as exc:  # custom modeling code may not support switching; export as is
        log.info("could not switch attention to %s for export: %s", impl, exc)


def sample_feed(tokenizer: Any, input_names: Sequence[str], texts: Sequence[str], max_length: int = 64,
                fixed_length: bool = False) -> dict[str, Any]:
    """Numpy inputs for a session, from the tokenizer (int64, padded to the longest text, or to
    ``max_length`` with ``fixed_length``: histogram calibrators stack batches and need one shape)."""
    import numpy as np

    padding = "max_length" if fixed_length else True
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="np")
    return {name: (enc[name] if name in enc else np.zeros_like(enc["input_ids"])).astype(np.int64)
            for name in input_names}


# ONNX Runtime's load-time fusion of residual Add + LayerNormalization into SkipLayerNormalization.
# In int8 graphs (DynamicQuantizeMatMul) on AVX-512 CPUs without AMX its kernel measured slower
# than the unfused pair: all-MiniLM-L6-v2 pruned 50%/50%, ORT dynamic int8, 1 thread, 8x128:
# 57.6 ms fused vs 47.8 ms unfused (SkipLayerNormalization was 19% of the run). Whether it helps
# depends on the CPU, so quantization (graph_optimization: auto) times both.
SKIP_LAYERNORM_FUSION = "SkipLayerNormFusion"


def keep_layernorm_unfused(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` with each residual ``Add`` that feeds a ``LayerNormalization`` written
    as the equivalent two-input ONNX ``Sum``; returns how many were rewritten.

    Why not ``disabled_optimizers=["SkipLayerNormFusion"]``: that is a session option, so every
    loader would have to remember it, and a bare ``InferenceSession(path)`` would run a different
    (fused) graph than the one timed and evaluated, with int8 outputs that differ at quantization-
    noise level (max 0.06 on MiniLM). The fusion only matches ``Add`` nodes, so a ``Sum`` (same
    arithmetic, element by element) keeps the choice inside the file, for every loader.
    """
    import onnx

    model = onnx.load(str(src))
    producer = {out: node for node in model.graph.node for out in node.output}
    rewritten = 0
    for node in model.graph.node:
        add = producer.get(node.input[0]) if node.op_type == "LayerNormalization" and node.input else None
        if add is not None and add.op_type == "Add" and len(add.input) == 2 and not add.domain:
            add.op_type = "Sum"
            rewritten += 1
    onnx.save(model, str(dst))
    return rewritten


def _session(path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
             disabled_optimizers: Sequence[str] | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]),
                                disabled_optimizers=list(disabled_optimizers or []) or None)


def _max_abs_diff(a_path: Path, b_path: Path, feed: dict[str, Any]) -> float:
    import numpy as np

    a = _session(a_path, 1).run(None, feed)[0]
    b = _session(b_path, 1).run(None, feed)[0]
    mask = feed.get("attention_mask")
    if mask is not None and a.ndim == 3:  # padded positions carry no meaning; compare real tokens only
        keep = mask.astype(bool)
        a, b = a[keep], b[keep]
    return float(np.max(np.abs(a - b)) / max(1e-6, float(np.max(np.abs(a)))))


def _model_type(config: Any) -> str:
    # Head-pruned models (plugins/head_pruning/) keep their family's graph under their own
    # model_type; the fusions apply to them the same way.
    return str(getattr(config, "model_type", "")).removeprefix("hfcompress-pruned-")


def bert_like(config: Any) -> bool:
    """Post-LayerNorm BERT-family graphs: what ONNX Runtime's BERT and SkipLayerNorm fusions target."""
    return _model_type(config) in BERT_LIKE


def optimize(src: Path, dst: Path, config: Any, feed: dict[str, Any], tolerance: float = 1e-3) -> dict[str, Any]:
    """ONNX Runtime's transformer graph fusions for BERT-family graphs (what ORTOptimizer does).

    The fused graph is kept only when its outputs match the unfused graph on ``feed`` (relative
    max difference ≤ ``tolerance``): custom modeling code (e.g. pruned heads) can produce
    patterns the fusions mis-handle, and a wrong fast graph is worse than a correct slow one.
    Returns what was done; ``dst`` always exists afterwards (a copy of ``src`` when not fused).
    """
    report: dict[str, Any] = {"graph_optimization": "none"}
    if not bert_like(config):
        shutil.copyfile(src, dst)
        report["graph_optimization_reason"] = f"no ONNX Runtime transformer fusion for model_type {_model_type(config)!r}"
        return report
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        # transformers 5 reshapes attention with -1 heads, so the fusion cannot read the head
        # count from the graph: give it from the config when every layer has the same heads.
        # Pruned models with per-layer head counts get 0 (detect), and fall back to no
        # attention fusion when detection fails; the other fusions still apply.
        num_heads, hidden = uniform_attention_shape(config)
        optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0)
        optimized.save_model_to_file(str(dst))
        fused = optimized.get_fused_operator_statistics()
    except Exception as exc:  # fusion is an optimization: never fail the export for it
        shutil.copyfile(src, dst)
        report["graph_optimization_reason"] = f"fusion failed: {type(exc).__name__}: {exc}"
        return report
    diff = _max_abs_diff(src, dst, feed)
    if diff > tolerance:
        shutil.copyfile(src, dst)
        report["graph_optimization_reason"] = f"fused graph differs from the export (relative {diff:.2e}); kept unfused"
        return report
    report["graph_optimization"] = "bert-fusion"
    report["fused_operators"] = {k: int(v) for k, v in fused.items() if v}
    report["fusion_max_relative_diff"] = diff
    return report


def uniform_attention_shape(config: Any) -> tuple[int, int]:
    """(num_heads, hidden_size) when all layers share them, else (0, 0) for auto-detection."""
    heads = getattr(config, "num_attention_heads", 0)
    hidden = getattr(config, "hidden_size", 0)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    # Head-pruned BERT models (plugins/head_pruning/) list per-layer counts in pruned_layout.
    layout = getattr(config, "pruned_layout", None) or {}
    per_layer = layout.get("num_attention_heads")
    if per_layer:
        if len(set(per_layer)) > 1:
            return 0, 0
        heads, head_dim = int(per_layer[0]), int(layout.get("head_dim") or head_dim)
    if not isinstance(heads, int) or heads <= 0:
        return 0, 0
    # The fused Attention's hidden size is heads × head_dim: after uniform pruning it is
    # smaller than the model's hidden_size.
    return heads, heads * head_dim


def node_module(node_name: str) -> str:
    """The module path a node exported by ``torch.onnx`` comes from:
    ``/inner/model/layers.0/self_attn/q_proj/MatMul`` → ``model.layers.0.self_attn.q_proj``."""
    parts = [p for p in node_name.split("/") if p]
    if parts and parts[0] == "inner":  # the export wrapper's attribute
        parts = parts[1:]
    return ".".join(parts[:-1])


def nodes_matching(path: Path, patterns: Sequence[str]) -> list[str]:
    """Names of nodes whose module path matches one of the fnmatch ``patterns`` (quanto's
    ``exclude`` semantics: ``lm_head``, ``encoder.layer.0.*``)."""
    import fnmatch

    import onnx

    if not patterns:
        return []
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node
            if any(fnmatch.fnmatch(node_module(n.name), pattern) for pattern in patterns)]


def quantize_dynamic(src: Path, dst: Path, *, per_channel: bool = True, reduce_range: bool = False,
                     op_types: Sequence[str] | None = None, exclude_nodes: Sequence[str] = ()) -> None:
    """Int8 weights; activations quantized per batch at run time (no calibration data)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(
        str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(op_types) if op_types else None, extra_options=_DEFAULT_TYPE(),
        nodes_to_exclude=list(exclude_nodes) or None,
    )


def _DEFAULT_TYPE() -> dict[str, Any]:  # noqa: N802
    # Fused contrib ops (SkipLayerNormalization, BiasGelu...) have no ONNX shape inference, so the
    # quantizer cannot type their outputs; they are all float32 here.
    import onnx

    return {"DefaultTensorType": onnx.TensorProto.FLOAT}


class _Feeds:
    """onnxruntime CalibrationDataReader over pre-tokenized numpy batches."""

    def __init__(self, feeds: Iterable[dict[str, Any]]) -> None:
        self._feeds = list(feeds)
        self._iter = iter(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_static(src: Path, dst: Path, feeds: Iterable[dict[str, Any]], *, method: str = "minmax",
                    per_channel: bool = True, reduce_range: bool = False,
                    op_types: Sequence[str] | None = None, exclude_nodes: Sequence[str] = ()) -> None:
    """Int8 weights and activations with ranges calibrated on ``feeds`` (QDQ format)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method {method!r}; supported: {', '.join(methods)}")
    ort_quantize_static(
        str(src), str(dst), _Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(op_types) if op_types else None, calibrate_method=methods[method],
        nodes_to_exclude=list(exclude_nodes) or None,
        # Attention masks use large negative constants; symmetric activations would waste range.
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, **_DEFAULT_TYPE()},
    )


def count_parameters(path: Path) -> int:
    """Logical parameter count of an ONNX graph: elements of its non-scalar initializers."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        if n > 1:
            total += n
    return total


def numpy_feed(inputs: dict[str, Any], input_names: Sequence[str], runtime: str) -> dict[str, Any]:
    """Keyword inputs (torch tensors or arrays) as the int64 arrays a graph runtime takes: only the
    graph's inputs, and the missing ones filled as transformers defaults them (attend everywhere,
    segment 0). Shared by the ONNX Runtime and OpenVINO wrappers."""
    import numpy as np
    import torch

    feed: dict[str, Any] = {}
    for name, value in inputs.items():
        if name not in input_names or value is None:
            continue
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feed[name] = array.astype(np.int64)
    if "input_ids" not in feed:
        raise ValueError(f"the {runtime} model needs input_ids; it accepts {', '.join(input_names)}")
    for name in input_names:
        if name not in feed:
            fill = np.ones_like if name == "attention_mask" else np.zeros_like
            feed[name] = fill(feed["input_ids"])
    return feed


def model_output(out: torch.Tensor, task: str) -> Any:
    """The graph's one output as the transformers output class of ``task``."""
    from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput

    if task == "feature-extraction":
        return BaseModelOutput(last_hidden_state=out)
    if task == "text-generation":
        return CausalLMOutput(logits=out)
    return SequenceClassifierOutput(logits=out)


class OnnxModel:
    """An ONNX Runtime session that is called like a transformers model.

    ``model(input_ids=..., attention_mask=...)`` (torch tensors or numpy arrays) returns a
    transformers ``ModelOutput`` with ``last_hidden_state`` or ``logits`` as torch tensors.
    ``input_names`` lists the inputs the graph accepts (the runner drops others), and
    ``set_num_threads(n)`` recreates the session with ``intra_op_num_threads=n`` so speed
    measurements can pin threads exactly as for PyTorch. ``disabled_optimizers`` names ONNX
    Runtime load-time optimizers to switch off (see ``SKIP_LAYERNORM_FUSION``).
    """

    def __init__(self, path: str | Path, config: Any = None, task: str = "feature-extraction",
                 num_threads: int | None = None, providers: Sequence[str] | None = None,
                 disabled_optimizers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.task = task
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.num_threads = num_threads
        self.disabled_optimizers = list(disabled_optimizers or [])
        self.session = _session(self.path, num_threads, self.providers, self.disabled_optimizers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.num_parameters = count_parameters(self.path)

    def set_num_threads(self, n: int) -> None:
        if n != self.num_threads:
            self.num_threads = n
            self.session = _session(self.path, n, self.providers, self.disabled_optimizers)

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, **inputs: Any) -> Any:
        import torch

        feed = numpy_feed(inputs, self.input_names, "ONNX")
        return model_output(torch.from_numpy(self.session.run(self.output_names[:1], feed)[0]), self.task)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path}, task={self.task!r}, inputs={self.input_names}, threads={self.num_threads})"
