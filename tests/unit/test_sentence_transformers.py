"""A sentence-transformers model stays one through compression (hfcompress/sentence_pipeline.py).

On a tiny random BERT laid out as a sentence-transformers folder (modules.json, 1_Pooling/,
mean pooling + Normalize), through the whole pipeline (step cache included): the output keeps the
pipeline files, ``SentenceTransformer(DIR)`` loads it the way the base loads (``trust_remote_code``
for head-pruned outputs, ``backend="onnx"`` and ``onnx/model.onnx`` for ONNX outputs), its
``encode`` equals the base pipeline applied to ``hfcompress.load(DIR)``, and the push verification
checks it (and fails when the pipeline is lost).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hfcompress import compress
from hfcompress.artifact import load_state
from hfcompress.registry import extra_plugins
from hfcompress.sentence_pipeline import embed, loader_kwargs
from hfcompress.testing import hub_server as hub_testing
from hfcompress.testing import techniques
from hfcompress.testing.models import make_tiny_bert, make_tiny_sentence_transformer
from hfcompress.testing.samples import write_jsonl

sentence_transformers = pytest.importorskip("sentence_transformers")

PIPELINE_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                  "config_sentence_transformers.json")
hub_server = hub_testing.hub_server
hub_client = hub_testing.hub_client
TEXTS = ["a wonderful, moving film", "the plot is dull and the acting is worse",
         "I laughed all the way through, and then I laughed some more on the way home"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One compress() run per kind of output, sharing a step cache (evaluated with fidelity only)."""
    root = tmp_path_factory.mktemp("st")
    saved = os.environ.get("HFCOMPRESS_CACHE")
    os.environ["HFCOMPRESS_CACHE"] = str(root / "cache")
    base = make_tiny_sentence_transformer(root / "base")
    data = write_jsonl(root / "data.jsonl")
    recipes = {
        "pytorch": [{"scale": {"factor": 1.0, "tag": "same"}}],
        "pruned": [{"head-pruning": {"ratio": 0.25, "importance": "magnitude"}}],
        # the first error: a pruned model's ONNX folder named a model type transformers
        # does not know, and SentenceTransformer(..., backend="onnx") reads config.json first
        "onnx": [{"head-pruning": {"ratio": 0.25, "importance": "magnitude"}},
                 {"quantization": {"backend": "onnxruntime", "graph_optimization": "none"}}],
        "openvino": [{"head-pruning": {"ratio": 0.25, "importance": "magnitude"}},
                     {"quantization": {"backend": "openvino"}}],
    }
    out = {"base": base}
    try:
        with extra_plugins(techniques):
            for name, steps in recipes.items():
                recipe = {"model": str(base), "data": str(data), "steps": steps,
                          "evaluate": {"max_samples": 8, "repeats": 1, "warmup": 1, "sequence_length": 16,
                                       "evaluators": ["fidelity"]}}
                out[name] = compress(recipe=recipe, output_dir=root / name).output_dir  # type: ignore[assignment]
            # the same recipe again: every step comes from the step cache, the pipeline files must not get lost
            techniques.CALLS.clear()
            again = {**recipe, "steps": recipes["pytorch"]}
            out["cached"] = compress(recipe=again, output_dir=root / "cached").output_dir  # type: ignore[assignment]
            assert techniques.CALLS == [], "the second run should reuse the cached step"
        yield out
    finally:
        if saved is None:
            os.environ.pop("HFCOMPRESS_CACHE", None)
        else:
            os.environ["HFCOMPRESS_CACHE"] = saved


def _encode(folder: Path, **kwargs: Any) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", **kwargs)
    return torch.from_numpy(model.encode(TEXTS))


def _base_pipeline_on(folder: Path, base: Path) -> torch.Tensor:
    """The base model's pipeline (its modules.json: mean pooling, normalize) on hfcompress.load(folder)."""
    with torch.no_grad():
        return embed(load_state(folder), TEXTS, base)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [round(float(c), 6) for c in torch.nn.functional.cosine_similarity(a, b, dim=-1)]


@pytest.mark.parametrize("kind", ["pytorch", "cached", "pruned", "onnx", "openvino"])
def test_output_keeps_the_pipeline_files(built: dict[str, Path], kind: str) -> None:
    for name in PIPELINE_FILES:
        assert (built[kind] / name).read_bytes() == (built["base"] / name).read_bytes(), name
    recorded = json.loads((built[kind] / "results.json").read_text())["verification"]
    assert len(recorded["sentence_embeddings"]) == len(recorded["texts"])


