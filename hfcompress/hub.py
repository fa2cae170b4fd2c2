"""Pushing an output folder to the Hugging Face Hub, safely enough for unattended CI jobs.

    from hfcompress.hub import push_to_hub
    result = push_to_hub("out", "my-org/minilm-compressed", private=True)
    result["commit_id"]   # None when the remote already had exactly these files

What a push guarantees, in order:

1. **The folder is an hfcompress output folder** (``config.json``, weights, ``README.md``,
   ``results.json`` with a ``verification`` block, ``hfcompress.yaml``), else :class:`BadInputError`.
2. **A write token is available** (argument, ``HF_TOKEN``, or the ``hf auth login`` cache) and
   ``whoami`` says it may write to the namespace: checked before anything else touches the
   network, else :class:`HubAuthError` (exit 2) saying how to log in.
3. **Idempotence**: local files are compared with the remote tree at the target revision (git
   blob sha1 for regular files, sha256 for LFS files). Nothing changed: no commit, no new PR,
   and ``commit_id`` is ``None``.
4. **The folder still works**: a fresh subprocess (offline, without the token in its
   environment) loads it with ``hfcompress.load`` and with plain transformers (with
   ``trust_remote_code`` when the folder ships its modeling file) or ONNX Runtime when the
   format allows, and reproduces ``results.json["verification"]`` within its ``atol``; else
   :class:`~hfcompress.errors.GateFailedError` (exit 3) and nothing is uploaded.
5. **One commit** (message naming the recipe) with only the changed files, plus deletions of
   remote files that the folder no longer has (``.gitattributes`` is kept). The commit names its
   parent, so a concurrent change or a commit whose answer was lost is detected, not duplicated.
6. **Transient failures** (connection errors, HTTP 5xx, 429, 408, a parent that moved) are retried
   with exponential backoff; if they persist, :class:`HubPushError` says the remote is still at its
   previous commit (Hub commits are atomic) and that re-running uploads only what is missing.

The token is never printed, logged, written to a file or passed to the verification subprocess.
Tuning for CI: ``HFCOMPRESS_PUSH_ATTEMPTS`` (default 5), ``HFCOMPRESS_PUSH_BACKOFF`` (first wait in
seconds, default 1, doubling), ``HFCOMPRESS_VERIFY_TIMEOUT`` (seconds, default 1800).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BadInputError, GateFailedError, HfCompressError

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

__all__ = ["HubAuthError", "HubPushError", "check_repo_id", "push_to_hub", "verify_folder", "weight_hashes"]

log = logging.getLogger("hfcompress.hub")
T = TypeVar("T")

REQUIRED_FILES = ("config.json", "README.md", "results.json", "hfcompress.yaml")
# onnx/*.onnx: sentence-transformers outputs keep their graph where that library's ONNX backend looks.
WEIGHT_PATTERNS = ("*.safetensors", "*.onnx", "onnx/*.onnx", "pytorch_model.bin", "model.safetensors.index.json")
# Never pushed: VCS data, the huggingface_hub local-dir cache, Python caches.
SKIPPED_PARTS = (".git", ".cache", "__pycache__")
# Hub-managed: the Hub writes it into every new repo; deleting it would turn LFS tracking off.
KEEP_REMOTE = frozenset({".gitattributes"})
LOGIN_HELP = (
    "Log in with `hf auth login` (it stores the token in the login cache) or set the HF_TOKEN environment "
    "variable to a token with write access (create one at https://huggingface.co/settings/tokens)."
)
VERIFY_MARK = "HFCOMPRESS_VERIFY_RESULT "
# The libraries whose kernels compute a folder's outputs: a version change can move them.
RUNTIMES = ("torch", "transformers", "onnxruntime", "optimum-quanto")
_VERIFIED: dict[str, dict[str, Any]] = {}
"""Successful verifications in this process, keyed by the folder's content hash."""


class HubAuthError(BadInputError):
    """No usable token: missing, invalid, read-only, or not allowed in the target namespace (exit 2)."""


class HubPushError(HfCompressError):
    """The upload failed; the message says what state the remote is in and what to do (exit 1)."""


