"""Calibrated int4 weights for an onnxruntime-genai folder: NNCF's data-aware weight compression
(AWQ + scale estimation, and a mixed int4/int8 split by measured sensitivity) on the builder's
fp32 graph, then ONNX Runtime's own int8 MatMulNBits for every matmul NNCF left in float.

Why this route: the builder's int4 is round-to-nearest or k-quant with a fixed sensitive-layer
list, and on SmolLM2-135M both lose 10-38% perplexity. NNCF (``nncf.compress_weights`` on an ONNX
model) measures each matmul's inputs on the recipe's texts and writes blocked int4 weights that
ONNX Runtime runs with the builder's own int4 kernel (MatMulNBits), so the folder still runs with
onnxruntime-genai alone.
NNCF's int8 "backup" precision for the layers it keeps out of int4 is per-channel
DequantizeLinear + MatMul, which ONNX Runtime runs in fp32 (measured 12 tokens/s): those layers are
left in float by NNCF (``BackupMode.NONE``) and made int8 MatMulNBits by
``onnxruntime.quantization.MatMulNBitsQuantizer`` instead.

Example recipe step::

    steps:
      - quantization: {backend: onnxruntime-genai, dtype: int4, algorithm: awq, int4_ratio: 0.3}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .genai_blocks import constant_matmuls, quantize_matmuls, save_graph, untie_transposed_weights


def compress(folder: Path, feeds: list[dict[str, Any]], group_size: int, int4_ratio: float) -> dict[str, Any]:
    """Rewrite ``folder``'s fp32 ``model.onnx`` in place with calibrated int4 (+ int8) weights.

    ``feeds``: ONNX Runtime inputs of the fp32 graph (one calibration text each, empty KV cache).
    Returns what to record in the step's changes."""
    import nncf
    import onnx

    onnx_file = Path(folder) / "model.onnx"
    model = onnx.load(str(onnx_file))
    untied = untie_transposed_weights(model)
    model = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size, ratio=int4_ratio,
        dataset=nncf.Dataset(feeds), subset_size=len(feeds), awq=True, scale_estimation=True,
        sensitivity_metric=nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION if int4_ratio < 1 else None,
        # the LM head is a matmul like the others (it is ranked, not forced to int8); the
        # embedding Gather stays float: one row per token is read, it costs no decode time
        all_layers=True, backup_mode=nncf.BackupMode.NONE, ignored_scope=nncf.IgnoredScope(types=["Gather"]),
    )
    # The builder writes opset 22, where NNCF expresses int4 as blocked DequantizeLinear (uint4) +
    # MatMul; ONNX Runtime fuses that pair into MatMulNBits when a session loads the graph (its
    # DQMatMulToMatMulNBits rule, int8 activations: accuracy level 4 by default), so a bare session
    # and onnxruntime-genai run the same kernel as the builder's own int4.
    int4 = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    model = quantize_matmuls(model, 8, dict.fromkeys(constant_matmuls(model), group_size))
    int8 = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    save_graph(folder, model)
    return {"weights": "int4 weight-only (MatMulNBits), calibrated: NNCF AWQ + scale estimation",
            "nncf": nncf.__version__, "int4_ratio": int4_ratio, "group_size": group_size,
            "calibration_texts": len(feeds), "matmuls_int4": int4, "matmuls_int8": int8,
            "untied_weights": untied}
