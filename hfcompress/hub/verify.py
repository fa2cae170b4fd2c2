"""Verification: a folder must reproduce, in a fresh process, the outputs recorded when it was written.

:func:`record_verification` writes ``results.json["verification"]`` at compression time: outputs on
a few texts, the weight files' sha256, the runtime versions and the tolerances the format
guarantees. :func:`verify_folder` reloads the folder in a fresh, offline subprocess
(``python -m hfcompress.hub --verify DIR``, which runs :func:`verify_main`) with ``hfcompress.load``
and with the plain loaders a user would run (transformers, ONNX Runtime, sentence-transformers),
and fails with :class:`~hfcompress.errors.GateFailedError` when any of them differs by more than
the tolerance.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BadInputError, GateFailedError
from ..model_io import MODEL_INPUTS
from .files import weight_hashes

__all__ = ["record_verification", "runtime_versions", "tolerance_for", "verification_block", "verify_folder"]

log = logging.getLogger("hfcompress.hub")

VERIFY_MARK = "HFCOMPRESS_VERIFY_RESULT "
# The libraries whose kernels compute a folder's outputs: a version change can move them.
RUNTIMES = ("torch", "transformers", "onnxruntime", "onnxruntime-genai", "openvino", "optimum-quanto")


def verification_block(folder: Path) -> dict[str, Any]:
    """``results.json["verification"]``, checked for shape; :class:`BadInputError` if unusable."""
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"push: {folder / 'results.json'} is not valid JSON ({exc}); re-run the compression") from None
    block = results.get("verification") if isinstance(results, dict) else None
    problem = None
    if not isinstance(block, dict):
        problem = "has no 'verification' block"
    elif not (isinstance(block.get("texts"), list) and block["texts"] and all(isinstance(t, str) for t in block["texts"])):
        problem = "verification.texts must be a non-empty list of strings"
    elif not (isinstance(block.get("sequence_length"), int) and block["sequence_length"] > 0):
        problem = "verification.sequence_length must be a positive integer"
    elif not (isinstance(block.get("outputs"), list) and len(block["outputs"]) == len(block["texts"])):
        problem = "verification.outputs must hold one row per text"
    elif not (isinstance(block.get("atol"), (int, float)) and block["atol"] >= 0):
        problem = "verification.atol must be a non-negative number"
    if problem:
        raise BadInputError(
            f"push: {folder / 'results.json'} {problem}, so the outputs recorded at compression time cannot be "
            "checked before upload. Re-run `hfcompress run` (or compress()) to regenerate the folder."
        )
    assert isinstance(block, dict)
    return block



def verify_folder(folder: str | Path, timeout: float | None = None) -> dict[str, Any]:
    """Reload ``folder`` in a fresh, offline subprocess and compare with ``results.json["verification"]``.

    Returns ``{"checks": [...], "atol": ...}``; raises :class:`GateFailedError` when the folder
    does not load or any loader's outputs differ by more than ``atol``.
    """
    folder = Path(folder)
    block = verification_block(folder)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE")}
    # Offline: a folder that needs the network (remote code, missing files) must fail here, not
    # for the user; and without the token, nothing the subprocess prints can leak it.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
               HF_TOKEN_PATH=str(folder / ".no-token-here"), TOKENIZERS_PARALLELISM="false")
    limit = timeout or float(os.environ.get("HFCOMPRESS_VERIFY_TIMEOUT", "1800"))
    log.info("verifying %s in a fresh process (hfcompress.load and plain loaders)", folder)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hfcompress.hub", "--verify", str(folder)],
            env=env, capture_output=True, text=True, timeout=limit, check=False,
        )
    except subprocess.TimeoutExpired:
        raise GateFailedError(f"push refused: verifying {folder} took over {limit:.0f} s; nothing was uploaded",
                              ["verification timed out"]) from None
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(VERIFY_MARK)), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise GateFailedError(
            f"push refused: {folder} does not load in a fresh process, so it would be broken on the Hub. "
            f"Nothing was uploaded. Last lines:\n{tail}", ["folder does not load"],
        )
    report: dict[str, Any] = json.loads(line[len(VERIFY_MARK) :])
    failures = [
        f"{c['loader']}: max |difference| {c['max_abs_diff']:.3g} > atol {report['atol']:g}"
        if c.get("max_abs_diff") is not None else f"{c['loader']}: {c.get('error')}"
        for c in report["checks"] if c["status"] == "failed"
    ]
    if failures:
        raise GateFailedError(
            f"push refused: {folder} does not reproduce the outputs recorded in results.json "
            f"({len(block['texts'])} texts, sequence length {block['sequence_length']}): " + "; ".join(failures)
            + f". {_explain_mismatch(folder, block, report)} Nothing was uploaded.",
            failures,
        )
    return report


def _explain_mismatch(folder: Path, block: dict[str, Any], report: dict[str, Any]) -> str:
    """What really differs: the weight files (by hash) or, with the same weights, the runtime."""
    recorded = block.get("weights")
    if not isinstance(recorded, dict):
        return ("results.json records no weight hashes (an older hfcompress wrote it), so whether the weights "
                "changed is unknown; re-run the compression to regenerate the folder.")
    now = weight_hashes(folder)
    changed = sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))
    if changed:
        return (f"The weight files changed after compression ({', '.join(changed)}: sha256 differs from "
                "results.json); re-run the compression, or restore the files it wrote.")
    then, current = block.get("runtime") or {}, report.get("runtime") or {}
    versions = [f"{name} {then.get(name)} then, {current.get(name)} now" for name in sorted(set(then) | set(current))
                if then.get(name) != current.get(name)]
    where = f" Runtime versions differ: {'; '.join(versions)}." if versions else (
        " The runtime versions are the same, so the CPU or its instruction set probably differs from the "
        "machine that compressed it.")
    return ("The weight files are exactly the ones compressed (sha256 match), so the loader computes them "
            f"differently here.{where} Verify on the machine that compressed the model, or re-run the "
            "compression here.")


def verify_main(folder: Path) -> dict[str, Any]:
    """Runs inside the verification subprocess (``python -m hfcompress.hub --verify DIR``)."""
    import torch

    from ..artifact import read_marker
    from ..model_io import verification_outputs
    from ..plugin import ModelState

    torch.set_num_threads(1)
    block = verification_block(folder)
    marker = read_marker(folder)
    fmt, task = marker.get("format") or "pytorch", marker.get("task")
    texts, seq, expected = block["texts"], block["sequence_length"], block["outputs"]
    checks: list[dict[str, Any]] = []
    atol, basis = tolerance_for(block, runtime_versions())

    def compare(loader: str, build: Callable[[], ModelState]) -> None:
        try:
            with torch.no_grad():
                got = verification_outputs(build(), texts, seq)
        except Exception as exc:  # a loader that fails is a failed check, reported with its reason
            checks.append({"loader": loader, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            return
        shapes_ok = len(got) == len(expected) and all(len(a) == len(b) for a, b in zip(got, expected, strict=False))
        diff = max((abs(a - b) for ra, rb in zip(got, expected, strict=False) for a, b in zip(ra, rb, strict=False)),
                   default=0.0) if shapes_ok else float("inf")
        checks.append({"loader": loader, "status": "ok" if diff <= atol else "failed",
                       "max_abs_diff": diff})

    def via_hfcompress() -> ModelState:
        import hfcompress
        from hfcompress.artifact import load_state
        from hfcompress.models import load_tokenizer

        model = hfcompress.load(folder)  # the public entry point users call
        if task is None:
            return load_state(folder)
        return ModelState(model=model, tokenizer=load_tokenizer(folder), task=task, format=fmt)

    compare("hfcompress.load", via_hfcompress)
    from ..models import AUTO_CLASSES

    config = json.loads((folder / "config.json").read_text())
    # Custom shapes (e.g. pruned heads) ship their modeling file with an auto_map: plain
    # transformers loads them with trust_remote_code=True, as a Hub user would.
    remote_code = task in AUTO_CLASSES and AUTO_CLASSES[task] in (config.get("auto_map") or {})
    if fmt == "pytorch" and task and (not marker.get("loader") or remote_code):
        compare("transformers", lambda: _plain_transformers(folder, task, remote_code))
    elif fmt == "onnx" and task:
        compare("onnxruntime", lambda: _plain_onnxruntime(folder, task))
    elif fmt == "openvino" and task:
        compare("openvino", lambda: _plain_openvino(folder, task))
    elif fmt == "onnx-genai" and isinstance(block.get("greedy"), dict):
        checks.append(_check_genai_tokens(folder, block["greedy"], basis))
    else:
        reason = f"format {fmt!r} with loader {marker.get('loader')!r} needs hfcompress to load"
        checks.append({"loader": "plain", "status": "skipped", "reason": reason})
    # A sentence-transformers output (or one whose base was: the embeddings were recorded) must also
    # load and encode the way its users call it; see _plain_sentence_transformers.
    if (folder / "modules.json").is_file() or "sentence_embeddings" in block:
        if (why_not := _sentence_transformers_unavailable(fmt, task)) is not None:
            checks.append({"loader": "sentence-transformers", "status": "skipped", "reason": why_not})
        else:
            compare("sentence-transformers", lambda: _plain_sentence_transformers(folder, str(task), block, atol))
    return {"checks": checks, "atol": atol, "atol_basis": basis, "texts": len(texts), "sequence_length": seq,
            "runtime": runtime_versions()}


def _check_genai_tokens(folder: Path, greedy: dict[str, Any], basis: str) -> dict[str, Any]:
    """Greedy tokens through onnxruntime-genai alone vs those recorded from ``hfcompress.load``:
    identical on the same runtime versions (greedy decoding is deterministic there); on others a
    kernel change may flip a near-tie, so a difference is reported, not failed."""
    try:
        got = _onnxruntime_genai_tokens(folder, greedy)
    except Exception as exc:
        return {"loader": "onnxruntime-genai", "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    same = got == greedy["new_tokens"]
    status = "ok" if same or not basis.startswith("same runtime") else "failed"
    return {"loader": "onnxruntime-genai", "status": status, "greedy_tokens_identical": same,
            "greedy_new_tokens": len(got), **({} if same else {"tokens": got, "expected": greedy["new_tokens"]})}


# How far a folder's outputs may move when reloaded, by what its format guarantees.
# Same file, same runtime versions: deterministic. Measured here (all-MiniLM-L6-v2, 3 texts x 32
# tokens, mean-pooled): fp32 and bf16 PyTorch and ONNX Runtime int8 gave identical outputs with 1
# and 2 threads, so only the 6-digit rounding of the recorded values remains (SAME_RUNTIME_ATOL).
SAME_RUNTIME_ATOL = 1e-5
# Other runtime versions (or CPUs) may pick other kernels: fp32 moves at float-rounding level; 16-bit
# floats and int8 at their quantization-noise level (a different float summation order before a
# dynamic int8 activation quantizer moved MiniLM int8 outputs by up to 0.064).
OTHER_RUNTIME_ATOL = {"fp32": 1e-3, "half": 3e-2, "int8": 0.1}


def record_verification(state: Any, folder: Path, texts: list[str], sequence_length: int = 32) -> dict[str, Any]:
    """The ``verification`` block of results.json for the folder ``state`` was saved to.

    Outputs on a few texts, the weight files' sha256 (so a failed check can say whether the weights
    or the runtime changed), the runtime versions and the tolerances the format guarantees.
    """
    import torch

    from ..model_io import verification_outputs

    with torch.no_grad():
        outputs = verification_outputs(state, texts, sequence_length)
    block = {
        "texts": texts, "sequence_length": sequence_length, "outputs": outputs,
        "atol": SAME_RUNTIME_ATOL, "atol_other_runtime": OTHER_RUNTIME_ATOL[_numeric_kind(state)],
        "weights": weight_hashes(folder), "runtime": runtime_versions(),
    }
    if state.format == "onnx-genai":  # users generate with the runtime itself: check its tokens too
        block["greedy"] = _greedy_record(state, texts[0])
    return block


GREEDY_PROMPT_TOKENS, GREEDY_NEW_TOKENS = 16, 16


def _greedy_record(state: Any, text: str) -> dict[str, Any]:
    """Greedy tokens of ``hfcompress.load(DIR).generate`` for one prompt (the card's promise)."""
    prompt = state.tokenizer(text, return_tensors="pt")["input_ids"][:, :GREEDY_PROMPT_TOKENS]
    out = state.model.generate(prompt, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False)
    return {"prompt_ids": prompt[0].tolist(), "new_tokens": [int(t) for t in out[0, prompt.shape[1]:].tolist()]}


def _onnxruntime_genai_tokens(folder: Path, greedy: dict[str, Any]) -> list[int]:
    """The same greedy decoding through onnxruntime-genai alone, as the card's snippet runs it."""
    import numpy as np
    import onnxruntime_genai as og

    prompt = np.asarray([greedy["prompt_ids"]], dtype=np.int32)
    limit = prompt.shape[1] + len(greedy["new_tokens"])
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=limit)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[prompt.shape[1]: limit]]


