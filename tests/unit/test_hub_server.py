"""The loopback Hub server, driven by the real huggingface_hub client (no torch needed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hfcompress.testing import hub_server as hub_testing
from hfcompress.testing.hub_server import HubServer, git_blob_sha1

# The fixtures ship with the server, so plugin authors can use them the same way.
hub_server = hub_testing.hub_server
hub_client = hub_testing.hub_client


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: mit\ntags: [hfcompress]\n---\n# card\n")
    (root / "config.json").write_text(json.dumps({"hidden_size": 32}))
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    return root


def test_binds_loopback_only_on_a_random_port() -> None:
    with HubServer() as a, HubServer() as b:
        assert a._httpd is not None and a._httpd.server_address[0] == "127.0.0.1"
        assert a.port != b.port and a.port > 1024
        assert a.endpoint == f"http://127.0.0.1:{a.port}"
    assert a._httpd is None  # stopped by the context manager


def test_whoami_roles_and_invalid_token(hub_client: HubServer) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    me = HfApi(token=hub_client.write_token).whoami()
    assert me["name"] == "alice" and me["auth"]["accessToken"]["role"] == "write"
    assert HfApi(token=hub_client.read_token).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as err:
        HfApi(token="hf_not_a_real_token").whoami()
    assert err.value.response.status_code == 401


def test_create_repo_private_exist_ok_and_permissions(hub_client: HubServer) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(token=hub_client.write_token)
    url = api.create_repo("secret", private=True)
    assert url.repo_id == "alice/secret" and url.endpoint == hub_client.endpoint
    assert api.create_repo("alice/secret", exist_ok=True).repo_id == "alice/secret"
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("alice/secret")
    assert conflict.value.response.status_code == 409
    # A new repo holds the Hub's initial commit with .gitattributes, like on huggingface.co.
    assert api.list_repo_files("alice/secret") == [".gitattributes"]
    assert api.model_info("alice/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("alice/secret")  # private: invisible without a token
    with pytest.raises(HfHubHTTPError) as forbidden:
        HfApi(token=hub_client.read_token).create_repo("alice/other")
    assert forbidden.value.response.status_code == 403


def test_commit_round_trip_with_git_object_ids(hub_client: HubServer, folder: Path, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url

    api = HfApi(token=hub_client.write_token)
    api.create_repo("alice/tiny")
    info = api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="add files")
    assert len(info.oid) == 40 and info.oid == hub_client.head("alice/tiny")
    assert sorted(api.list_repo_files("alice/tiny")) == [".gitattributes", "README.md", "config.json", "sub/weights.bin"]
    tree = {f.path: f for f in api.list_repo_tree("alice/tiny", recursive=True)}
    weights = (folder / "sub" / "weights.bin").read_bytes()
    # The oid is git's blob id: what the client compares its local files against.
    assert tree["sub/weights.bin"].blob_id == hashlib.sha1(b"blob %d\0" % len(weights) + weights).hexdigest()
    assert tree["sub/weights.bin"].size == len(weights) == 10240
    assert type(tree["sub"]).__name__ == "RepoFolder"

    meta = get_hf_file_metadata(hf_hub_url("alice/tiny", "sub/weights.bin"), token=hub_client.write_token)
    assert (meta.etag, meta.commit_hash, meta.size) == (git_blob_sha1(weights), info.oid, 10240)
    path = hf_hub_download("alice/tiny", "sub/weights.bin", cache_dir=tmp_path / "c1", token=hub_client.write_token)
    assert Path(path).read_bytes() == weights
    snap = Path(snapshot_download("alice/tiny", cache_dir=tmp_path / "c2", token=hub_client.write_token))
    assert (snap / "README.md").read_text() == (folder / "README.md").read_text()

    # Identical re-upload: the client sees matching oids and makes no commit.
    again = api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="again")
    assert again.oid == info.oid
    assert [c.title for c in api.list_repo_commits("alice/tiny")] == ["add files", "initial commit"]


def test_tree_ids_match_git(hub_server: HubServer, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    files = {"a/b/c.txt": b"hi\n", "a.txt": b"x\n", "a-b": b"y\n", "a/d": b"z\n"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    expected = subprocess.run(["git", "write-tree"], cwd=tmp_path, check=True, capture_output=True, text=True)
    with hub_server.lock:
        oids = {name: hub_server._store_blob(data) for name, data in files.items()}
        assert hub_server._tree_sha(oids) == expected.stdout.strip()


def test_branches_pull_requests_and_parent_commit(hub_client: HubServer, folder: Path) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=hub_client.write_token)
    api.create_repo("alice/tiny")
    initial = hub_client.head("alice/tiny")
    api.create_branch("alice/tiny", branch="dev")
    api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="on dev", revision="dev")
    assert api.list_repo_files("alice/tiny", revision="dev") != api.list_repo_files("alice/tiny")
    assert hub_client.head("alice/tiny") == initial

    pr = api.create_commit("alice/tiny", [CommitOperationAdd("x.txt", b"x")], commit_message="a PR", create_pr=True)
    assert pr.pr_url == f"{hub_client.endpoint}/alice/tiny/discussions/1" and pr.pr_revision == "refs/pr/1"
    refs = api.list_repo_refs("alice/tiny", include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests or []] == [("refs/pr/1", pr.oid)]
    assert sorted(b.name for b in refs.branches) == ["dev", "main"]
    assert "x.txt" in api.list_repo_files("alice/tiny", revision="refs/pr/1")
    assert hub_client.head("alice/tiny") == initial  # a PR never moves main

    # upload_folder(create_pr=True) opens the PR through the discussions API, then commits to its ref.
    second = api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="PR 2", create_pr=True)
    assert second.pr_revision == "refs/pr/2"
    assert api.get_discussion_details("alice/tiny", 2).status == "open"

    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit("alice/tiny", [CommitOperationAdd("y.txt", b"y")], commit_message="stale",
                          revision="dev", parent_commit=initial)
    assert stale.value.response.status_code == 412


def test_dropped_commit_leaves_the_branch_unchanged(hub_client: HubServer) -> None:
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=hub_client.write_token)
    api.create_repo("alice/tiny")
    before = hub_client.head("alice/tiny")
    hub_client.add_fault("commit", "drop", times=1)
    with pytest.raises(httpx2.RemoteProtocolError):
        api.create_commit("alice/tiny", [CommitOperationAdd("x.txt", b"x")], commit_message="lost")
    assert hub_client.head("alice/tiny") == before
    assert list(hub_client.files("alice/tiny")) == [".gitattributes"]
    api.create_commit("alice/tiny", [CommitOperationAdd("x.txt", b"x")], commit_message="kept")
    assert hub_client.file("alice/tiny", "x.txt") == b"x"
    assert [r[3] for r in hub_client.requests("commit")] == [0, 200]  # 0: no answer was sent

    hub_client.add_fault("whoami", 503)
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:
        api.whoami()
    assert err.value.response.status_code == 503
    assert api.whoami()["name"] == "alice"


def test_invalid_card_metadata_is_rejected_before_upload(hub_client: HubServer, folder: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=hub_client.write_token)
    api.create_repo("alice/tiny")
    (folder / "README.md").write_text("---\ntags: [unclosed\n---\n# card\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="bad card")
    assert hub_client.requests("commit") == [] and len(hub_client.history("alice/tiny")) == 1


def test_env_points_a_fresh_process_at_the_server(hub_server: HubServer) -> None:
    """HF_ENDPOINT is read when huggingface_hub is imported: a subprocess gets it from ``env()``."""
    code = "from huggingface_hub import constants, whoami; print(constants.ENDPOINT); print(whoami()['name'])"
    env = {**os.environ, **hub_server.env(token=hub_server.write_token)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [hub_server.endpoint, "alice"]
    assert Path(env["HF_HOME"]).is_dir()  # never the user's own login cache
    assert hub_server.requests("whoami")[0][3] == 200