# -- local folder ---------------------------------------------------------------------------------
@dataclass
class LocalFile:
    path: str
    """Path inside the repo (POSIX)."""
    file: Path
    size: int
    _sha1: str | None = None
    _sha256: str | None = None

    def _hash(self) -> None:
        # One pass computes both: the git blob id (regular files) and the sha256 (LFS files).
        git, sha = hashlib.sha1(b"blob %d\0" % self.size), hashlib.sha256()
        with self.file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                git.update(chunk)
                sha.update(chunk)
        self._sha1, self._sha256 = git.hexdigest(), sha.hexdigest()

    @property
    def git_sha1(self) -> str:
        if self._sha1 is None:
            self._hash()
        assert self._sha1 is not None
        return self._sha1

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._hash()
        assert self._sha256 is not None
        return self._sha256

    def matches(self, remote: Any) -> bool:
        """Same content as a ``huggingface_hub.RepoFile``: sha256 for LFS files, git blob id otherwise."""
        if remote.size is not None and remote.lfs is None and remote.size != self.size:
            return False
        if remote.lfs is not None:
            return bool(remote.lfs.sha256 == self.sha256)
        return bool(remote.blob_id == self.git_sha1)


def check_repo_id(repo_id: str) -> None:
    """``name`` or ``namespace/name`` as the Hub accepts them, checked locally before any request."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise BadInputError(
            f"--repo-id {repo_id!r} is not a valid Hub repo id: {exc} Use `name` (your namespace) or "
            "`namespace/name`, for example my-org/minilm-small. Nothing was uploaded."
        ) from None


def output_folder_files(folder: Path) -> dict[str, LocalFile]:
    """The files a push uploads, or :class:`BadInputError` naming what is missing."""
    if not folder.is_dir():
        raise BadInputError(f"push: {str(folder)!r} is not a folder; give the output folder of `hfcompress run`")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any(p.is_file() for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)):
        missing.append("weights (model.safetensors or model.onnx)")
    if missing:
        raise BadInputError(
            f"push: {folder} is not an hfcompress output folder: missing {', '.join(missing)}. Push the folder "
            "written by `hfcompress run --output DIR` (or hfcompress.compress(..., output_dir=DIR)) unchanged."
        )
    files: dict[str, LocalFile] = {}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if not file.is_file() or any(part in SKIPPED_PARTS for part in rel.parts) or file.suffix == ".pyc":
            continue
        files[rel.as_posix()] = LocalFile(rel.as_posix(), file, file.stat().st_size)
    return files


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


def commit_text(folder: Path, commit_message: str | None) -> tuple[str, str]:
    """The commit title naming the recipe (from hfcompress.yaml) and a description with the steps."""
    import yaml

    try:
        recipe = yaml.safe_load((folder / "hfcompress.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"push: {folder / 'hfcompress.yaml'} is not valid YAML: {exc}") from None
    if not isinstance(recipe, dict):
        raise BadInputError(f"push: {folder / 'hfcompress.yaml'} must be a mapping (the resolved recipe)")
    steps = [next(iter(s)) if isinstance(s, dict) and s else str(s) for s in recipe.get("steps") or []]
    recipe_name = " -> ".join(steps) if steps else "no steps"
    model = str(recipe.get("model", "unknown model"))
    if os.path.isabs(model):  # a local path says nothing on the Hub and exposes the local layout
        model = Path(model).name
    title = commit_message or f"hfcompress: {recipe_name} on {model}"
    body = yaml.safe_dump({"model": recipe.get("model"), "steps": recipe.get("steps") or []}, sort_keys=False)
    description = f"Compressed with hfcompress (recipe: {recipe_name}).\n\n```yaml\n{body}```\n"
    return title, description


def _folder_fingerprint(files: dict[str, LocalFile]) -> str:
    """What verification depends on: every file but the card, which no loader reads (so a card-only
    edit is not re-verified within one process)."""
    digest = hashlib.sha256()
    for path, f in sorted(files.items()):
        if path != "README.md":
            digest.update(f"{path}\0{f.git_sha1}\n".encode())
    return digest.hexdigest()


def _refuse_leaked_token(files: dict[str, LocalFile], token: str) -> None:
    """A token written into the card or the recipe would be published: refuse before uploading."""
    needle = token.encode()
    for f in files.values():
        if f.size > 64 * 1024 * 1024:  # weights: a token cannot hide in float tensors
            continue
        if needle in f.file.read_bytes():
            raise BadInputError(
                f"push: {f.path} contains your Hugging Face token; remove it (and revoke the token at "
                "https://huggingface.co/settings/tokens) before pushing. Nothing was uploaded."
            )


# -- verification in a fresh process --------------------------------------------------------------
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


def weight_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every weight file in ``folder`` (paths relative to it), recorded at compression time."""
    hashes = {}
    for file in sorted({p for pattern in WEIGHT_PATTERNS for p in folder.rglob(pattern) if p.is_file()}):
        rel = file.relative_to(folder)
        if not any(part in SKIPPED_PARTS for part in rel.parts):
            hashes[rel.as_posix()] = LocalFile(rel.as_posix(), file, file.stat().st_size).sha256
    return hashes


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


