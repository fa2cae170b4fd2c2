"""The outputs a user pushes right after `make demo`: the packaged all-MiniLM-L6-v2 through an ONNX
Runtime int8 step and through the default recipe (reduced settings), pushed to the loopback Hub,
downloaded, and run in a bare ``onnxruntime.InferenceSession`` with no options (or a bare
``openvino`` compiled model, when the default's ``auto`` keeps OpenVINO int8) (issue: the default
recipe's output used to be refused because the recorded outputs came from a session with a
load-time fusion switched off).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hfcompress.recipe import DEFAULT_STEPS
from hfcompress.testing import hub_server as hub_testing
from hfcompress.testing.hub_server import HubServer

hub_server = hub_testing.hub_server
hub_client = hub_testing.hub_client

pytestmark = pytest.mark.integration

# Run in a fresh interpreter that has neither hfcompress nor torch: what a serving container has.
# argv: the downloaded folder, then the runtime that wrote it ("onnxruntime" or "openvino").
BARE_RUNTIME = r"""
import json, sys
from pathlib import Path
sys.modules["hfcompress"] = None   # importing it would fail: nothing below may depend on it
sys.modules["torch"] = None
import numpy as np
from tokenizers import Tokenizer

folder, runtime = Path(sys.argv[1]), sys.argv[2]
block = json.loads((folder / "results.json").read_text())["verification"]
if runtime == "openvino":
    import openvino as ov
    model_file = next(p for p in sorted(folder.rglob("*.xml")))
    compiled = ov.Core().compile_model(str(model_file), "CPU")
    inputs = [i.any_name for i in compiled.inputs]
    infer = lambda feed: compiled(feed)[0]
else:
    import onnxruntime as ort
    model_file = next(p for p in sorted(folder.rglob("*.onnx")))
    session = ort.InferenceSession(str(model_file))           # no options at all
    inputs = [i.name for i in session.get_inputs()]
    infer = lambda feed: session.run(None, feed)[0]
tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
seq = block["sequence_length"]
tokenizer.enable_truncation(seq)
tokenizer.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
enc = tokenizer.encode_batch(block["texts"])
feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
feed = {name: feed[name] for name in inputs}
hidden = infer(feed)
mask = feed["attention_mask"][..., None].astype(np.float32)
pooled = (hidden * mask).sum(1) / mask.sum(1)                  # what results.json records
diff = float(np.abs(np.round(pooled[:, :64], 6) - np.array(block["outputs"])).max())
print(json.dumps({"max_abs_diff": diff, "file": model_file.relative_to(folder).as_posix()}))
"""


def _recipe(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "builtin:all-MiniLM-L6-v2",
        "data": {"source": "vader:movie", "max_train_samples": 96, "max_eval_samples": 24},
        "steps": steps,
        "evaluate": {"max_samples": 16, "repeats": 2, "warmup": 1, "sequence_length": 32},
    }


def _reduced_default_steps() -> list[dict[str, Any]]:
    """The embedded default recipe's steps, with training and measuring cut to seconds."""
    steps = copy.deepcopy(DEFAULT_STEPS)
    for step in steps:
        (name, config), = step.items()
        if name == "distillation":
            config.update(max_steps=3, batch_size=8, sequence_length=32, checkpoint_every=0)
        if name == "quantization":
            config.update(calibration_samples=16, timing_batches=2, sequence_length=32)
    return steps


@pytest.mark.parametrize("steps", [
    pytest.param([{"quantization": {"backend": "onnxruntime", "mode": "dynamic"}}], id="onnx-int8"),
    pytest.param(_reduced_default_steps(), id="default-recipe"),
])
def test_onnx_output_pushes_downloads_and_runs_in_a_bare_session(
    hub_client: HubServer, hf_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[dict[str, Any]],
) -> None:
    from huggingface_hub import snapshot_download

    from hfcompress import compress
    from hfcompress.hub import push_to_hub

    result = compress(recipe=_recipe(steps), output_dir=tmp_path / "out")
    out = tmp_path / "out"
    assert result.compressed["latency_ms"] > 0
    steps_done = [s["technique"] for s in result.results["steps"]]
    assert steps_done == [next(iter(s)) for s in steps]
    # auto keeps the faster of ONNX Runtime and OpenVINO int8 as timed on this machine: either is a graph
    openvino = bool(list(out.rglob("openvino_model.xml")))
    assert openvino or list(out.rglob("*.onnx")), "the default recipe must end in an ONNX or OpenVINO graph here (CPU)"
    runtime = "openvino" if openvino else "onnxruntime"

    pushed = push_to_hub(out, "alice/minilm-small", token=hub_client.write_token)
    checks = {c["loader"]: c for c in pushed["verification"]["checks"]}
    assert checks["hfcompress.load"]["status"] == "ok"
    assert checks[runtime]["status"] == "ok"
    assert checks[runtime]["max_abs_diff"] <= 1e-5  # same graph, same runtime: exact

    snap = Path(snapshot_download("alice/minilm-small", cache_dir=tmp_path / "hf-cache", token=hub_client.write_token))
    run = subprocess.run([sys.executable, "-c", BARE_RUNTIME, str(snap), runtime], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["max_abs_diff"] <= 1e-5, report
    card = (snap / "README.md").read_text()
    assert "disabled_optimizers" not in card
