"""Backend ``quanto`` (optimum-quanto): int8 / int4 / fp8 weights, optionally int8 / fp8 activations
calibrated on the recipe's training data; modules matching ``exclude`` patterns stay float.

Saved with quanto's own ``QuantizedTransformersModel`` subclass (``model.safetensors`` +
``quanto_qmap.json``): ``save_pretrained`` of a model quantized through transformers'
``QuantoConfig`` is not serializable. Runs under ``torch.no_grad()``, not ``inference_mode()``
(quanto's int4 kernels fail there).

    steps:
      - quantization: {backend: quanto, dtype: int4, exclude: [lm_head]}
      - quantization: {backend: quanto, dtype: int8, activations: int8}
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfcompress.plugin import BadInputError, ModelState, ModelTarget

from .backends import TECHNIQUE, step_info
from .measure import run_forward, tensor_bytes, tokenized_batches

if TYPE_CHECKING:  # pragma: no cover
    from .config import QuantizationConfig

# GPT-2-style models use transformers.pytorch_utils.Conv1D (a transposed Linear) for their
# projections; quanto only swaps nn.Linear, so it would quantize nothing and its saver refuses.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
QUANTO_TYPES: dict[str, str] = {"int8": "qint8", "int4": "qint4", "fp8": "qfloat8"}


def check(config: QuantizationConfig, target: ModelTarget, where: str) -> None:
    if target.model_type in CONV1D_MODEL_TYPES:
        raise BadInputError(
            f"{where}: {target.architecture} ({target.model_type}) keeps its projections in transformers' "
            "Conv1D layers, which optimum-quanto does not quantize (its reload then refuses the model). Use "
            "backend onnxruntime (int8) or torch (bf16) for this model, or backend auto."
        )


def data_needed(config: QuantizationConfig) -> tuple[str, str] | None:
    if config.activations == "none":
        return None
    return (f"activations {config.activations} are calibrated on data",
            "add a `data:` section to the recipe, or set activations: none")


def skip_reason(name: str, device: Any, state: ModelState) -> str | None:
    if getattr(state.config, "model_type", None) in CONV1D_MODEL_TYPES:
        return "optimum-quanto does not quantize transformers' Conv1D layers (GPT-2 style models)"
    return None


def build(state: ModelState, config: QuantizationConfig, texts: list[str], work_dir: Path,
          copy_model: bool) -> tuple[ModelState, dict[str, Any]]:
    import torch
    from optimum import quanto
    from optimum.quanto import Calibration, freeze, quantize

    model = copy.deepcopy(state.model) if copy_model else state.model
    weights = getattr(quanto, QUANTO_TYPES[config.resolved_dtype()])
    activations = getattr(quanto, QUANTO_TYPES[config.activations]) if config.activations != "none" else None
    quantize(model, weights=weights, activations=activations, exclude=config.exclude or None)
    calibrated = 0
    if activations is not None:
        # Activation ranges come from real batches; no_grad (not inference_mode: qint4 fails there).
        probe = ModelState(model, state.tokenizer, state.task)
        with torch.no_grad(), Calibration(momentum=0.9):
            for batch in tokenized_batches(probe, texts, config):
                run_forward(probe, batch)
                calibrated += int(batch["input_ids"].shape[0])
    freeze(model)
    config_obj = getattr(model, "config", None)
    details = {
        "backend": "quanto", "weights": config.resolved_dtype(), "activations": config.activations,
        "exclude": list(config.exclude), "calibration_texts": calibrated,
        "quantized_modules": _count_quantized(model), "size_bytes": tensor_bytes(model),
        "trust_remote_code": bool(getattr(config_obj, "auto_map", None)),
    }
    return ModelState(model, state.tokenizer, state.task, format="quanto", saver=save,
                      loader=TECHNIQUE, info=step_info(state, details)), details


def _count_quantized(model: Any) -> int:
    from optimum.quanto.nn import QModuleMixin

    return sum(1 for m in model.modules() if isinstance(m, QModuleMixin))


# -- saving and loading -------------------------------------------------------------------------
_WRAPPERS: dict[str, Any] = {}


def _quanto_wrapper(task: str) -> Any:
    """quanto's QuantizedTransformersModel subclass whose ``auto_class`` matches the task."""
    if task not in _WRAPPERS:
        import transformers
        from optimum.quanto import QuantizedTransformersModel

        auto = {"feature-extraction": transformers.AutoModel,
                "text-classification": transformers.AutoModelForSequenceClassification,
                "text-generation": transformers.AutoModelForCausalLM}[task]
        _WRAPPERS[task] = type(f"Quantized{auto.__name__}", (QuantizedTransformersModel,), {"auto_class": auto})
    return _WRAPPERS[task]


def save(state: ModelState, path: Path) -> None:
    readme = path / "README.md"
    had_readme = readme.exists()
    _quanto_wrapper(state.task)(state.model).save_pretrained(str(path))
    # ModelHubMixin writes a generic model card; the evaluation card is the pipeline's.
    if not had_readme and readme.exists():
        readme.unlink()


def _pruned_quanto_wrapper(path: Path) -> Any:
    """For a folder holding a head-pruned model, a quanto wrapper that rebuilds it with the
    head-pruning plugin's own class (no remote code runs); None for any other folder.

    quanto rebuilds the empty model as ``auto_class.from_config(AutoConfig.from_pretrained(path))``.
    A pruned folder's config.json names the stock family as its model_type (so that tokenizers and
    config readers need no remote code, see modeling_hfcompress_pruned), so AutoConfig returns the
    stock config, from which an Auto class would build full-size layers. Here ``from_config`` builds
    the class that ``architectures`` names, from its own config class.
    """
    data = json.loads((path / "config.json").read_text())
    if "pruned_layout" not in data and not str(data.get("model_type", "")).startswith("hfcompress-pruned-"):
        return None
    from hfcompress_plugins.modeling import modeling_hfcompress_pruned as pruned_code
    from optimum.quanto import QuantizedTransformersModel

    pruned_code.register_auto_classes()  # folders written before the stock model_type name their own
    arch = str((data.get("architectures") or [""])[0])
    model_cls = getattr(pruned_code, arch, None)
    if model_cls is None:
        raise BadInputError(f"{path}: config.json names architecture {arch!r}, which the head-pruning plugin's "
                            "modeling code does not define")
    pruned_cls: Any = model_cls
    config = pruned_cls.config_class.from_pretrained(str(path))

    class OwnClass:
        @staticmethod
        def from_config(stock_config: Any) -> Any:
            return pruned_cls._from_config(config)

    return type(f"Quantized{arch}", (QuantizedTransformersModel,), {"auto_class": OwnClass})


def load(path: Path, task: str, tokenizer: Any, info: dict[str, Any]) -> ModelState:
    qinfo = info.get("quantization", {})
    wrapper_cls = _pruned_quanto_wrapper(path)  # our own pruned-model classes: no remote code runs
    kwargs = {}
    if wrapper_cls is None:
        wrapper_cls = _quanto_wrapper(task)
        if qinfo.get("trust_remote_code"):
            kwargs["trust_remote_code"] = True
    model = wrapper_cls.from_pretrained(str(path), **kwargs)._wrapped
    return ModelState(model, tokenizer, task, format="quanto", saver=save, loader=TECHNIQUE, info=info)
