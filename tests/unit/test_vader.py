"""The vader source builds its cache safely when several processes ask at once (DDP ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.integration
def test_concurrent_first_use_builds_one_cache(tmp_path: Path) -> None:
    code = ("from hfcompress_plugins.vader import VaderSource; ds = VaderSource().load('tweets'); "
            "print(len(ds), sum(ds['label']))")
    env = {**os.environ, "HFCOMPRESS_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    assert outputs[0][0].split()[0] == "4200"  # tweets_GroundTruth.txt has 4,200 rated tweets
    assert not list((tmp_path / "data" / "vader-3.3.2").glob(".*.tmp"))
