"""Everything OpenVINO-specific: the IR from our ONNX export, NNCF int8 quantization, and a wrapper
that makes a compiled model callable like a transformers model.

This is the part of optimum-intel (``OVModelForFeatureExtraction``, ``OVQuantizer``) hfcompress
needs. optimum-intel 2.2 pins transformers < 5.6 and huggingface-hub < 1.22 and cannot be installed
beside our stack (checked), while ``openvino`` and ``nncf`` have no such pins, so this module calls
them directly; once optimum-intel supports transformers 5, only this module needs to change.

Decisions (measured on all-MiniLM-L6-v2, 1 thread, see docs/techniques/quantization.md):

- The IR is converted from the same ONNX export the ``onnxruntime`` backend uses
  (``openvino.convert_model(model.onnx)``): one exporter, one set of input names, and node names
  that keep the PyTorch module paths, so ``exclude`` patterns mean the same for both backends.
- int8 is ``nncf.quantize`` as a user calls it for a transformer (``ModelType.TRANSFORMER``:
  SmoothQuant and fast bias correction as NNCF applies them, symmetric int8 weights per channel),
  calibrated on one training sentence per sample at its natural length.
- Weights are saved uncompressed (``compress_to_fp16=False``): the fp32 IR must be the model's
  own numbers. OpenVINO's CPU plugin then picks the execution precision itself (bf16 on CPUs
  with AVX-512 BF16, such as these); nothing is pinned at load time, because what was timed and
  evaluated must be what a bare ``Core().compile_model(xml, "CPU")`` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OV_FILE = "openvino_model.xml"
"""The IR's name, as optimum-intel and sentence-transformers' OpenVINO backend expect it."""
OV_SUBFOLDER = "openvino"
"""Where sentence-transformers' OpenVINO backend looks for the IR in a sentence-transformers folder."""


def convert(onnx_path: Path) -> Any:
    """The ``openvino.Model`` of an ONNX graph."""
    import openvino as ov

    return ov.convert_model(str(onnx_path))


def _nncf_options(ignored_names: Sequence[str], smooth_quant_alpha: float | None) -> dict[str, Any]:
    """``nncf.quantize`` arguments shared by both int8 paths: the transformer preset, nodes kept in
    float, and SmoothQuant's alpha when one is given (else NNCF's default for transformers)."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    options: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER}
    if ignored_names:
        options["ignored_scope"] = nncf.IgnoredScope(names=list(ignored_names), validate=False)
    if smooth_quant_alpha is not None:
        options["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha))
    return options


def quantize_int8(model: Any, feeds: Iterable[dict[str, Any]], *, ignored_names: Sequence[str] = (),
                  smooth_quant_alpha: float | None = None) -> Any:
    """NNCF post-training int8 (weights and activations) calibrated on ``feeds``, with the
    transformer preset; ``ignored_names``: nodes kept in float."""
    import nncf

    samples = list(feeds)
    return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                         **_nncf_options(ignored_names, smooth_quant_alpha))


def pooled(output: Any) -> Any:
    """One vector per sample: mean over tokens of hidden states (single unpadded sentences), or logits."""
    import numpy as np

    array = np.asarray(output, dtype=np.float64)
    return array.mean(axis=1) if array.ndim == 3 else array


def quantize_int8_within(model: Any, feeds: list[dict[str, Any]], reference: list[Any], *, max_cosine_drop: float,
                         ignored_names: Sequence[str] = (), smooth_quant_alpha: float | None = None,
                         ) -> tuple[Any, dict[str, Any]]:
    """NNCF's accuracy-aware int8 (``quantize_with_accuracy_control``): quantize as
    :func:`quantize_int8`, then return the layers whose int8 costs most to float, ranked by NNCF,
    until the mean cosine to ``reference`` (the input model's pooled outputs on ``feeds``) is within
    ``max_cosine_drop`` of the float IR's. Returns the model and what NNCF reported."""
    import nncf
    import numpy as np

    def mean_cosine(compiled: Any, items: Iterable[tuple[dict[str, Any], Any]]) -> tuple[float, list[float]]:
        values = []
        for feed, ref in items:  # NNCF passes subsets of the validation items: each carries its reference
            got = pooled(compiled(feed)[0]).reshape(-1)
            values.append(float(got @ ref / max(1e-12, np.linalg.norm(got) * np.linalg.norm(ref))))
        return float(np.mean(values)), values

    validation = [(feed, np.asarray(ref, dtype=np.float64).reshape(-1)) for feed, ref in zip(feeds, reference, strict=True)]
    options = _nncf_options(ignored_names, smooth_quant_alpha)
    if "advanced_parameters" in options:  # this entry point names it differently
        options["advanced_quantization_parameters"] = options.pop("advanced_parameters")
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(feeds), nncf.Dataset(validation), mean_cosine, max_drop=max_cosine_drop,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(feeds), **options)
    return quantized, {"accuracy_control": {"max_cosine_drop": max_cosine_drop, "int8_weights": int8_weights(quantized)}}