@pytest.mark.parametrize("kind", ["pytorch", "cached"])
def test_plain_pytorch_output_is_a_sentence_transformer(built: dict[str, Path], kind: str) -> None:
    assert loader_kwargs(built[kind]) == {}
    got = _encode(built[kind])
    cosines = _cosines(got, _base_pipeline_on(built[kind], built["base"]))
    print(f"{kind}: SentenceTransformer(DIR).encode vs base pipeline on hfcompress.load(DIR): {cosines}")
    assert min(cosines) >= 0.9999
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    # scale 1.0 changes nothing: the output is the base model, pipeline and all
    torch.testing.assert_close(got, _encode(built["base"]), atol=1e-5, rtol=0)


def test_head_pruned_output_loads_with_trust_remote_code(built: dict[str, Path]) -> None:
    folder = built["pruned"]
    assert loader_kwargs(folder) == {"trust_remote_code": True}
    got = _encode(folder, trust_remote_code=True)
    cosines = _cosines(got, _base_pipeline_on(folder, built["base"]))
    print(f"pruned: SentenceTransformer(DIR, trust_remote_code=True).encode vs base pipeline: {cosines}")
    assert min(cosines) >= 0.9999
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    # without it transformers builds the stock architecture and refuses the pruned weights, loudly
    with pytest.raises(RuntimeError, match="mismatch"):
        _encode(folder)


def test_onnx_output_has_the_sentence_transformers_onnx_layout(built: dict[str, Path]) -> None:
    from sentence_transformers.backend.utils import backend_should_export
    from transformers import AutoConfig

    folder = built["onnx"]
    assert (folder / "onnx" / "model.onnx").is_file() and not (folder / "model.onnx").exists()
    assert loader_kwargs(folder) == {"backend": "onnx"}
    # what SentenceTransformer(DIR, backend="onnx") does before loading: read the config with no
    # remote code (the folder ships none), then look for the graph; it finds it and does not re-export
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and "auto_map" not in json.loads((folder / "config.json").read_text())
    export, kwargs = backend_should_export(folder, True, {}, "model.onnx", "*.onnx", "ONNX")
    assert (export, kwargs) == (False, {"subfolder": "onnx", "file_name": "model.onnx"})
    # every reader of the folder finds the graph there
    from hfcompress_plugins.eval_size import _onnx_parameters, folder_bytes

    assert folder_bytes(folder)[1] == (folder / "onnx" / "model.onnx").stat().st_size
    assert _onnx_parameters(folder) > 0
    from hfcompress.hub.files import output_folder_files

    assert "onnx/model.onnx" in output_folder_files(folder)
    cosines = _cosines(_base_pipeline_on(folder, built["base"]), _base_pipeline_on(built["pruned"], built["base"]))
    assert min(cosines) >= 0.98  # int8 of the pruned model, through the same pipeline


@pytest.mark.skipif(importlib.util.find_spec("optimum.onnxruntime") is None,
                    reason="sentence-transformers' ONNX backend needs optimum-onnx (optimum.onnxruntime), which "
                           "cannot be installed beside transformers 5 (optimum-onnx 0.1.0 pins transformers<4.58)")
def test_onnx_output_encodes_with_the_onnx_backend(built: dict[str, Path]) -> None:
    got = _encode(built["onnx"], backend="onnx")
    assert min(_cosines(got, _base_pipeline_on(built["onnx"], built["base"]))) >= 0.9999


def test_openvino_output_has_the_sentence_transformers_openvino_layout(built: dict[str, Path]) -> None:
    import openvino as ov
    from sentence_transformers.backend.utils import backend_should_export
    from transformers import AutoTokenizer

    folder = built["openvino"]
    xml = folder / "openvino" / "openvino_model.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and not (folder / "openvino_model.xml").exists()
    assert loader_kwargs(folder) == {"backend": "openvino"}
    # what SentenceTransformer(DIR, backend="openvino") checks before loading: the IR is found, no re-export
    export, kwargs = backend_should_export(folder, True, {}, "openvino_model.xml", "openvino*.xml", "OpenVINO")
    assert (export, kwargs) == (False, {"subfolder": "openvino", "file_name": "openvino_model.xml"})
    from hfcompress.hub.files import output_folder_files

    assert {"openvino/openvino_model.xml", "openvino/openvino_model.bin"} <= set(output_folder_files(folder))
    # a bare compile_model plus the base pipeline gives what the folder's pipeline gives through hfcompress
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="np")
    compiled = ov.Core().compile_model(str(xml), "CPU")
    hidden = torch.from_numpy(compiled({k: v for k, v in enc.items() if k in {i.any_name for i in compiled.inputs}})[0])
    mask = torch.from_numpy(enc["attention_mask"]).unsqueeze(-1).float()
    bare = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert min(_cosines(bare, _base_pipeline_on(folder, built["base"]))) >= 0.99999
    card = (folder / "README.md").read_text().split("## How to use", 1)[1]
    assert f'SentenceTransformer("./{folder.name}", backend="openvino")' in card
    assert 'ov.Core().compile_model(f"{folder}/openvino/openvino_model.xml", "CPU")' in card


