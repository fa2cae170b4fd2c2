"""push_to_hub against the loopback Hub server, with the real huggingface_hub client.

The output folder is built the way the pipeline builds one: a model saved with
``hfcompress.artifact.save_state``, plus README.md, hfcompress.yaml and a results.json whose
``verification`` block comes from ``hfcompress.model_io.verification_outputs``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hfcompress.errors import BadInputError, GateFailedError
from hfcompress.hub import HubAuthError, HubPushError, push_to_hub
from hfcompress.testing import hub_server as hub_testing
from hfcompress.testing.hub_server import HubServer

hub_server = hub_testing.hub_server
hub_client = hub_testing.hub_client

TEXTS = ["a fine, moving film", "dull and far too long", "I loved every minute of it"]
SEQ = 16
CARD = "---\nlibrary_name: transformers\ntags: [hfcompress]\n---\n# tiny-bert, compressed\n\nMeasured numbers here.\n"
RECIPE = "model: tiny-bert\nsteps:\n- head-pruning: {ratio: 0.5}\n- quantization: {backend: auto}\nseed: 0\n"


@pytest.fixture(scope="module")
def output_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hfcompress.artifact import load_state, save_state
    from hfcompress.hub import record_verification
    from hfcompress.testing.models import make_tiny_bert

    root = tmp_path_factory.mktemp("push")
    out = root / "out"
    save_state(load_state(make_tiny_bert(root / "src")), out)
    block = record_verification(load_state(out), out, TEXTS, SEQ)  # as shipped, as it reloads
    (out / "results.json").write_text(json.dumps({"verification": block}, indent=2))
    (out / "README.md").write_text(CARD)
    (out / "hfcompress.yaml").write_text(RECIPE)
    return out


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFCOMPRESS_PUSH_BACKOFF", "0.01")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _all_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_round_trip_card_and_idempotent_re_push(
    hub_client: HubServer, output_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import torch
    from huggingface_hub import snapshot_download

    from hfcompress.artifact import load_state
    from hfcompress.model_io import verification_outputs

    caplog.set_level(logging.DEBUG)
    token = hub_client.write_token
    result = push_to_hub(output_folder, "tiny-bert", token=token)
    repo = "alice/tiny-bert"
    assert result["repo_id"] == repo and result["created_repo"] is True
    assert result["commit_id"] == hub_client.head(repo)
    assert result["commit_url"] == f"{hub_client.endpoint}/{repo}/commit/{result['commit_id']}"
    assert result["commit_message"] == "hfcompress: head-pruning -> quantization on tiny-bert"
    assert hub_client.history(repo)[0].title == result["commit_message"]
    assert sorted(result["uploaded"]) == sorted(p.name for p in output_folder.iterdir())
    checks = {c["loader"]: c for c in result["verification"]["checks"]}
    assert checks["hfcompress.load"]["status"] == checks["transformers"]["status"] == "ok"
    assert checks["hfcompress.load"]["max_abs_diff"] <= 1e-4

    # Download what the Hub serves and run it: same outputs as recorded at compression time.
    snap = Path(snapshot_download(repo, cache_dir=tmp_path / "hf-cache", token=token))
    assert (snap / "README.md").read_text() == CARD  # the card is on the remote
    recorded = json.loads((output_folder / "results.json").read_text())["verification"]["outputs"]
    with torch.no_grad():
        again = verification_outputs(load_state(snap), TEXTS, SEQ)
    assert torch.allclose(torch.tensor(again), torch.tensor(recorded), atol=1e-5)
    assert len(again) == 3 and len(again[0]) == 32  # 3 texts x hidden size 32

    # A second push of the same folder: no verification, no upload, no commit.
    commits_before = len(hub_client.requests("commit"))
    second = push_to_hub(output_folder, repo, token=token)
    assert second["commit_id"] is None and second["verification"] is None
    assert len(hub_client.history(repo)) == 2  # initial commit + ours
    assert len(hub_client.requests("commit")) == commits_before and not hub_client.requests("create_repo")[1:]
    assert sorted(second["unchanged"]) == sorted(result["uploaded"])

    # The token never shows: not in logs (all levels, all loggers), output, or the folder.
    out, err = capfd.readouterr()
    assert token not in caplog.text and token not in out and token not in err
    assert token.encode() not in _all_text(output_folder)


def test_changes_create_pr_and_revision_land_where_they_should(
    hub_client: HubServer, output_folder: Path, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi

    token = hub_client.write_token
    repo = "alice/tiny-pr"
    push_to_hub(output_folder, repo, token=token)
    HfApi(token=token).upload_file(path_or_fileobj=b"old", path_in_repo="stale.txt", repo_id=repo,
                                   commit_message="an old artifact")
    main_head = hub_client.head(repo)

    changed = _copy(output_folder, tmp_path)
    (changed / "README.md").write_text(CARD.replace("Measured numbers here.", "Re-measured."))
    pr = push_to_hub(changed, repo, token=token, create_pr=True)
    assert pr["pr_url"] == f"{hub_client.endpoint}/{repo}/discussions/1" and pr["url"] == pr["pr_url"]
    assert pr["uploaded"] == ["README.md"] and pr["deleted"] == ["stale.txt"]  # only what changed
    assert hub_client.head(repo) == main_head  # main untouched
    on_pr = hub_client.files(repo, "refs/pr/1")
    assert on_pr["README.md"] == (changed / "README.md").read_bytes() and "stale.txt" not in on_pr
    assert sorted(on_pr) == sorted([".gitattributes", *(p.name for p in changed.iterdir())])
    assert hub_client.commits[pr["commit_id"]].parents == [main_head]

    # The same PR again: the open PR already has these files, so no second PR.
    again = push_to_hub(changed, repo, token=token, create_pr=True)
    assert again["commit_id"] is None and again["pr_url"] == pr["pr_url"]
    assert len(hub_client.repo(repo).pull_requests) == 1

    # --revision: a new branch from main, committed there; main still untouched.
    dev = push_to_hub(changed, repo, token=token, revision="dev")
    assert dev["created_branch"] is True and dev["commit_id"] == hub_client.head(repo, "dev")
    assert hub_client.file(repo, "README.md", "dev") == (changed / "README.md").read_bytes()
    assert hub_client.head(repo) == main_head
    assert push_to_hub(changed, repo, token=token, revision="dev")["commit_id"] is None


def test_a_card_written_without_a_repo_id_is_published_with_a_snippet_that_loads_the_repo(
    hub_client: HubServer, output_folder: Path, tmp_path: Path
) -> None:
    """`hfcompress run --output DIR` then `hfcompress push DIR REPO`: the published card's snippet
    loads the repo (a user copying it gets the model), while the local folder keeps its own card."""
    from hfcompress.card import write_card

    folder = _copy(output_folder, tmp_path)
    write_card(folder, {"model": "tiny-bert", "task": "feature-extraction"}, {"model": "tiny-bert"})
    local = (folder / "README.md").read_bytes()
    assert b'from_pretrained("./copy")' in local
    result = push_to_hub(folder, "tiny-card", token=hub_client.write_token)
    remote = hub_client.file("alice/tiny-card", "README.md").decode()
    assert 'from_pretrained("alice/tiny-card")' in remote and "./copy" not in remote
    assert remote.split("## How to use")[0] == local.decode().split("## How to use")[0]
    assert (folder / "README.md").read_bytes() == local and "README.md" in result["uploaded"]
    # pushing again: the remote card already is the one the push renders, so nothing to do
    assert push_to_hub(folder, "alice/tiny-card", token=hub_client.write_token)["commit_id"] is None


def test_dropped_commit_leaves_remote_unchanged_then_retry_succeeds(
    hub_client: HubServer, output_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = hub_client.write_token
    # One drop: retried inside push_to_hub, exactly one commit lands.
    hub_client.add_fault("commit", "drop", times=1)
    hub_client.add_fault("whoami", 503, times=1)
    once = push_to_hub(output_folder, "alice/flaky", token=token)
    assert [r[3] for r in hub_client.requests("commit")] == [0, 200]
    assert [c.title for c in hub_client.history("alice/flaky")] == [once["commit_message"], "initial commit"]

    # Drops on every attempt: the push fails clearly and the remote stays at its previous commit.
    monkeypatch.setenv("HFCOMPRESS_PUSH_ATTEMPTS", "3")
    hub_client.add_fault("commit", "drop", times=3)
    with pytest.raises(HubPushError, match="still at its previous commit") as err:
        push_to_hub(output_folder, "alice/dropped", token=token)
    assert err.value.exit_code == 1 and "Re-run the same command" in str(err.value)
    assert [c.title for c in hub_client.history("alice/dropped")] == ["initial commit"]
    assert list(hub_client.files("alice/dropped")) == [".gitattributes"]

    retry = push_to_hub(output_folder, "alice/dropped", token=token)
    assert retry["commit_id"] == hub_client.head("alice/dropped")
    assert len(hub_client.history("alice/dropped")) == 2


def test_tampered_weights_are_refused_before_anything_is_created(
    hub_client: HubServer, output_folder: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    tampered = _copy(output_folder, tmp_path)
    tensors = load_file(tampered / "model.safetensors")
    names = [n for n in tensors if n.endswith("output.LayerNorm.bias")]
    assert names, sorted(tensors)
    for name in names:
        tensors[name] = tensors[name] + 0.05
    save_file(tensors, tampered / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GateFailedError, match="does not reproduce the outputs") as err:
        push_to_hub(tampered, "alice/tampered", token=hub_client.write_token)
    assert err.value.exit_code == 3
    assert {f.split(":")[0] for f in err.value.failures} == {"hfcompress.load", "transformers"}
    assert "weight files changed after compression (model.safetensors: sha256 differs" in str(err.value)
    assert not hub_client.requests("create_repo") and not hub_client.requests("commit")
    assert ("model", "alice/tampered") not in hub_client.repos


def test_same_weights_other_outputs_blame_the_runtime_not_the_weights(output_folder: Path, tmp_path: Path) -> None:
    from hfcompress.hub import tolerance_for, verify_folder

    moved = _copy(output_folder, tmp_path)
    results = json.loads((moved / "results.json").read_text())
    block = results["verification"]
    block["outputs"] = [[v + 0.01 for v in row] for row in block["outputs"]]  # as another runtime computes them
    (moved / "results.json").write_text(json.dumps(results))
    with pytest.raises(GateFailedError) as err:
        verify_folder(moved)
    message = str(err.value)
    assert "exactly the ones compressed (sha256 match)" in message and "weight files changed" not in message
    assert "runtime versions are the same" in message

    # Recorded under other runtime versions: the format's noise level applies, and the report says why.
    block["runtime"] = {**block["runtime"], "torch": "0.0.1"}
    atol, basis = tolerance_for(block, {k: v for k, v in block["runtime"].items() if k != "torch"} | {"torch": "9"})
    assert atol == block["atol_other_runtime"] == 1e-3 and "torch" in basis  # fp32 weights
    assert tolerance_for(block, block["runtime"]) == (1e-5, "same runtime versions as at compression")


def test_invalid_repo_id_is_refused_locally_before_any_request(hub_client: HubServer, output_folder: Path) -> None:
    for bad in ("a/b/c", "has space/x", "-starts-with-dash", ""):
        with pytest.raises(BadInputError, match="not a valid Hub repo id") as err:
            push_to_hub(output_folder, bad, token=hub_client.write_token)
        assert err.value.exit_code == 2
    assert hub_client.requests() == []


def test_missing_invalid_or_read_only_token_fails_before_any_upload(
    hub_client: HubServer, output_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # empty login cache
    with pytest.raises(HubAuthError, match="hf auth login") as missing:
        push_to_hub(output_folder, "alice/x")
    assert "HF_TOKEN" in str(missing.value) and missing.value.exit_code == 2
    assert hub_client.requests() == []  # not a single request

    with pytest.raises(HubAuthError, match="read-only"):
        push_to_hub(output_folder, "alice/x", token=hub_client.read_token)
    with pytest.raises(HubAuthError, match="rejected"):
        push_to_hub(output_folder, "alice/x", token="hf_expired_" + "0" * 20)
    with pytest.raises(HubAuthError, match="not a member of 'bob'"):
        push_to_hub(output_folder, "bob/x", token=hub_client.write_token)
    assert {r[1] for r in hub_client.requests()} == {"whoami"}

    # HF_TOKEN is found like huggingface_hub finds it.
    monkeypatch.setenv("HF_TOKEN", hub_client.write_token)
    assert push_to_hub(output_folder, "alice/from-env")["commit_id"] == hub_client.head("alice/from-env")


def test_only_output_folders_with_a_verification_block_are_pushed(output_folder: Path, tmp_path: Path) -> None:
    partial = _copy(output_folder, tmp_path)
    (partial / "hfcompress.yaml").unlink()
    with pytest.raises(BadInputError, match="missing hfcompress.yaml"):
        push_to_hub(partial, "alice/x", token="unused")
    shutil.copy(output_folder / "hfcompress.yaml", partial)
    (partial / "results.json").write_text(json.dumps({"base": {}}))
    with pytest.raises(BadInputError, match="no 'verification' block"):
        push_to_hub(partial, "alice/x", token="unused")


def test_cli_fresh_process_up_to_date_and_read_only(hub_server: HubServer, output_folder: Path) -> None:
    """``hfcompress push`` in a subprocess (HF_ENDPOINT set before import): exit codes, no token shown."""
    with hub_server.patch_client():
        push_to_hub(output_folder, "alice/cli-fast", token=hub_server.write_token)
    commits = len(hub_server.history("alice/cli-fast"))
    env = {**os.environ, **hub_server.env(token=hub_server.write_token)}
    cmd = [sys.executable, "-m", "hfcompress", "push", str(output_folder), "--repo-id", "alice/cli-fast", "--json"]
    same = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["commit_id"] is None and len(hub_server.history("alice/cli-fast")) == commits
    read_only = subprocess.run(cmd, env={**env, "HF_TOKEN": hub_server.read_token}, capture_output=True, text=True,
                               timeout=300)
    assert read_only.returncode == 2 and "hf auth login" in read_only.stderr
    assert json.loads(read_only.stdout)["exit_code"] == 2
    for token in (hub_server.write_token, hub_server.read_token):
        assert token not in same.stdout + same.stderr + read_only.stdout + read_only.stderr


@pytest.mark.slow
def test_cli_in_a_fresh_process_exit_codes_and_no_token_anywhere(
    hub_server: HubServer, output_folder: Path
) -> None:
    """The CI path: ``hfcompress push`` in a subprocess, HF_ENDPOINT/HF_TOKEN set before import."""
    token = hub_server.write_token
    env = {**os.environ, **hub_server.env(token=token), "HFCOMPRESS_PUSH_ATTEMPTS": "2",
           "HFCOMPRESS_PUSH_BACKOFF": "0.01"}
    cmd = [sys.executable, "-m", "hfcompress", "push", str(output_folder), "--repo-id", "alice/cli", "--json"]

    def run(extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=600)

    hub_server.add_fault("commit", "drop", times=2)
    dropped = run()
    assert dropped.returncode == 1, dropped.stderr
    assert "still at its previous commit" in dropped.stderr
    assert list(hub_server.files("alice/cli")) == [".gitattributes"]

    pushed = run()
    assert pushed.returncode == 0, pushed.stderr
    first = json.loads(pushed.stdout)
    assert first["commit_id"] == hub_server.head("alice/cli")
    unchanged = run()
    assert unchanged.returncode == 0 and json.loads(unchanged.stdout)["commit_id"] is None
    read_only = run({"HF_TOKEN": hub_server.read_token})
    assert read_only.returncode == 2 and "hf auth login" in read_only.stderr

    outputs = [p.stdout + p.stderr for p in (dropped, pushed, unchanged, read_only)]
    assert not any(token in text for text in outputs)
    assert not any(hub_server.read_token in text for text in outputs)
    assert token.encode() not in _all_text(output_folder)
    assert token.encode() not in _all_text(Path(env["HF_HOME"]))


@pytest.mark.slow
@pytest.mark.parametrize(("step", "plain"), [
    ({"head-pruning": {"ratio": 0.5}}, "transformers"),  # ships its modeling file: trust_remote_code
    ({"quantization": {"backend": "onnxruntime"}}, "onnxruntime"),  # model.onnx in a bare InferenceSession
])
def test_compress_push_to_runs_the_same_push(
    hub_client: HubServer, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    step: dict, plain: str,
) -> None:
    """compress(push_to=...) with real techniques; the plain-loader check matches the format."""
    from hfcompress import compress

    monkeypatch.setenv("HFCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", hub_client.write_token)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"sentence number {i} of the data", "label": i % 2})
                              for i in range(60)))
    recipe = {"model": str(tiny_bert_dir), "data": str(data), "steps": [step],
              "evaluate": {"max_samples": 8, "repeats": 2, "warmup": 1, "sequence_length": 16}}
    result = compress(recipe=recipe, output_dir=tmp_path / "out", push_to="alice/compressed")
    assert result.push is not None and result.push["commit_id"] == hub_client.head("alice/compressed")
    assert result.push["commit_message"] == f"hfcompress: {next(iter(step))} on tiny-bert"
    checks = {c["loader"]: c["status"] for c in result.push["verification"]["checks"]}
    assert checks == {"hfcompress.load": "ok", plain: "ok"}
    remote = hub_client.files("alice/compressed")
    assert remote["README.md"] == (tmp_path / "out" / "README.md").read_bytes()
    assert set(remote) == {".gitattributes", *(p.name for p in (tmp_path / "out").iterdir())}
