"""Crash safety: a fit killed with SIGKILL, or stopped by SIGTERM, resumes with ``--ckpt_path last`` to
exactly the uninterrupted run; a NaN loss or an out-of-memory error stops with a clear message and leaves the
checkpoints as they were; a predict stopped by SIGTERM leaves an existing run file as it was."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import DEMO, REPO, cli

from lightning_rank.reranker.module import RerankerModule
from lightning_rank.reranker.resume import rng_states, set_rng_states

STEPS = 48


def fit_args(root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", DEMO, "--trainer.max_steps", str(STEPS), "--checkpoint_every_n_steps", "8",
        "--trainer.check_val_every_n_epoch", "100", "--validate_before_fit", "false",
        "--validate_after_fit", "true", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip


def final_metrics(root: Path) -> dict[str, float]:
    newest = max(root.rglob("metrics.csv"), key=os.path.getmtime)
    rows = [r for r in csv.DictReader(newest.open()) if r.get("val/nDCG@10")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v and "@" in k}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # what --ckpt_path does, too


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same fit run to the end without interruption."""
    root = tmp_path_factory.mktemp("whole")
    whole = cli(*fit_args(root))
    assert whole.returncode == 0, whole.stderr[-3000:]
    return root


def start_and_signal_at_step_16(root: Path, sig: signal.Signals) -> subprocess.Popen:
    """Start the fit; send ``sig`` once ``last.ckpt`` holds step 16 (mid-epoch: the epoch is longer)."""
    checkpoints = root / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_rank.cli", *fit_args(root)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300

    def last_holds_step_16() -> bool:
        # ModelCheckpoint writes the step=16 file first and last.ckpt right after: wait for both
        step16, last = list(checkpoints.glob("*step=16*.ckpt")), checkpoints / "last.ckpt"
        return bool(step16) and last.exists() and last.stat().st_mtime_ns >= step16[0].stat().st_mtime_ns

    while not last_holds_step_16() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc


