"""The compute bound: matmul FLOPs per batch for each variant, and the CPU's measured GEMM peak.

FLOPs are counted from the shapes of the linear layers the variant really contains (so pruned
heads and FFN neurons count as removed), read from a PyTorch module tree (plain, bf16,
``torch.ao`` dynamic int8 and quanto layers all expose ``in_features``/``out_features``) or from an
ONNX graph (the exporter names each MatMul after its module: ``/encoder/layer.0/attention/self/
query/MatMul``). One multiply-add is 2 FLOPs. Per layer:

- every linear layer: ``2 * rows * in * out`` with ``rows = batch * seq`` (``batch`` for the BERT
  pooler and classification heads, which see one vector per sample);
- attention scores: ``QK^T`` and ``softmax(.)V`` cost ``2 * batch * seq * seq * d`` each, where
  ``d`` (heads x head size) is the input width of the layer's output projection (``attention.
  output.dense`` / ``self_attn.o_proj``), so pruned heads shrink it. Padded positions are counted:
  the kernels compute them.

Elementwise work (softmax, GELU, LayerNorm) is left out: it is a few percent of the matmuls here
and runs far below any GEMM peak anyway, which is exactly what the "fraction of peak" exposes.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "attention_width",
    "count_flops",
    "gemm_peak",
    "linear_shapes",
    "linear_shapes_onnx",
    "linear_shapes_openvino",
    "openvino_compute_dtype",
]

# The output projection of each attention block: its input width is heads x head size.
_ATTN_OUT = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.(?:attention\.output\.dense|self_attn\.o_proj)$")
# Layers applied to one vector per sample, not to every token.
_PER_SAMPLE = re.compile(r"(?:^|\.)(?:pooler|classifier|score)(?:\.|$)")


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """``{module path: (in_features, out_features)}`` for every linear layer of a torch model."""
    out: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        fin, fout = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(fin, int) and isinstance(fout, int) and name:
            out[name] = (fin, fout)
    return out


# ONNX ops that multiply the activations by a weight matrix stored as an initializer.
_WEIGHT_MATMULS = {"MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "FusedMatMul",
                   "QLinearMatMul", "MatMulIntegerToFloat"}


def _onnx_module_path(node_name: str) -> str:
    """``/encoder/layer.0/attention/self/query/MatMul_quant`` -> ``encoder.layer.0.attention.self.query``."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else node_name


def linear_shapes_openvino(path: str | Path) -> dict[str, tuple[int, int]]:
    """Linear layer shapes of an OpenVINO IR converted from our ONNX export, keyed by module path.

    A weight is a rank-2 Constant reached from a MatMul's second input through its decompression
    chain (NNCF int8: Constant(i8) -> Convert -> Subtract/Multiply); ``transpose_b`` says whether
    it is stored ``(out, in)``.
    """
    import openvino as ov

    out: dict[str, tuple[int, int]] = {}
    for op in ov.Core().read_model(str(path)).get_ops():
        if op.get_type_name() != "MatMul":
            continue
        node = op.input_value(1).get_node()
        for _ in range(6):
            if node.get_type_name() == "Constant" or node.get_input_size() == 0:
                break
            node = node.input_value(0).get_node()
        shape = [int(d) for d in node.get_output_shape(0)] if node.get_type_name() == "Constant" else []
        if len(shape) != 2:
            continue  # activation x activation (attention scores): counted from the projections
        fin, fout = (shape[1], shape[0]) if op.get_attributes().get("transpose_b") else (shape[0], shape[1])
        out[_onnx_module_path(op.get_friendly_name())] = (fin, fout)
    return out