def _verify_main(folder: Path) -> dict[str, Any]:
    """Runs inside the verification subprocess (``python -m hfcompress.hub --verify DIR``)."""
    import torch

    from .artifact import read_marker
    from .plugin import ModelState
    from .runner import verification_outputs

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
    from .models import AUTO_CLASSES

    config = json.loads((folder / "config.json").read_text())
    # Custom shapes (e.g. pruned heads) ship their modeling file with an auto_map: plain
    # transformers loads them with trust_remote_code=True, as a Hub user would.
    remote_code = task in AUTO_CLASSES and AUTO_CLASSES[task] in (config.get("auto_map") or {})
    if fmt == "pytorch" and task and (not marker.get("loader") or remote_code):
        compare("transformers", lambda: _plain_transformers(folder, task, remote_code))
    elif fmt == "onnx" and task:
        compare("onnxruntime", lambda: _plain_onnxruntime(folder, task))
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

    from .runner import verification_outputs

    with torch.no_grad():
        outputs = verification_outputs(state, texts, sequence_length)
    return {
        "texts": texts, "sequence_length": sequence_length, "outputs": outputs,
        "atol": SAME_RUNTIME_ATOL, "atol_other_runtime": OTHER_RUNTIME_ATOL[_numeric_kind(state)],
        "weights": weight_hashes(folder), "runtime": runtime_versions(),
    }


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

    from .models import AUTO_CLASSES, load_tokenizer
    from .plugin import ModelState

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

    from .plugin import ModelState
    from .sentence_pipeline import loader_kwargs

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

        input_names = ("input_ids", "attention_mask", "token_type_ids")

        def __call__(self, **inputs: Any) -> Any:
            out = transformer(dict(inputs))["token_embeddings"]
            return type("Output", (), {"last_hidden_state": out})()

    return ModelState(model=TokenEmbeddings(), tokenizer=model.tokenizer, task=task)


def _plain_onnxruntime(folder: Path, task: str) -> Any:
    """The ONNX file through a bare ``onnxruntime.InferenceSession``, called like a transformers model."""
    import onnxruntime as ort
    import torch

    from .artifact import find_onnx_file
    from .models import load_tokenizer
    from .plugin import ModelState

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


# -- talking to the Hub ---------------------------------------------------------------------------
def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    """Connection-level failures and server-side hiccups; never auth or validation errors."""
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - older huggingface_hub used requests/httpx
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = _status(exc)
    return status is not None and (status >= 500 or status in (408, 412, 429))


def _backoff_waits() -> list[float]:
    attempts = max(1, int(os.environ.get("HFCOMPRESS_PUSH_ATTEMPTS", "5")))
    first = float(os.environ.get("HFCOMPRESS_PUSH_BACKOFF", "1"))
    return [min(first * 2**i, 60.0) for i in range(attempts - 1)]


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else ""
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {first}"


