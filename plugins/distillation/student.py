"""Building the student: the pipeline model, a layer subset of the teacher, another model, or a
randomly initialised variant of the teacher's config."""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import BadInputError, ModelState

from .config import DistillationConfig, num_layers

__all__ = ["build_student", "load_model_state", "student_from_layers"]


def _layer_list(model: Any) -> Any:
    """The ModuleList of transformer blocks (BERT ``encoder.layer``, Llama ``model.layers``...)."""
    from torch import nn

    n = num_layers(model.config)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise BadInputError(
        f"distillation student.layers: could not find the {n} transformer blocks of {type(model).__name__}; "
        "supported: models whose blocks are one nn.ModuleList (BERT, Llama, ...). Use student.model instead."
    )


def student_from_layers(teacher: Any, layers: list[int]) -> Any:
    """A deep copy of ``teacher`` keeping ``layers`` (in order); config and layer indices renumbered."""
    import copy

    from torch import nn

    n = num_layers(teacher.config)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise BadInputError(
            f"distillation student.layers: {bad} out of range for {type(teacher).__name__} with {n} layers; use 0..{n - 1}"
        )
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)  # the teacher may have been frozen already; the copy must train
    blocks = _layer_list(student)
    kept = nn.ModuleList([blocks[i] for i in layers])
    # Replace the ModuleList in its parent, whatever attribute name the architecture uses.
    for name, module in student.named_modules():
        if module is blocks:
            parent_name, _, attr = name.rpartition(".")
            setattr(student.get_submodule(parent_name) if parent_name else student, attr, kept)
            break
    for new_index, block in enumerate(kept):
        for sub in block.modules():  # decoders key their KV cache by layer_idx
            if isinstance(getattr(sub, "layer_idx", None), int):
                setattr(sub, "layer_idx", new_index)  # noqa: B010 (typed as Tensor | Module by torch)
    student.config.num_hidden_layers = len(layers)
    layer_types = getattr(student.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        student.config.layer_types = [layer_types[i] for i in layers]
    return student


def load_model_state(name: str, task: str) -> ModelState:
    """A model id, folder or ``builtin:`` alias loaded for ``task`` (a named teacher or student)."""
    from hfcompress.plugin import load_model, resolve_model

    return load_model(resolve_model(name), task)


def build_student(state: ModelState, config: DistillationConfig, teacher: ModelState) -> tuple[ModelState, dict[str, Any]]:
    """The student's state and what ``changes["student"]`` records about where it came from."""
    spec = config.student
    if spec is None:
        return state, {"source": "pipeline"}
    if spec.layers is not None:
        model = student_from_layers(teacher.model, spec.layers)
        return ModelState(model=model, tokenizer=teacher.tokenizer, task=teacher.task), {
            "source": "layers", "layers": list(spec.layers)
        }
    if spec.model is not None:
        student = load_model_state(spec.model, teacher.task)
        return student, {"source": "model", "model": spec.model}
    import copy

    import transformers

    from hfcompress.plugin import AUTO_CLASSES

    cfg = copy.deepcopy(teacher.model.config)
    for key, value in (spec.config or {}).items():
        setattr(cfg, key, value)
    model = getattr(transformers, AUTO_CLASSES[teacher.task]).from_config(cfg)
    return ModelState(model=model, tokenizer=teacher.tokenizer, task=teacher.task), {
        "source": "config", "config": dict(spec.config or {})
    }