def _numeric_kind(state: Any) -> str:
    """fp32, half (bf16/fp16 weights) or int8 (quantized weights: quanto, ONNX Runtime)."""
    if state.format != "pytorch":
        return "int8"
    params = getattr(state.model, "parameters", None)
    dtype = next(params()).dtype if callable(params) else None
    return "fp32" if str(dtype) in ("torch.float32", "None") else "half"


def tolerance_for(block: dict[str, Any], runtime: dict[str, str]) -> tuple[float, str]:
    """The atol to verify with, and why: exact on the recorded runtime versions, the format's noise
    level on others."""
    recorded = block.get("runtime")
    other = block.get("atol_other_runtime")
    if isinstance(recorded, dict) and recorded != runtime and isinstance(other, (int, float)):
        changed = sorted(k for k in set(recorded) | set(runtime) if recorded.get(k) != runtime.get(k))
        return float(other), f"runtime differs from the one that compressed it ({', '.join(changed)})"
    return float(block["atol"]), "same runtime versions as at compression"


def runtime_versions() -> dict[str, str]:
    """Versions of the libraries that compute a folder's outputs, recorded beside them."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in RUNTIMES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _plain_transformers(folder: Path, task: str, remote_code: bool) -> Any:
    import transformers

    from ..models import AUTO_CLASSES, load_tokenizer
    from ..plugin import ModelState

    auto = getattr(transformers, AUTO_CLASSES[task])
    model = auto.from_pretrained(folder, trust_remote_code=remote_code).eval()
    tokenizer = load_tokenizer(folder)
    return ModelState(model=model, tokenizer=tokenizer, task=task)


def _sentence_transformers_unavailable(fmt: str, task: str | None) -> str | None:
    """Why ``SentenceTransformer(folder)`` cannot be tried here, or None. These are limits of the
    environment or of sentence-transformers, not of the folder: the check is skipped, not failed."""
    if task != "feature-extraction":
        return f"task {task!r}: sentence-transformers pipelines are checked for embedding models"
    if fmt == "quanto":
        return "sentence-transformers cannot load optimum-quanto weights (hfcompress.load restores them)"
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        return f"sentence-transformers is not installed here ({exc})"
    if fmt == "onnx":
        try:  # what SentenceTransformer(..., backend="onnx") imports first
            import optimum.onnxruntime  # noqa: F401
        except ImportError as exc:
            return (f"sentence-transformers' ONNX backend needs optimum-onnx (optimum.onnxruntime), which does not "
                    f"import here: {type(exc).__name__}: {exc}")
    if fmt == "openvino":
        try:  # what SentenceTransformer(..., backend="openvino") imports first
            import optimum.intel.openvino  # noqa: F401
        except ImportError as exc:
            return (f"sentence-transformers' OpenVINO backend needs optimum-intel (optimum.intel.openvino), which "
                    f"does not import here: {type(exc).__name__}: {exc}")
    return None


def _plain_sentence_transformers(folder: Path, task: str, block: dict[str, Any], atol: float) -> Any:
    """``SentenceTransformer(folder, ...)`` as its users load it (``trust_remote_code=True`` where the
    folder ships modeling code, ``backend="onnx"`` for ONNX), checked two ways:

    - ``encode`` runs the folder's whole pipeline (its pooling and normalization on the model); it
      must match the sentence embeddings recorded at compression time, which are the *base* model's
      pipeline applied to the compressed model (within ``atol``), else this raises and the check
      fails: a missing modules.json or pooling config gives sentence-transformers' default pipeline;
    - the Transformer module's token embeddings are returned as a model, so that ``compare`` checks
      them (mean-pooled) against the recorded raw outputs like every other loader.
    """
    from sentence_transformers import SentenceTransformer

    from ..plugin import ModelState
    from ..sentence_pipeline import loader_kwargs

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True, **loader_kwargs(folder))
    texts, recorded = block["texts"], block.get("sentence_embeddings")
    model.max_seq_length = block["sequence_length"]  # the truncation the recorded values saw
    if recorded is not None:
        got = [[float(x) for x in row[:64]] for row in model.encode(texts, batch_size=len(texts))]
        diff = max((abs(a - b) for ra, rb in zip(got, recorded, strict=False) for a, b in zip(ra, rb, strict=False)),
                   default=0.0) if [len(r) for r in got] == [len(r) for r in recorded] else float("inf")
        if diff > atol:
            raise ValueError(
                f"SentenceTransformer(...).encode differs from the base model's pipeline on these weights "
                f"(max |difference| {diff:.3g} > atol {atol:g}): the folder's modules.json, pooling or "
                "normalization do not reproduce the base model's"
            )
    transformer = model[0]

    class TokenEmbeddings:
        """The Transformer module called like a transformers model."""

        input_names = MODEL_INPUTS

        def __call__(self, **inputs: Any) -> Any:
            out = transformer(dict(inputs))["token_embeddings"]
            return type("Output", (), {"last_hidden_state": out})()

    return ModelState(model=TokenEmbeddings(), tokenizer=model.tokenizer, task=task)


def _plain_openvino(folder: Path, task: str) -> Any:
    """The IR through a bare ``openvino.Core().compile_model`` (one thread), called like a transformers model."""
    import numpy as np
    import openvino as ov
    import torch

    from ..models import load_tokenizer
    from ..plugin import ModelState

    xml = next((p for p in (folder / "openvino_model.xml", folder / "openvino" / "openvino_model.xml") if p.is_file()),
               None)
    if xml is None:
        raise FileNotFoundError(f"{folder}: no openvino_model.xml (nor openvino/openvino_model.xml)")
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": 1})

    class Compiled:
        input_names = [i.any_name for i in compiled.inputs]

        def __call__(self, **inputs: Any) -> Any:
            feeds = {k: v.cpu().numpy().astype("int64") for k, v in inputs.items()}
            out = torch.from_numpy(np.array(compiled(feeds)[0], dtype=np.float32))
            return type("Output", (), {"logits": out, "last_hidden_state": out})()

    return ModelState(model=Compiled(), tokenizer=load_tokenizer(folder), task=task, format="openvino")


def _plain_onnxruntime(folder: Path, task: str) -> Any:
    """The ONNX file through a bare ``onnxruntime.InferenceSession``, called like a transformers model."""
    import onnxruntime as ort
    import torch

    from ..artifact import find_onnx_file
    from ..models import load_tokenizer
    from ..plugin import ModelState

    onnx_file = find_onnx_file(folder)  # model.onnx, or onnx/model.onnx in a sentence-transformers folder
    if onnx_file is None:
        raise FileNotFoundError(f"{folder}: no model.onnx (nor onnx/model.onnx)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = next((n for n in ("logits", "last_hidden_state") if n in names), names[0])

    class Session:
        input_names = [i.name for i in session.get_inputs()]

        def __call__(self, **inputs: Any) -> Any:
            feeds = {k: v.cpu().numpy().astype("int64") for k, v in inputs.items()}
            out = torch.from_numpy(session.run([wanted], feeds)[0])
            return type("Output", (), {"logits": out, "last_hidden_state": out})()

    return ModelState(model=Session(), tokenizer=load_tokenizer(folder), task=task,
                      format="onnx")




def main(argv: list[str]) -> int:
    """``python -m hfcompress.hub --verify DIR``: print the verification report as one marked line."""
    if len(argv) == 2 and argv[0] == "--verify":
        report = verify_main(Path(argv[1]))
        print(VERIFY_MARK + json.dumps(report), flush=True)
        return 0
    print("usage: python -m hfcompress.hub --verify DIR  (internal: used by push_to_hub)", file=sys.stderr)
    return 2