def _with_retries(what: str, fn: Callable[[], T]) -> T:
    waits = _backoff_waits()
    for attempt in range(len(waits) + 1):
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc) or attempt == len(waits):
                raise
            log.warning("%s failed (%s); retrying in %.2f s (attempt %d/%d)", what, _describe(exc), waits[attempt],
                        attempt + 2, len(waits) + 1)
            time.sleep(waits[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


def _endpoint() -> str:
    """HF_ENDPOINT as it is *now* (huggingface_hub froze it at import time), else the client's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubAuthError(f"push: no Hugging Face token found. {LOGIN_HELP} Nothing was uploaded.")
    return found


def _check_write_access(api: HfApi, repo_id: str) -> tuple[str, str]:
    """whoami: the token is valid and may write to the repo's namespace. Returns (user, full repo id)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        who = _with_retries("checking the token (whoami)", api.whoami)
    except HfHubHTTPError as exc:
        if _status(exc) == 401:
            raise HubAuthError(f"push: the Hugging Face token was rejected (invalid or expired). {LOGIN_HELP}") from None
        raise
    user = str(who.get("name"))
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    full_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    access = (who.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        raise HubAuthError(
            f"push: the Hugging Face token of {user!r} is read-only and cannot create repos or commits. "
            f"{LOGIN_HELP} Nothing was uploaded."
        )
    if role == "fineGrained":
        fine = access.get("fineGrained") or {}
        allowed = any(
            (scope.get("entity") or {}).get("name") == namespace and "repo.write" in (scope.get("permissions") or [])
            for scope in fine.get("scoped") or []
        ) or "repo.write" in (fine.get("global") or [])
        if not allowed:
            raise HubAuthError(
                f"push: the fine-grained token of {user!r} has no 'repo.write' permission on {namespace!r}. "
                f"{LOGIN_HELP} Nothing was uploaded."
            )
    orgs = {o.get("name"): o for o in who.get("orgs") or []}
    if namespace != user:
        if namespace not in orgs:
            raise HubAuthError(
                f"push: {user!r} is not a member of {namespace!r}, so the token cannot write to {full_id!r}. "
                f"Push to {user}/<name> or log in as a member of {namespace!r}. {LOGIN_HELP}"
            )
        if orgs[namespace].get("roleInOrg") == "read":
            raise HubAuthError(f"push: {user!r} only has the read role in {namespace!r}; ask an admin for write access.")
    return user, full_id


@dataclass
class Plan:
    head: str
    upload: list[str]
    delete: list[str]
    unchanged: list[str]

    @property
    def empty(self) -> bool:
        return not self.upload and not self.delete


def _remote_plan(api: HfApi, repo_id: str, revision: str, local: dict[str, LocalFile]) -> Plan:
    """Diff the local folder against the tree at ``revision`` (resolved once, so both reads agree)."""
    from huggingface_hub import RepoFile

    head = _with_retries("reading the remote revision", lambda: api.repo_info(repo_id, revision=revision).sha)
    assert head is not None
    remote = _with_retries(
        "listing the remote files",
        lambda: {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=head) if isinstance(f, RepoFile)},
    )
    upload = [p for p, f in local.items() if p not in remote or not f.matches(remote[p])]
    unchanged = [p for p in local if p not in upload]
    delete = sorted(p for p in remote if p not in local and p not in KEEP_REMOTE)
    return Plan(head, upload, delete, unchanged)


def _revision_exists(api: HfApi, repo_id: str, revision: str) -> bool:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        _with_retries("reading the remote revision", lambda: api.repo_info(repo_id, revision=revision))
        return True
    except RevisionNotFoundError:
        return False


def _pull_requests(api: HfApi, repo_id: str) -> dict[str, str]:
    """``{"refs/pr/N": head commit}`` of every pull request."""
    refs = _with_retries("listing pull requests", lambda: api.list_repo_refs(repo_id, include_pull_requests=True))
    return {r.ref: r.target_commit for r in refs.pull_requests or []}


def _pr_with_files(api: HfApi, repo_id: str, refs: dict[str, str], local: dict[str, LocalFile]) -> str | None:
    """The newest pull request whose files are exactly the local folder (then there is nothing to open)."""
    for ref in sorted(refs, key=lambda r: int(r.rsplit("/", 1)[1]), reverse=True):
        if _remote_plan(api, repo_id, refs[ref], local).empty:
            return ref
    return None


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Verify ``folder`` and upload it to ``repo_id`` as one commit; see the module doc for guarantees.

    ``revision``: the branch to push to (created from ``main`` when missing). ``create_pr``: open a
    pull request against that branch instead of committing to it. Returns a dict with ``repo_id``,
    ``repo_url``, ``revision``, ``commit_id`` and ``commit_url`` (``None`` when nothing changed),
    ``pr_url``, ``url`` (the PR when one was opened, else the repo), ``created_repo``,
    ``created_branch``, ``uploaded``, ``deleted``, ``unchanged`` (paths), ``commit_message`` and
    ``verification`` (the subprocess report, ``None`` when nothing had to be uploaded).
    """
    secret_box = [token or ""]
    try:
        try:
            return _push(Path(folder), repo_id, private=private, revision=revision, create_pr=create_pr,
                         token=token, commit_message=commit_message, secret_box=secret_box)
        except HfCompressError:
            raise
        except Exception as exc:
            if _status(exc) is None and not _is_transient(exc):
                raise
            # An HTTP or connection error outside the commit loop (creating the repo, a branch...).
            raise HubPushError(
                f"push to {repo_id} failed: {_describe(exc)}. Nothing was committed; fix the cause and re-run."
            ) from exc
    except Exception as exc:
        # Belt and braces: no message that leaves this function may carry the token. Same
        # exception (type and exit code kept), message redacted, chained causes dropped.
        secret = secret_box[0] or _secret_in_use()
        if secret and secret in str(exc):
            exc.args = (str(exc).replace(secret, "hf_***"),)
            exc.__cause__ = exc.__context__ = None
            exc.__suppress_context__ = True
        raise


def _secret_in_use() -> str:
    try:
        from huggingface_hub import get_token

        return get_token() or ""
    except Exception:
        return ""


def _push(folder: Path, repo_id: str, *, private: bool, revision: str | None, create_pr: bool, token: str | None,
          commit_message: str | None, secret_box: list[str]) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    from . import __version__

    # 1. Local checks: cheap, no network.
    check_repo_id(repo_id)
    local = output_folder_files(folder)
    verification_block(folder)
    title, description = commit_text(folder, commit_message)
    if constants.is_offline_mode():
        raise BadInputError(
            "push: huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported). "
            "Unset HF_HUB_OFFLINE (or set it to 0) to push."
        )
    # 2. The token, before anything is uploaded.
    token = _resolve_token(token)
    secret_box[0] = token
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token, library_name="hfcompress", library_version=__version__)
    _, repo_id = _check_write_access(api, repo_id)
    _refuse_leaked_token(local, token)
    branch = revision or "main"
    result: dict[str, Any] = {
        "repo_id": repo_id, "repo_url": f"{endpoint}/{repo_id}", "revision": branch, "commit_id": None,
        "commit_url": None, "pr_url": None, "created_repo": False, "created_branch": False, "uploaded": [],
        "deleted": [], "unchanged": [], "verification": None, "commit_message": title,
        "url": f"{endpoint}/{repo_id}",
    }

    # 3. Read-only look at the remote: nothing to do means no verification, no commit, no PR.
    try:
        _with_retries("reading the repo", lambda: api.repo_info(repo_id))
        exists = True
    except RepositoryNotFoundError:
        exists = False
    branch_exists = exists and _revision_exists(api, repo_id, branch)
    prs_before: dict[str, str] = {}
    if branch_exists:
        plan = _remote_plan(api, repo_id, branch, local)
        result["unchanged"] = plan.unchanged
        if plan.empty:
            log.info("%s@%s already has exactly these files: nothing to commit", repo_id, branch)
            return result
        if create_pr:
            prs_before = _pull_requests(api, repo_id)
            same = _pr_with_files(api, repo_id, prs_before, local)
            if same is not None:
                log.info("pull request %s already has exactly these files: not opening another", same)
                result["pr_url"] = result["url"] = f"{endpoint}/{repo_id}/discussions/{same.rsplit('/', 1)[1]}"
                return result

    # 4. The folder must work before anything is published.
    fingerprint = _folder_fingerprint(local)
    if fingerprint not in _VERIFIED:
        _VERIFIED[fingerprint] = verify_folder(folder)
    else:
        log.info("%s was verified earlier in this process (same content): not re-verifying", folder)
    result["verification"] = _VERIFIED[fingerprint]

    # 5. Create what is missing, then commit with retries.
    if not exists:
        _with_retries("creating the repo", lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        result["created_repo"] = True
        log.info("created %s repo %s", "private" if private else "public", repo_id)
    if not _revision_exists(api, repo_id, branch):
        _with_retries("creating the branch", lambda: api.create_branch(repo_id, branch=branch, exist_ok=True))
        result["created_branch"] = True
        log.info("created branch %s of %s", branch, repo_id)
    if create_pr and not prs_before:
        prs_before = _pull_requests(api, repo_id)

    waits = _backoff_waits()
    failed_head: str | None = None
    plan = _remote_plan(api, repo_id, branch, local)
    for attempt in range(len(waits) + 1):
        try:
            if failed_head is not None:
                # The previous attempt lost its connection: it may or may not have landed. Look
                # before committing again, so a lost answer never turns into a duplicate commit or PR.
                plan = _remote_plan(api, repo_id, branch, local)
                if create_pr:
                    new = {r: c for r, c in _pull_requests(api, repo_id).items() if r not in prs_before}
                    landed = _pr_with_files(api, repo_id, new, local)
                    if landed is not None:
                        result.update(commit_id=new[landed],
                                      pr_url=f"{endpoint}/{repo_id}/discussions/{landed.rsplit('/', 1)[1]}")
                        break
                elif plan.empty and plan.head != failed_head:
                    result["commit_id"] = plan.head  # our commit landed; only its answer was lost
                    break
            if plan.empty:  # e.g. a new branch started from a main that already has these files
                log.info("%s@%s already has exactly these files: nothing to commit", repo_id, branch)
                break
            operations: list[Any] = [CommitOperationAdd(p, str(local[p].file)) for p in plan.upload]
            operations += [CommitOperationDelete(p) for p in plan.delete]
            log.info("committing %d changed file(s), %d deletion(s) to %s@%s%s", len(plan.upload), len(plan.delete),
                     repo_id, branch, " as a pull request" if create_pr else "")
            info = api.create_commit(
                repo_id, operations, commit_message=title, commit_description=description, revision=branch,
                create_pr=create_pr, parent_commit=plan.head,
            )
            result.update(commit_id=info.oid, pr_url=info.pr_url)
            break
        except Exception as exc:
            if not _is_transient(exc):
                raise HubPushError(
                    f"push to {repo_id}@{branch} failed: {_describe(exc)}. Nothing was committed."
                ) from exc
            if attempt == len(waits):
                raise HubPushError(_gave_up_message(api, repo_id, branch, plan.head, exc, attempt + 1)) from exc
            failed_head = plan.head
            log.warning("commit to %s@%s failed (%s); retrying in %.2f s (attempt %d/%d)", repo_id, branch,
                        _describe(exc), waits[attempt], attempt + 2, len(waits) + 1)
            time.sleep(waits[attempt])

    result.update(uploaded=plan.upload, deleted=plan.delete, unchanged=plan.unchanged,
                  url=result["pr_url"] or result["repo_url"])
    if result["commit_id"]:
        result["commit_url"] = f"{endpoint}/{repo_id}/commit/{result['commit_id']}"
        # Read back what the Hub now serves at the new commit: every local file, same content.
        after = _remote_plan(api, repo_id, result["commit_id"], local)
        if after.upload:
            raise HubPushError(f"push to {repo_id}: after commit {result['commit_id']} the Hub serves different "
                               f"content for {', '.join(after.upload)}; re-run the push")
        log.info("pushed %s to %s (%s)", folder, result["pr_url"] or result["repo_url"], result["commit_id"])
    return result


def _gave_up_message(api: HfApi, repo_id: str, branch: str, head: str, exc: BaseException, attempts: int) -> str:
    try:
        now = api.repo_info(repo_id, revision=branch).sha
        state = (f"{repo_id}@{branch} is still at its previous commit {head[:12]} (Hub commits are atomic)"
                 if now == head else f"{repo_id}@{branch} moved to {str(now)[:12]} meanwhile")
    except Exception:
        state = f"the Hub could not be reached to confirm it; commits are atomic, so {repo_id}@{branch} is at " \
                f"{head[:12]} unless a retry landed"
    return (f"push to {repo_id}@{branch} failed after {attempts} attempt(s): {_describe(exc)}. Nothing was "
            f"published: {state}. Re-run the same command to retry; only the files that differ are uploaded.")


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--verify":
        report = _verify_main(Path(argv[1]))
        print(VERIFY_MARK + json.dumps(report), flush=True)
        return 0
    print("usage: python -m hfcompress.hub --verify DIR  (internal: used by push_to_hub)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