def int8_weights(model: Any) -> int:
    """How many weight tensors an IR stores in int8 (the layers accuracy control returned to float are not)."""
    return sum(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
               for op in model.get_ops())


def save(model: Any, xml: Path) -> None:
    """``xml`` and its ``.bin`` beside it, weights as they are (no fp16 compression)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)


def find_ir(folder: Path) -> Path | None:
    """The IR of an output folder: ``openvino_model.xml`` or ``openvino/openvino_model.xml``."""
    for candidate in (folder / OV_FILE, folder / OV_SUBFOLDER / OV_FILE):
        if candidate.is_file():
            return candidate
    return None


def count_parameters(model: Any) -> int:
    """Logical parameter count of an IR: elements of its float and int8 constants with more than one
    element (weights; per-channel scales add well under 1%; integer shape constants are skipped)."""
    total = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        if op.get_element_type().get_type_name() not in ("f32", "f16", "bf16", "i8", "u8", "i4", "u4"):
            continue
        count = 1
        for dim in op.get_output_shape(0):
            count *= int(dim)
        if count > 1:
            total += count
    return total


def _compile(core: Any, model: Any, threads: int | None) -> Any:
    config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
    return core.compile_model(model, "CPU", config)


class OpenVinoModel:
    """An OpenVINO compiled model that is called like a transformers model.

    ``model(input_ids=..., attention_mask=...)`` (torch tensors or numpy arrays) returns a
    transformers ``ModelOutput`` with ``last_hidden_state`` or ``logits`` as torch tensors.
    ``set_num_threads(n)`` recompiles with ``INFERENCE_NUM_THREADS=n`` so speed measurements pin
    threads exactly as for PyTorch and ONNX Runtime; every other property is the runtime's default.
    """

    def __init__(self, path: str | Path, config: Any = None, task: str = "feature-extraction",
                 num_threads: int | None = None) -> None:
        import openvino as ov

        self.path = Path(path)
        self.config = config
        self.task = task
        self.num_threads = num_threads
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))
        self.compiled = _compile(self._core, self._model, num_threads)
        self.input_names = [next(iter(i.get_names())) for i in self._model.inputs]
        self.output_names = [next(iter(o.get_names())) for o in self._model.outputs]
        self.num_parameters = count_parameters(self._model)

    def set_num_threads(self, n: int) -> None:
        if n != self.num_threads:
            self.num_threads = n
            self.compiled = _compile(self._core, self._model, n)

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def eval(self) -> OpenVinoModel:
        return self

    def __call__(self, **inputs: Any) -> Any:
        import numpy as np
        import torch

        from .onnx_runtime import model_output, numpy_feed

        feed = numpy_feed(inputs, self.input_names, "OpenVINO")
        # copy: the output tensor is the compiled model's buffer, reused by the next call
        return model_output(torch.from_numpy(np.array(self.compiled(feed)[0], dtype=np.float32)), self.task)

    def __repr__(self) -> str:
        return f"OpenVinoModel({self.path}, task={self.task!r}, inputs={self.input_names}, threads={self.num_threads})"
