"""The packaged SmolLM2-135M through onnxruntime-genai int8 and int4 block-min (``auto``'s choice on
it): perplexity on held-out text stays within 1% of fp32, and the folder generates the same tokens
with onnxruntime-genai alone as with ``hfcompress.load(DIR).generate``. The packaged weights came
from a Q4_1 GGUF, which block-min represents exactly (checked below)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")

from hfcompress.artifact import save_state  # noqa: E402
from hfcompress.data import DataConfig, load_data  # noqa: E402
from hfcompress.models import load_model, resolve_model  # noqa: E402
from hfcompress.plugin import StepContext  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BARE = """
import json, sys
sys.modules["hfcompress"] = None  # the runtime alone
import numpy as np, onnxruntime_genai as og
folder, ids, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = og.Model(folder)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=len(ids) + n)
generator = og.Generator(model, params)
generator.append_tokens(np.asarray([ids], dtype=np.int32))
while not generator.is_done():
    generator.generate_next_token()
print(json.dumps([int(t) for t in generator.get_sequence(0)]))
"""


@pytest.mark.parametrize("step", [{"dtype": "int8"}, {"dtype": "int4", "algorithm": "block_min"}], ids=["int8", "block_min"])
def test_smollm2_keeps_perplexity_and_generates_with_the_runtime_alone(step: dict[str, str], hf_cache: str,
                                                                       tmp_path: Path) -> None:
    from accelerate import Accelerator
    from hfcompress_plugins.quantization import Quantization, QuantizationConfig

    import hfcompress
    from hfcompress.generation import perplexity, prompt_ids

    splits = load_data(DataConfig.model_validate("vader:movie"))
    base = load_model(resolve_model("builtin:SmolLM2-135M"), "text-generation")
    ctx = StepContext(teacher=lambda: None, train_data=splits.train, accelerator=Accelerator(cpu=True), seed=0,
                      work_dir=tmp_path / "work")
    result = Quantization().apply(base, QuantizationConfig(backend="onnxruntime-genai", **step), ctx)
    out = tmp_path / "out"
    save_state(result.state, out)
    ids = prompt_ids(base.tokenizer, list(splits.eval["text"][:32]), max_tokens=64)
    base_ppl, ppl = perplexity(base.model, ids), perplexity(hfcompress.load(out), ids)
    print(f"SmolLM2 genai {step}: perplexity {ppl:.2f} vs fp32 {base_ppl:.2f}")
    # int8 measured 191.74 vs 192.19 (-0.2%) on these 32 sentences
    assert abs(ppl / base_ppl - 1) < 0.01
    prompt = ids[0][:, :16]
    ours = hfcompress.load(out).generate(prompt, max_new_tokens=24, do_sample=False)[0].tolist()
    proc = subprocess.run([sys.executable, "-c", BARE, str(out), json.dumps(prompt[0].tolist()), "24"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ours
    assert len(ours) > 16  # new tokens were generated (at most 24: it may stop at EOS)


def test_smollm2_weights_sit_on_the_q4_1_grid_that_block_min_stores(hf_cache: str) -> None:
    """Why block-min keeps this model: every block of 32 weights of every decoder matmul is
    ``scale * q + minimum`` with q in 0..15 (the GGUF's Q4_1), so its rounding moves nothing."""
    import torch
    from hfcompress_plugins.quantization.genai_block_min import quantize_block_min

    model = load_model(resolve_model("builtin:SmolLM2-135M"), "text-generation").model
    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    assert len(layers) == 7 * model.config.num_hidden_layers
    for layer in layers[:: len(layers) // 12]:  # a spread over the depth and the kinds of matmul
        weight = layer.weight.detach().T.numpy()
        q, scale, minimum = quantize_block_min(weight, 32)
        back = (q * scale[..., None] + minimum[..., None]).reshape(weight.shape[1], -1).T
        assert abs(back - weight).max() <= 1e-6 * abs(weight).max()