def assert_resumes_to_the_uninterrupted_run(root: Path, whole: Path) -> None:
    resumed = cli(*fit_args(root, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = load(whole / "checkpoints" / "last.ckpt"), load(root / "checkpoints" / "last.ckpt")
    assert expected["global_step"] == got["global_step"] == STEPS
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    reference, metrics = final_metrics(whole), final_metrics(root)
    assert set(reference) == {"val/nDCG@10", "val/RR@10", "val/R@100"}
    for name, value in reference.items():
        assert abs(metrics[name] - value) <= 1e-6, (name, metrics, reference)


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, uninterrupted: Path
) -> None:
    root = tmp_path / "killed"
    proc = start_and_signal_at_step_16(root, signal.SIGKILL)  # no chance to save anything on the way out
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: raise STEPS"
    interrupted_at = load(root / "checkpoints" / "last.ckpt")["global_step"]
    assert 16 <= interrupted_at < STEPS
    assert_resumes_to_the_uninterrupted_run(root, uninterrupted)


@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_saves_last_and_resumes_exactly(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """A scheduler's SIGTERM (preemption, a time limit) used to be noted by Lightning and acted on only at
    the epoch's end: the run went on until it was killed. Now it stops after the current step, saved."""
    root = tmp_path / "terminated"
    proc = start_and_signal_at_step_16(root, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-3000:]  # 128 + SIGTERM, as a shell reports it
    stopped_at = load(root / "checkpoints" / "last.ckpt")["global_step"]
    assert 16 <= stopped_at <= 18  # the step running when the signal came, at most one more
    assert (
        f"stopped by SIGTERM after step {stopped_at}: saved {root / 'checkpoints' / 'last.ckpt'}; "
        "resume with --ckpt_path last"
    ) in stderr
    assert "Traceback" not in stderr
    assert_resumes_to_the_uninterrupted_run(root, uninterrupted)


@pytest.mark.slow
def test_sigterm_just_after_our_batch_end_check_still_saves_last_and_resumes_exactly(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """A SIGTERM landing after StopOnSigterm looked at the batch (while the step's checkpoint is written)
    is acted on by Lightning's own check at the end of the step: that stop saves ``last.ckpt`` too. It
    failed CI once, when the signal of the test above came in that window."""
    root = tmp_path / "late"
    sender = json.dumps({"class_path": "tests.signal_senders.SigtermAfterCheckpointAtStep",
                         "init_args": {"step": 16}})  # fmt: skip
    run = cli(*fit_args(root, "--trainer.callbacks+", sender))
    assert run.returncode == 143, run.stderr[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 16
    assert f"stopped by SIGTERM after step 16: saved {last}; resume with --ckpt_path last" in run.stderr
    assert "Traceback" not in run.stderr
    assert_resumes_to_the_uninterrupted_run(root, uninterrupted)


@pytest.mark.slow
def test_sigterm_during_validation_in_fit_names_the_checkpoint_kept(tmp_path: Path) -> None:
    """Half a validation is not saved (its metrics could not be resumed): the message says which step the
    newest checkpoint holds, so the user knows what a resume redoes."""
    root = tmp_path / "validating"
    sender = json.dumps({"class_path": "tests.signal_senders.SigtermAtValidationBatch",
                         "init_args": {"batch": 1}})  # fmt: skip
    every_5 = ("--checkpoint_every_n_steps", "5", "--trainer.val_check_interval", "12",
               "--trainer.check_val_every_n_epoch", "1")  # fmt: skip
    run = cli(*fit_args(root, *every_5, "--trainer.callbacks+", sender))
    assert run.returncode == 143, run.stderr[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    assert (
        f"stopped by SIGTERM in validation at step 12: not saved here; {last} holds step 10; "
        "resume with --ckpt_path last"
    ) in run.stderr
    assert load(last)["global_step"] == 10 and "Traceback" not in run.stderr


@pytest.mark.slow
def test_a_resume_from_an_epochs_end_starts_the_next_epoch_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """Epochs cut short by ``limit_train_batches``: a resume from the end-of-epoch checkpoint neither
    repeats nor skips a batch (its per-step losses are the uninterrupted run's) and ends at its weights."""

    def every_epoch(root: Path) -> tuple[str, ...]:
        saver = {"class_path": "ModelCheckpoint", "init_args": {
            "dirpath": str(root / "epochs"), "save_top_k": -1, "filename": "{epoch}",
            "save_on_train_epoch_end": True}}  # fmt: skip
        return ("--trainer.max_steps", "-1", "--trainer.max_epochs", "3",
                "--trainer.limit_train_batches", "5", "--trainer.log_every_n_steps", "1",
                "--validate_after_fit", "false",
                "--trainer.callbacks+", json.dumps(saver))  # fmt: skip

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run = cli(*fit_args(whole, *every_epoch(whole)))
    assert run.returncode == 0, run.stderr[-3000:]
    run = cli(
        *fit_args(resumed, *every_epoch(resumed), "--ckpt_path", str(whole / "epochs" / "epoch=0.ckpt"))
    )
    assert run.returncode == 0, run.stderr[-3000:]

    def losses(root: Path) -> dict[int, float]:
        (metrics,) = root.rglob("metrics.csv")
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(metrics.open()) if r["train/loss"]
        }

    after_epoch_0 = {step: loss for step, loss in losses(whole).items() if step >= 5}
    assert sorted(after_epoch_0) == list(range(5, 15))
    assert losses(resumed) == after_epoch_0
    expected, got = load(whole / "epochs" / "epoch=2.ckpt"), load(resumed / "epochs" / "epoch=2.ckpt")
    assert expected["global_step"] == got["global_step"] == 15
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_random_generators_are_restored_with_the_checkpoint() -> None:
    """Dropout masks after a resume are the ones the uninterrupted run would have drawn."""
    import random

    import numpy as np

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    module = RerankerModule(backbone="bert", backbone_args={"tokenizer": "builtin:words", "config": tiny})
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # the crashed run drew more
    module.on_load_checkpoint(checkpoint)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    set_rng_states(rng_states())  # the state survives its own round trip


def faulty_fit(root: Path, failure: str, fail_at: int, *extra: str) -> subprocess.CompletedProcess:
    """The demo's model, failing on purpose at its ``fail_at``-th training forward pass."""
    args = {"fail_at": fail_at, "failure": failure, "tokenizer": "builtin:words", "use_kernels": "never",
            "config": {"d_model": 64, "n_layer": 2}}  # fmt: skip
    faulty = "tests.faulty_backbones.FaultyMamba"
    return cli(*fit_args(root, "--model.backbone", faulty, "--model.backbone_args", json.dumps(args), *extra))


GPU = pytest.param(
    "gpu",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="async check: GPU only"),
    ],
)


@pytest.mark.parametrize("accelerator", ["cpu", GPU])
@pytest.mark.slow
def test_nan_loss_stops_with_step_and_queries_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, accelerator: str
) -> None:
    """On a GPU the loss is read back asynchronously: the error may come a step later, but it names the
    step that failed and no checkpoint after it is written."""
    root = tmp_path / "nan"
    run = faulty_fit(root, "nan", 13, "--trainer.accelerator", accelerator)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "training loss is nan at step 12 (epoch 0)" in run.stderr
    assert "queries of this batch on rank 0: " in run.stderr and "lower --model.lr" in run.stderr
    last = root / "checkpoints" / "last.ckpt"
    assert f"the last checkpoint, {last}, is kept as it was" in run.stderr
    saved = load(last)
    assert saved["global_step"] == 8
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


@pytest.mark.slow
def test_out_of_memory_names_the_knobs_to_turn(tmp_path: Path) -> None:
    run = faulty_fit(tmp_path, failure="oom", fail_at=3)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "error: CUDA out of memory. Tried to allocate 2.00 GiB" in run.stderr
    for knob in (
        "--data.batch_size",
        "--data.max_length",
        "gradient_checkpointing",
        "bf16-mixed",
        "fsdp.yaml",
    ):
        assert knob in run.stderr


@pytest.mark.slow
def test_sigterm_stops_predict_at_the_next_batch_and_keeps_the_existing_run_file(tmp_path: Path) -> None:
    """Lightning's predict loop never looked at SIGTERM: it ran to the end and replaced the run file."""
    run_file = tmp_path / "dev.trec"
    run_file.write_text("q1 Q0 d1 1 0.5 earlier\n")
    before = run_file.stat().st_mtime_ns
    sender = json.dumps({"class_path": "tests.signal_senders.SigtermAtBatch", "init_args": {"batch": 2}})
    run = cli(
        "predict", "--config", DEMO, "--data.predict_dataset", "lightning-rank/demo/dev",
        "--data.eval_batch_size", "16", "--run_writer.output", str(run_file),
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.callbacks+", sender,
    )  # fmt: skip
    assert run.returncode == 143, run.stderr[-3000:]
    assert "stopped by SIGTERM after 3 prediction batches: no run file written" in run.stderr
    assert run_file.read_text() == "q1 Q0 d1 1 0.5 earlier\n" and run_file.stat().st_mtime_ns == before
