"""Small but real techniques for testing the pipeline itself (ordering, caching, formats).

``scale`` multiplies every floating-point parameter by ``factor`` (outputs change measurably);
``to-frozen`` marks the model as being in a non-PyTorch format, so that format-ordering rules
can be tested without ONNX. Both record the order they ran in ``state.info["applied"]``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from hfcompress.plugin import ModelState, StepContext, StepResult, Technique, TechniqueConfig, hookimpl

CALLS: list[str] = []
"""Every ``apply`` call in this process, in order: tests read it to see what was (re)computed."""


class ScaleConfig(TechniqueConfig):
    factor: float = Field(1.0, gt=0)
    tag: str = ""


class Scale(Technique[ScaleConfig]):
    name = "scale"
    summary = "multiply all floating-point weights by a factor (for tests)"
    Config = ScaleConfig

    def apply(self, state: ModelState, config: ScaleConfig, ctx: StepContext) -> StepResult:
        import torch

        CALLS.append(config.tag or f"scale:{config.factor}")
        with torch.no_grad():
            for p in state.model.parameters():
                if p.is_floating_point():
                    p.mul_(config.factor)
        state.info = {**state.info, "applied": [*state.info.get("applied", []), config.tag]}
        return StepResult(state, {"factor": config.factor})


class Frozen(Technique[TechniqueConfig]):
    name = "to-frozen"
    summary = "declare the output a non-PyTorch format (for format-ordering tests)"
    output_format_name: ClassVar[str] = "frozen"

    def output_format(self, config: Any) -> str:
        return self.output_format_name

    def apply(self, state: ModelState, config: Any, ctx: StepContext) -> StepResult:
        CALLS.append("to-frozen")
        return StepResult(state, {})


@hookimpl
def hfcompress_register_techniques(register: Any) -> None:
    register(Scale)
    register(Frozen)
