"""Rewrites of an onnxruntime-genai build's fp32 graph: int8 weights with the LM head on its own
block size (ONNX Runtime's ``MatMulNBitsQuantizer``, one pass per block size), and the graph
helpers that ``genai_calibrated`` shares (untying the LM head, quantizing named matmuls, saving).

Why: on CPU, MatMulNBits with ``accuracy_level`` 4 quantizes the *activations* to int8 with the
weights' block size too, so larger blocks are faster but round the activations more coarsely.
Measured on SmolLM2-135M, 1 thread, decode at batch 1 (docs/techniques/quantization.md): every
matmul at 32 weights per scale 79 tokens/s at -0.03% perplexity; every matmul at 128: 108 at
+0.55% with greedy agreement 0.18 instead of 0.47; only the LM head (the largest single matmul,
hidden x vocabulary) at 128: 93 at +0.16%. The builder has one ``block_size`` for the whole
graph, hence this rewrite; symmetric round-to-nearest at one block size reproduces the builder's
own int8 exactly (same perplexity and greedy tokens, measured).

Example recipe step::

    steps:
      - quantization: {backend: onnxruntime-genai, dtype: int8, lm_head_group_size: 128}
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# MatMulNBits computing with int8 activations (VNNI), the builder's CPU default for int4 and int8.
ACCURACY_LEVEL = 4
LOGITS = "logits"


def untie_transposed_weights(model: Any) -> int:
    """Replace ``Transpose(initializer)`` by a transposed initializer; returns how many.

    The builder reads a tied LM head as a Transpose of the embedding table; NNCF compresses only
    matmuls whose weight is a constant and stops on that one ("There is no tensor with the name
    /model/embed_tokens/Transpose/output_0")."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    count = 0
    for node in list(model.graph.node):
        if node.op_type == "Transpose" and node.input[0] in inits and not node.attribute:
            weight = numpy_helper.to_array(inits[node.input[0]]).T.copy()
            model.graph.initializer.append(numpy_helper.from_array(weight, node.output[0]))
            model.graph.node.remove(node)
            count += 1
    return count


def lm_head_matmul(graph: Any) -> str:
    """Name of the MatMul (or MatMulNBits, once quantized) that computes the logits, followed back from
    the ``logits`` output through element-wise ops such as Gemma-2's soft-capping."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(LOGITS)
    for _ in range(8):
        if node is None:
            break
        if node.op_type in ("MatMul", "MatMulNBits"):
            return str(node.name)
        node = producers.get(node.input[0])
    raise ValueError(f"no MatMul computes the graph's {LOGITS!r} output; this is not a model builder graph")


def constant_matmuls(model: Any) -> list[str]:
    """Names of the MatMuls whose weight is an initializer: those a weight-only quantizer rounds."""
    constants = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def quantize_matmuls(model: Any, bits: int, block_sizes: dict[str, int]) -> Any:
    """The model with each named MatMul (its weight a constant) a MatMulNBits of its block size."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    for block in sorted(set(block_sizes.values())):
        chosen = {name for name, size in block_sizes.items() if size == block}
        # nodes_to_exclude, not nodes_to_include: onnxruntime 1.32 quantized every MatMul when
        # given an include list (checked on the SmolLM2 graph).
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=[n for n in names if n not in chosen],
                                         algo_config=DefaultWeightOnlyQuantConfig(
                                             block_size=block, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                             bits=bits))
        quantizer.process()
        model = quantizer.model.model
    return model


def save_graph(folder: Path, model: Any) -> None:
    """Replace ``folder``'s model.onnx (+ .data) by ``model``; written beside the old files first, so
    a failure leaves the folder as it was."""
    import onnx

    tmp = Path(folder) / "rewrite.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    onnx.save(model, str(tmp / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    for name in ("model.onnx", "model.onnx.data"):
        (tmp / name).replace(Path(folder) / name)
    tmp.rmdir()


def requantize(folder: Path, group_size: int, lm_head_group_size: int) -> dict[str, Any]:
    """Rewrite the fp32 build in ``folder`` as int8 MatMulNBits, the LM head at ``lm_head_group_size``
    weights per scale and every other matmul at ``group_size``. Returns what to record."""
    import onnx

    model = onnx.load(str(Path(folder) / "model.onnx"))
    untied = untie_transposed_weights(model)  # a tied LM head is Transpose(embedding) in the build
    matmuls = constant_matmuls(model)
    head = lm_head_matmul(model.graph)
    model = quantize_matmuls(model, 8, {name: lm_head_group_size if name == head else group_size for name in matmuls})
    save_graph(folder, model)
    head = lm_head_matmul(model.graph)  # the quantizer renames the nodes it replaces
    return {"weights": f"int8 weight-only (MatMulNBits), {group_size} weights per scale, the LM head "
                       f"{lm_head_group_size}", "group_size": group_size, "lm_head_group_size": lm_head_group_size,
            "lm_head": head, "matmuls_int8": len(matmuls), "untied_weights": untied}
