"""Distillation across processes: 2-rank DDP on CPU (gloo) and a real SIGKILL followed by a resume.

Both run ``distillation_driver.py`` in fresh interpreters (torchrun through the venv's
``python -m torch.distributed.run``), on a tiny BERT teacher and real ``vader:movie`` text.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIVER = Path(__file__).with_name("distillation_driver.py")


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory: pytest.TempPathFactory, hf_cache: str) -> Path:
    from hfcompress.data import DataConfig, load_data

    splits = load_data(DataConfig.model_validate("vader:movie"))
    path = tmp_path_factory.mktemp("texts") / "texts.json"
    path.write_text(json.dumps(list(splits.train["text"][:256])))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return env


def _driver_args(model: Path, texts: Path, work: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [str(DRIVER), "--model", str(model), "--texts", str(texts), "--work", str(work), "--out", str(out),
            "--steps", str(steps), *extra]


def _load(path: Path) -> dict:  # type: ignore[type-arg]
    import torch

    return torch.load(path)


def test_two_processes_end_with_identical_weights_and_lower_loss(tiny_bert_dir, texts_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_driver_args(tiny_bert_dir, texts_file, work, out, 12, "--checkpoint-every", "5")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, rep in enumerate(reports):
        assert rep["rank"] == r
        assert rep["distributed_type"] == "DistributedType.MULTI_CPU"
        assert rep["num_processes"] == 2 and rep["global_batch_size"] == 16
    # The logged loss is reduced across ranks, so both ranks report the same history.
    assert reports[0]["loss_history"] == reports[1]["loss_history"]
    losses = [v for _, v in reports[0]["loss_history"]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses

    w0, w1 = _load(out / "rank0.pt"), _load(out / "rank1.pt")
    assert w0.keys() == w1.keys()
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    # Checkpoints (written by the main process only) are removed once the step finished.
    assert not (work / "distillation-checkpoints").exists()


def test_killed_run_resumes_to_the_same_weights(tiny_bert_dir, texts_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL after the step-6 checkpoint, restart, compare with an uninterrupted run.
    Tolerance: exact equality (same machine, 1 thread, per-step seeds, saved optimizer state)."""
    import torch

    steps = ["--checkpoint-every", "3"]
    ref_out = tmp_path / "ref-out"
    reference = subprocess.Popen(
        [sys.executable, *_driver_args(tiny_bert_dir, texts_file, tmp_path / "ref-work", ref_out, 10, *steps)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    work, out = tmp_path / "work", tmp_path / "out"
    victim = subprocess.Popen(
        [sys.executable, *_driver_args(tiny_bert_dir, texts_file, work, out, 10, *steps, "--sleep", "0.5")],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    target = work / "distillation-checkpoints" / "step-00000006"
    deadline = time.time() + 300
    while not target.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), "the run never wrote its step-6 checkpoint"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (out / "rank0.pt").exists()  # it really died before finishing

    resumed = subprocess.run(
        [sys.executable, *_driver_args(tiny_bert_dir, texts_file, work, out, 10, *steps)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    report = json.loads((out / "rank0.json").read_text())
    ref_report = json.loads((ref_out / "rank0.json").read_text())
    assert report["resumed_from_step"] in (6, 9)  # 9 if the kill landed just after the next checkpoint
    assert ref_report["resumed_from_step"] is None
    assert report["loss_history"] == ref_report["loss_history"]
    got, want = _load(out / "rank0.pt"), _load(ref_out / "rank0.pt")
    for name in want:
        assert torch.equal(got[name], want[name]), name