def test_card_shows_the_sentence_transformers_call_first(built: dict[str, Path]) -> None:
    def usage(kind: str) -> str:
        card = (built[kind] / "README.md").read_text()
        return card.split("## How to use", 1)[1].split("## How to reproduce", 1)[0]

    pruned = usage("pruned")
    first_code = pruned.split("```python", 1)[1].split("```", 1)[0]
    assert f'SentenceTransformer("./{built["pruned"].name}", trust_remote_code=True)' in first_code
    assert "`trust_remote_code=True` is required" in pruned
    # the tokenizer has no custom code: no trust_remote_code on its line, the model keeps it
    assert f'AutoTokenizer.from_pretrained("./{built["pruned"].name}")' in pruned
    assert f'AutoModel.from_pretrained("./{built["pruned"].name}", trust_remote_code=True)' in pruned
    onnx = usage("onnx")
    assert f'SentenceTransformer("./{built["onnx"].name}", backend="onnx")' in onnx.split("```python", 1)[1]
    assert f'"./{built["onnx"].name}/onnx/model.onnx"' in onnx
    assert usage("pytorch").split("```python", 1)[1].startswith("\nfrom sentence_transformers import")


@pytest.mark.parametrize("kind", ["pruned", "onnx", "openvino"])
def test_push_verification_checks_sentence_transformers(built: dict[str, Path], kind: str) -> None:
    from hfcompress.hub.verify import verify_main

    checks = {c["loader"]: c for c in verify_main(built[kind])["checks"]}
    assert checks["hfcompress.load"]["status"] == "ok"
    if kind == "openvino":  # the IR through a bare openvino session reproduces the recorded outputs
        assert checks["openvino"]["status"] == "ok" and checks["openvino"]["max_abs_diff"] <= 1e-5, checks
    st = checks["sentence-transformers"]
    needs = {"onnx": "optimum.onnxruntime", "openvino": "optimum.intel"}.get(kind)  # what that backend imports
    if needs and importlib.util.find_spec(needs) is None:
        assert st["status"] == "skipped" and "optimum" in st["reason"]
    else:
        assert st["status"] == "ok" and st["max_abs_diff"] <= 1e-5, st


@pytest.mark.parametrize("damage", ["no modules.json", "no Normalize"])
def test_push_verification_fails_when_the_pipeline_is_lost(built: dict[str, Path], tmp_path: Path,
                                                           damage: str) -> None:
    from hfcompress.hub.verify import verify_main

    folder = tmp_path / "damaged"
    shutil.copytree(built["pruned"], folder)
    if damage == "no modules.json":
        for name in PIPELINE_FILES:
            (folder / name).unlink(missing_ok=True)
    else:
        modules = json.loads((folder / "modules.json").read_text())
        (folder / "modules.json").write_text(json.dumps([m for m in modules if "Normalize" not in m["type"]]))
    checks = {c["loader"]: c for c in verify_main(folder)["checks"]}
    assert checks["hfcompress.load"]["status"] == "ok"  # the weights are fine; the pipeline is not
    assert checks["sentence-transformers"]["status"] == "failed"
    assert "base model's pipeline" in checks["sentence-transformers"]["error"]


def test_a_hub_model_brings_only_its_pipeline_files(hub_client: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' from_pretrained downloads none of the pipeline files; the pipeline fetches them
    (and only them) for a Hub model, and a plain transformers repo has none."""
    from huggingface_hub import HfApi, constants

    from hfcompress.models import ModelSource
    from hfcompress.sentence_pipeline import pipeline_folder

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    api = HfApi(token=hub_client.write_token)
    for repo, folder in (("alice/tiny-st", make_tiny_sentence_transformer(tmp_path / "st")),
                         ("alice/tiny-plain", make_tiny_bert(tmp_path / "plain"))):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=folder, commit_message="add")
    found = pipeline_folder(ModelSource("alice/tiny-st", "alice/tiny-st"))
    assert found is not None
    assert sorted(p.relative_to(found).as_posix() for p in found.rglob("*") if p.is_file()) == sorted(PIPELINE_FILES)
    assert pipeline_folder(ModelSource("alice/tiny-plain", "alice/tiny-plain")) is None
