"""The files of an output folder as a push sees them: which are pushed, their hashes, the repo id.

Nothing here talks to the Hub or loads a model: these are the cheap local checks a push runs first,
and the hashes both the remote diff (git blob ids, sha256) and the verification (weight sha256) use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError

__all__ = [
    "LocalFile", "check_repo_id", "folder_fingerprint", "output_folder_files", "refuse_leaked_token", "weight_hashes",
]

REQUIRED_FILES = ("config.json", "README.md", "results.json", "hfcompress.yaml")
# onnx/*.onnx, openvino/*.xml: sentence-transformers outputs keep their graph where that library's
# ONNX and OpenVINO backends look.
WEIGHT_PATTERNS = ("*.safetensors", "*.onnx", "*.onnx.data", "onnx/*.onnx", "pytorch_model.bin", "model.safetensors.index.json",
                   "openvino_model.bin", "openvino/openvino_model.bin")
# Never pushed: VCS data, the huggingface_hub local-dir cache, Python caches.
SKIPPED_PARTS = (".git", ".cache", "__pycache__")


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


def weight_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every weight file in ``folder`` (paths relative to it), recorded at compression time."""
    hashes = {}
    for file in sorted({p for pattern in WEIGHT_PATTERNS for p in folder.rglob(pattern) if p.is_file()}):
        rel = file.relative_to(folder)
        if not any(part in SKIPPED_PARTS for part in rel.parts):
            hashes[rel.as_posix()] = LocalFile(rel.as_posix(), file, file.stat().st_size).sha256
    return hashes


def folder_fingerprint(files: dict[str, LocalFile]) -> str:
    """What verification depends on: every file but the card, which no loader reads (so a card-only
    edit is not re-verified within one process)."""
    digest = hashlib.sha256()
    for path, f in sorted(files.items()):
        if path != "README.md":
            digest.update(f"{path}\0{f.git_sha1}\n".encode())
    return digest.hexdigest()


def refuse_leaked_token(files: dict[str, LocalFile], token: str) -> None:
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
