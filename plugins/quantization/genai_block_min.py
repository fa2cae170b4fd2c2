"""int4 weights with a float minimum per block (``algorithm: block_min``) for an onnxruntime-genai
folder, on ONNX Runtime's fast MatMulNBits kernel.

The scheme is llama.cpp's Q4_1: each block of ``group_size`` weights along the input dimension is
``w = scale * q + minimum`` with ``q`` in 0..15, ``scale = (max - min) / 15`` and the minimum kept
in float. ONNX Runtime's own quantizer cannot write it fast:

- its asymmetric round-to-nearest rounds the zero point to an integer, which moves every weight of
  a block by up to half a step (SmolLM2-135M: perplexity 142 -> 185, greedy agreement 0.11);
- MatMulNBits does accept float zero points, but its CPU kernel then leaves the int8-activation
  path: 5.6 tokens/s against 99 with integer zero points (measured 2026-12-03, 1 thread).

So each matmul is split in two, with ``s_b = sum of the inputs in block b``:
``x @ W = MatMulNBits(x; q, scale, default zero point 8) + s @ C`` where
``C[b, n] = minimum[n, b] + 8 * scale[n, b]``. The first term is the builder's own int4 kernel
(int8 activations, ``accuracy_level`` 4); the block sums are one small fp32 MatMul of ``x`` with a
constant 0/1 matrix, shared by the matmuls that read the same input, and the correction one more
small MatMul (``K / group_size`` rows). The LM head stays int8 (round-to-nearest, ``group_size``):
an int4 LM head cost +7.5% perplexity on SmolLM2-135M.

Why it matters: a model that came from a Q4_1 GGUF (the packaged ``builtin:SmolLM2-135M`` did) is
represented exactly, so quality is the fp32 model's up to the activations' int8 rounding, at int4
speed. On weights from fp16 training it is plain Q4_1 rounding, which ``auto`` measures like any
other candidate (on small models it usually costs several percent of perplexity).

Example recipe step::

    steps:
      - quantization: {backend: onnxruntime-genai, dtype: int4, algorithm: block_min}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .genai_blocks import (
    ACCURACY_LEVEL,
    constant_matmuls,
    lm_head_matmul,
    quantize_matmuls,
    save_graph,
    untie_transposed_weights,
)

BITS = 4
LEVELS = 2**BITS - 1
KERNEL_ZERO_POINT = 2 ** (BITS - 1)  # MatMulNBits' zero point when none is given


def quantize_block_min(weight: Any, block: int) -> tuple[Any, Any, Any]:
    """``(q, scale, minimum)`` of a ``(K, N)`` matmul weight, blocks of ``block`` along K.

    ``q``: uint8 ``(N, K_blocks, block)`` in 0..15 (a last partial block is padded with its own
    first value, which changes neither its minimum nor its maximum); ``scale`` and ``minimum``:
    float32 ``(N, K_blocks)``. ``scale * q + minimum`` reproduces ``weight`` to rounding."""
    import numpy as np

    w = np.asarray(weight, dtype=np.float32).T  # (N, K): MatMulNBits stores B transposed
    n, k = w.shape
    blocks = -(-k // block)
    pad = blocks * block - k
    if pad:
        tail = np.repeat(w[:, (blocks - 1) * block: (blocks - 1) * block + 1], pad, axis=1)
        w = np.concatenate([w, tail], axis=1)
    w = w.reshape(n, blocks, block)
    minimum, maximum = w.min(-1), w.max(-1)
    scale = (maximum - minimum) / LEVELS
    scale[scale == 0] = 1.0  # a constant block: q = 0 everywhere, the minimum carries it
    q = np.clip(np.rint((w - minimum[..., None]) / scale[..., None]), 0, LEVELS).astype(np.uint8)
    return q, scale.astype(np.float32), minimum.astype(np.float32)


def _block_indicator(k: int, block: int) -> Any:
    """The ``(K, K_blocks)`` 0/1 matrix whose product with ``x`` sums each block of inputs."""
    import numpy as np

    indicator = np.zeros((k, -(-k // block)), dtype=np.float32)
    indicator[np.arange(k), np.arange(k) // block] = 1.0
    return indicator


def rewrite(model: Any, block: int, skip: set[str]) -> int:
    """Replace every constant-weight MatMul of ``model`` but those in ``skip`` by the block-min int4
    pair described above, in place. Returns how many were replaced."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    targets = set(constant_matmuls(model)) - skip
    sums: dict[str, str] = {}  # input tensor -> its block sums (matmuls sharing an input share them)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        weight = inits[node.input[1]]
        k, n = weight.dims
        q, scale, minimum = quantize_block_min(numpy_helper.to_array(weight), block)
        name, x, y = weight.name, node.input[0], node.output[0]
        packed = q[..., 0::2] | (q[..., 1::2] << 4)  # MatMulNBits: two 4-bit values per byte, low first
        correction = (minimum + KERNEL_ZERO_POINT * scale).T  # (K_blocks, N)
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([numpy_helper.from_array(packed, f"{name}_Q4"),
                                        numpy_helper.from_array(scale.reshape(-1), f"{name}_scales"),
                                        numpy_helper.from_array(correction.copy(), f"{name}_block_min")])
        if x not in sums:
            indicator = f"{name}_block_indicator"
            model.graph.initializer.append(numpy_helper.from_array(_block_indicator(k, block), indicator))
            sums[x] = f"{x}/block_sums"
            nodes.append(helper.make_node("MatMul", [x, indicator], [sums[x]], name=f"{node.name}/BlockSums"))
        nodes.append(helper.make_node("MatMulNBits", [x, f"{name}_Q4", f"{name}_scales"], [f"{y}/q4"],
                                      name=f"{node.name}_Q4", domain="com.microsoft", K=k, N=n, bits=BITS,
                                      block_size=block, accuracy_level=ACCURACY_LEVEL))
        nodes.append(helper.make_node("MatMul", [sums[x], f"{name}_block_min"], [f"{y}/block_min"],
                                      name=f"{node.name}/BlockMin"))
        nodes.append(helper.make_node("Add", [f"{y}/q4", f"{y}/block_min"], [y], name=f"{node.name}/AddBlockMin"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)  # same order: each new node sits where its MatMul was
    return count


def compress(folder: Path, group_size: int) -> dict[str, Any]:
    """Rewrite ``folder``'s fp32 ``model.onnx`` in place: block-min int4 for every matmul but the LM
    head, which becomes int8 MatMulNBits. Returns what to record in the step's changes."""
    import onnx

    model = onnx.load(str(Path(folder) / "model.onnx"))
    untied = untie_transposed_weights(model)  # a tied LM head is Transpose(embedding) in the build
    head = lm_head_matmul(model.graph)
    int4 = rewrite(model, group_size, skip={head})
    model = quantize_matmuls(model, 8, {head: group_size})
    save_graph(folder, model)
    return {"weights": f"int4 weight-only (MatMulNBits), float minimum per block of {group_size} (llama.cpp's "
                       "Q4_1 scheme; block sums x minima added exactly), the LM head int8",
            "algorithm": "block_min", "group_size": group_size, "matmuls_int4": int4, "matmuls_int8": 1,
            "lm_head": lm_head_matmul(model.graph), "untied_weights": untied}
