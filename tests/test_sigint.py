"""Ctrl-C during fit: the first stops after the current step with ``last.ckpt`` saved (exit 130), from which
``--ckpt_path last`` ends where an uninterrupted run ends; a second aborts at once and saves nothing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import DEMO, REPO, cli
from lightning.pytorch.callbacks import Callback

from lightning_rank.cli import main

STEPS = 24


def fit_args(root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", DEMO, "--trainer.max_steps", str(STEPS), "--checkpoint_every_n_steps", "8",
        "--trainer.check_val_every_n_epoch", "100", "--validate_before_fit", "false",
        "--validate_after_fit", "true", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip


def final_metrics(root: Path) -> dict[str, float]:
    """The validation after fit of the newest run under ``root`` (a resume logs to a new version)."""
    newest = max(root.rglob("metrics.csv"), key=os.path.getmtime)
    rows = [r for r in csv.DictReader(newest.open()) if r.get("val/nDCG@10")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v and "@" in k}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def start_and_ctrl_c_after_step_8(root: Path) -> subprocess.Popen:
    """Start the fit with Ctrl-C handled as in a terminal; send SIGINT once ``last.ckpt`` holds step 8."""
    last = root / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_rank.cli", *fit_args(root)], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job ignores it
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        step8 = list(last.parent.glob("*step=8*.ckpt"))
        if step8 and last.exists() and last.stat().st_mtime_ns >= step8[0].stat().st_mtime_ns:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    return proc


@pytest.mark.slow
def test_ctrl_c_in_fit_saves_last_and_the_resume_ends_at_the_uninterrupted_runs_metrics(
    tmp_path: Path,
) -> None:
    """Ctrl-C used to end the fit at once with nothing saved since the last periodic checkpoint."""
    whole, root = tmp_path / "whole", tmp_path / "interrupted"
    reference = cli(*fit_args(whole))
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = start_and_ctrl_c_after_step_8(root)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    stopped_at = load(last)["global_step"]
    assert 8 <= stopped_at <= 10 < STEPS  # the step running when Ctrl-C came, at most one more
    assert f"stopped by SIGINT after step {stopped_at}: saved {last}; resume with --ckpt_path last" in stderr
    assert "Ctrl-C: stopping after this step and saving last.ckpt" in stderr and "Traceback" not in stderr

    resumed = cli(*fit_args(root, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = load(whole / "checkpoints" / "last.ckpt"), load(last)
    assert expected["global_step"] == got["global_step"] == STEPS
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    reference_metrics, metrics = final_metrics(whole), final_metrics(root)
    assert set(reference_metrics) == {"val/nDCG@10", "val/RR@10", "val/R@100"}
    for name, value in reference_metrics.items():
        assert abs(metrics[name] - value) <= 1e-4, (name, metrics, reference_metrics)


class CtrlCTwiceAtStep(Callback):
    """Presses Ctrl-C twice as training step ``step`` starts: before the stop at its end can save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_and_saves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    previous = signal.getsignal(signal.SIGINT)
    sender = json.dumps({"class_path": f"{__name__}.CtrlCTwiceAtStep", "init_args": {"step": 5}})
    try:
        code = main([
            "fit", "--config", DEMO, "--trainer.max_steps", "8", "--checkpoint_every_n_steps", "2",
            "--validate_before_fit", "false", "--validate_after_fit", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks+", sender,
        ])  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores Ctrl-C after a KeyboardInterrupt
    err = capsys.readouterr().err
    assert code == 130, err[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (
        f"aborted by Ctrl-C at step 5: not saved here; {last} holds step 4; resume with --ckpt_path last"
        in err
    )
    assert load(last)["global_step"] == 4  # not the step the stop would have saved
