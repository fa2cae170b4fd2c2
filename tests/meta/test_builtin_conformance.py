"""The built-in techniques pass the same conformance kit third-party authors run.

Slow (real pruning, training steps, ONNX export on the tiny models); run with ``-m slow``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hfcompress.registry import get_registry
from hfcompress.testing.conformance import check_technique, make_tiny_models

pytestmark = pytest.mark.slow

CASES: list[Any] = [
    pytest.param("head-pruning", [{"ratio": 0.5, "importance": "magnitude"}, {"ratio": 0.25, "ffn_ratio": 0.5}],
                 [{"ratio": 1.0}, {"scope": "nope"}], 1e-4, id="head-pruning"),
    pytest.param("distillation", [{"max_steps": 2, "batch_size": 4, "sequence_length": 32}],
                 [{"max_steps": 0}, {"mode": "nope"}], 1e-4, id="distillation"),
    pytest.param("quantization", [{"backend": "quanto", "dtype": "int8"}, {"backend": "onnxruntime"}],
                 [{"backend": "torch", "dtype": "int4"}], 1e-4, id="quantization-int8"),
    # bf16: on Llama, model.to(bfloat16) also casts the rotary inv_freq buffer, which from_pretrained
    # recomputes in float32, so in-memory and reloaded logits differ by about one bf16 step (0.004).
    pytest.param("quantization", [{"backend": "torch", "dtype": "bf16"}], [], 1e-2, id="quantization-bf16"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.mark.parametrize(("name", "configs", "bad_configs", "atol"), CASES)
def test_builtin_technique_conforms(name: str, configs: list[dict[str, Any]], bad_configs: list[dict[str, Any]],
                                    atol: float, tmp_path: Path, tiny: dict[str, Path]) -> None:
    registered = get_registry().techniques[name]
    assert registered.plugin.distribution == "hfcompress"
    report = check_technique(registered.cls, configs=configs, bad_configs=bad_configs, tmp_path=tmp_path,
                             models=tiny, atol=atol)
    assert report.accepted(), report.summary()
    assert all(case.max_abs_diff is not None and case.max_abs_diff <= atol for case in report.accepted())
