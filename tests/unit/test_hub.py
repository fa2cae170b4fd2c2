"""hfcompress.hub helpers that need no server and no model: hashing, diffing, retries, folder rules."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from hfcompress.errors import BadInputError
from hfcompress.hub.files import LocalFile, output_folder_files, refuse_leaked_token
from hfcompress.hub.push import _backoff_waits, _is_transient, _with_retries, commit_text


def _folder(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / ".cache" / "huggingface").mkdir(parents=True)
    (out / "__pycache__").mkdir()
    for name in ("config.json", "README.md", "results.json", "model.safetensors"):
        (out / name).write_bytes(name.encode())
    (out / "hfcompress.yaml").write_text("model: builtin:all-MiniLM-L6-v2\nsteps:\n- head-pruning: {ratio: 0.33}\n"
                                          "- distillation: {max_steps: 200}\n")
    (out / ".cache" / "huggingface" / "x.lock").write_text("")
    (out / "__pycache__" / "m.pyc").write_bytes(b"")
    return out


def test_local_file_matches_regular_and_lfs_remotes(tmp_path: Path) -> None:
    data = b"weights" * 1000
    (tmp_path / "w").write_bytes(data)
    local = LocalFile("w", tmp_path / "w", len(data))
    git_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    regular = SimpleNamespace(size=len(data), lfs=None, blob_id=git_id)
    lfs = SimpleNamespace(size=132, blob_id="pointer-oid", lfs=SimpleNamespace(sha256=hashlib.sha256(data).hexdigest()))
    assert local.git_sha1 == git_id and local.matches(regular) and local.matches(lfs)
    assert not local.matches(SimpleNamespace(size=len(data), lfs=None, blob_id="0" * 40))
    assert not local.matches(SimpleNamespace(size=len(data) - 1, lfs=None, blob_id=git_id))
    assert not local.matches(SimpleNamespace(size=132, blob_id="p", lfs=SimpleNamespace(sha256="0" * 64)))


def test_output_folder_files_skips_caches_and_requires_the_contract(tmp_path: Path) -> None:
    out = _folder(tmp_path)
    assert sorted(output_folder_files(out)) == ["README.md", "config.json", "hfcompress.yaml", "model.safetensors",
                                                 "results.json"]
    (out / "model.safetensors").unlink()
    (out / "README.md").unlink()
    with pytest.raises(BadInputError, match=r"missing README.md, weights \(model.safetensors or model.onnx\)"):
        output_folder_files(out)
    with pytest.raises(BadInputError, match="is not a folder"):
        output_folder_files(tmp_path / "nope")


def test_commit_message_names_the_recipe(tmp_path: Path) -> None:
    title, description = commit_text(_folder(tmp_path), None)
    assert title == "hfcompress: head-pruning -> distillation on builtin:all-MiniLM-L6-v2"
    assert "max_steps: 200" in description
    assert commit_text(_folder(tmp_path / "b"), "my message")[0] == "my message"


def test_transient_errors_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2

    def http_error(status: int) -> Exception:
        err = Exception(f"HTTP {status}")
        err.response = SimpleNamespace(status_code=status)  # type: ignore[attr-defined]
        return err

    assert _is_transient(httpx2.RemoteProtocolError("Server disconnected"))
    assert _is_transient(httpx2.ConnectError("refused"))
    assert all(_is_transient(http_error(s)) for s in (500, 502, 503, 429, 408, 412))
    assert not any(_is_transient(http_error(s)) for s in (400, 401, 403, 404, 409))

    monkeypatch.setenv("HFCOMPRESS_PUSH_ATTEMPTS", "4")
    monkeypatch.setenv("HFCOMPRESS_PUSH_BACKOFF", "0.5")
    assert _backoff_waits() == [0.5, 1.0, 2.0]  # exponential
    slept: list[float] = []
    monkeypatch.setattr("hfcompress.hub.push.time.sleep", slept.append)
    calls = iter([http_error(503), httpx2.ReadError("reset"), "done"])

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert _with_retries("test", flaky) == "done" and slept == [0.5, 1.0]
    with pytest.raises(Exception, match="HTTP 403"):  # not transient: raised at once, no sleep
        _with_retries("test", lambda: (_ for _ in ()).throw(http_error(403)))
    assert slept == [0.5, 1.0]


def test_a_token_never_leaves_in_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfcompress.hub import push as hub_push

    token = "hf_" + "s3cr3t" * 6
    out = _folder(tmp_path)
    (out / "README.md").write_text(f"use token {token} to download")
    with pytest.raises(BadInputError, match="README.md contains your Hugging Face token") as leaked:
        refuse_leaked_token(output_folder_files(out), token)
    assert token not in str(leaked.value)

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError(f"server said: bad credentials {token}")

    monkeypatch.setattr(hub_push, "_push", boom)
    with pytest.raises(ValueError) as err:
        hub_push.push_to_hub(out, "alice/x", token=token)
    assert token not in str(err.value) and "hf_***" in str(err.value) and err.value.__cause__ is None