def openvino_compute_dtype(path: str | Path) -> str:
    """``int8`` for an NNCF-quantized IR (FakeQuantize nodes), else the precision OpenVINO's CPU
    plugin chooses for float matmuls on this machine (``bf16`` with AVX-512 BF16)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
        return "int8"
    hint = str(core.compile_model(model, "CPU").get_property("INFERENCE_PRECISION_HINT"))
    return "bf16" if "bf16" in hint or "bfloat16" in hint else "fp32"


def linear_shapes_onnx(path: str | Path) -> dict[str, tuple[int, int]]:
    """Linear layer shapes of an exported (optionally ORT-quantized) ONNX graph, keyed by module path.

    A weight is an initializer input of a matmul node, directly or through a DequantizeLinear /
    Transpose / Cast chain; its last two dims are ``(in, out)`` (``(out, in)`` for Gemm with transB).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def weight_shape(name: str) -> tuple[int, ...] | None:
        seen = 0
        while name not in inits and name in producer and seen < 4:
            node = producer[name]
            if node.op_type not in {"DequantizeLinear", "Transpose", "Cast", "Identity"} or not node.input:
                return None
            shape = weight_shape(node.input[0])
            if shape is not None and node.op_type == "Transpose":
                return tuple(reversed(shape))
            return shape
        return inits.get(name)

    out: dict[str, tuple[int, int]] = {}
    for node in graph.node:
        if node.op_type not in _WEIGHT_MATMULS or len(node.input) < 2:
            continue
        if node.op_type == "MatMulNBits":  # packed (N x blocks x bytes): K and N are attributes
            attrs = {a.name: a.i for a in node.attribute}
            k, n = attrs["K"], attrs["N"]
        else:
            shape = weight_shape(node.input[1])
            if shape is None or len(shape) != 2:
                continue
            k, n = shape
            if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
                k, n = n, k
        out[_onnx_module_path(node.name or node.output[0])] = (int(k), int(n))
    return out


def attention_width(shapes: Mapping[str, tuple[int, int]]) -> dict[int, int]:
    """``{layer index: heads x head size}`` from each layer's attention output projection."""
    widths: dict[int, int] = {}
    for name, (fin, _fout) in shapes.items():
        match = _ATTN_OUT.search(name)
        if match:
            widths[int(match.group(1))] = fin
    return widths


def count_flops(shapes: Mapping[str, tuple[int, int]], batch: int, seq: int, *, lm_head: bool = True) -> int:
    """Matmul FLOPs of one forward pass over a ``batch x seq`` token batch (see the module doc).

    ``lm_head=False`` leaves out a causal LM's vocabulary projection (for example when a
    measurement only needs the last position's logits).
    """
    if not shapes:
        raise ValueError("no linear layers found: cannot count FLOPs for this model")
    total = 0
    for name, (fin, fout) in shapes.items():
        if name.endswith("lm_head") and not lm_head:
            continue
        rows = batch if _PER_SAMPLE.search(name) else batch * seq
        total += 2 * rows * fin * fout
    for width in attention_width(shapes).values():
        total += 2 * (2 * batch * seq * seq * width)
    return total


# -- the GEMM micro-benchmark -------------------------------------------------------------------
def _time_best(fn: Any, warmup: int, repeats: int) -> float:
    """The fastest of ``repeats`` calls: a peak is what the hardware can do, so on a shared
    machine the least-disturbed run is the estimate (variants, by contrast, report medians)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def gemm_peak(threads: int, size: int = 1024, warmup: int = 2, repeats: int = 7) -> dict[str, float]:
    """Best achievable matmul throughput (GFLOP/s; GOP/s for int8) on this CPU with ``threads``.

    Square ``size x size`` GEMMs in fp32 and bf16 (``torch.mm``) and int8 x int8 -> int32
    (``torch._int_mm``, the kernel that int8 inference reaches on CPU). A 1024 GEMM is big enough
    to reach AMX/AVX-512 steady state here and short enough (~20 ms fp32) to repeat in a quick run.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flops = 2.0 * size**3
        out: dict[str, float] = {}
        gen = torch.Generator().manual_seed(0)
        a32 = torch.randn(size, size, generator=gen)
        b32 = torch.randn(size, size, generator=gen)
        with torch.no_grad():
            out["fp32"] = flops / _time_best(lambda: torch.mm(a32, b32), warmup, repeats) / 1e9
            a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
            out["bf16"] = flops / _time_best(lambda: torch.mm(a16, b16), warmup, repeats) / 1e9
            a8 = torch.randint(-128, 127, (size, size), dtype=torch.int8, generator=gen)
            b8 = torch.randint(-128, 127, (size, size), dtype=torch.int8, generator=gen)
            # No int8 GEMM kernel in some builds: leave it out rather than guess.
            with contextlib.suppress(RuntimeError):
                out["int8"] = flops / _time_best(lambda: torch._int_mm(a8, b8), warmup, repeats) / 1e9
        return {k: round(v, 2) for k, v in out.items()}
    finally:
        torch.set_num_threads(before)
