"""Checkpoint loading policy: no pickled code from any checkpoint (local or served over http), one clear line
for a file that is not a checkpoint, model settings that never give way to the checkpoint's silently,
``--ckpt_path last`` without a checkpoint, and one fit per checkpoint folder."""

from __future__ import annotations

import contextlib
import http.server
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import DEMO, REPO, cli

from lightning_rank.cli import main
from lightning_rank.cli.folder_lock import lock_path, release_checkpoint_folder
from lightning_rank.reranker.checkpoints import settle_model_settings

QUIET = ("--trainer.enable_progress_bar", "false")
# the demo config has no test split: `test` scores its dev split
DATA = {"test": ("--data.test_dataset", "lightning-rank/demo/dev"),
        "predict": ("--data.predict_dataset", "lightning-rank/demo/dev")}  # fmt: skip


class WritesMarker:
    """Unpickling this creates the marker file: the proof that a checkpoint's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def crafted_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A checkpoint whose loading with ``weights_only=False`` runs code; and the marker that code writes."""
    marker = folder / "code-ran"
    path = folder / "x.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": WritesMarker(marker)}, path)
    return path, marker


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """``folder`` over http on 127.0.0.1 (a free port), from a thread that stops with the block."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``lightning-rank ARGS`` in this process: its exit status and stderr (stdout in ``run_main.out``)."""
    try:
        code = main(list(args))
    except SystemExit as err:
        code = err.code
    captured = capsys.readouterr()
    run_main.out = captured.out
    return code, captured.err


def traceback_in(err: str) -> bool:
    """A traceback on stderr, other than logging's own "Logging error" reports: in one process, a logging
    handler of an earlier test may still write to that test's (closed) captured stream."""
    kept = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", err, flags=re.S)
    return "Traceback" in kept


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_a_served_checkpoint_holding_code_is_refused_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, subcommand: str
) -> None:
    """Lightning reads a checkpoint URL with ``weights_only=False``: this one used to write the marker."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # torch's hub cache, where URLs land
    _, marker = crafted_checkpoint(tmp_path)
    with served(tmp_path) as url:
        code, err = run_main(
            capsys, subcommand, "--config", DEMO, "--ckpt_path", f"{url}/x.ckpt", *QUIET,
            *DATA.get(subcommand, ()), "--trainer.default_root_dir", str(tmp_path / "run"),
        )  # fmt: skip
    assert not marker.exists()
    assert code == 2, err[-2000:]
    assert f"error: --ckpt_path {url}/x.ckpt: the checkpoint holds pickled code (" in err
    assert "cannot be loaded safely" in err and not traceback_in(err)
    assert not list((tmp_path / "torch-home").rglob("*.ckpt")), "the refused download stays in the cache"


def test_a_local_checkpoint_holding_code_is_refused_unless_the_user_trusts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, marker = crafted_checkpoint(tmp_path)
    code, err = run_main(capsys, "validate", "--config", DEMO, "--ckpt_path", str(path), *QUIET)
    assert code == 2 and not marker.exists()
    assert "Unsupported global: GLOBAL io.open" in err and "pass --weights_only false" in err


def test_every_subcommand_reads_checkpoints_with_weights_only_by_default(
    capsys: pytest.CaptureFixture,
) -> None:
    for subcommand in ("fit", "validate", "test", "predict"):
        code, err = run_main(capsys, subcommand, "--config", DEMO, "--print_config")
        assert code == 0, err[-2000:]
        assert re.search(r"^weights_only: true$", run_main.out, re.M), subcommand


def damaged(tmp_path: Path, trained_ckpt: Path, kind: str) -> tuple[Path, str]:
    """A checkpoint path of ``kind`` and what the error must call it."""
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        data = trained_ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "not a PyTorch checkpoint"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "the file is empty"
    if kind == "text":
        path.write_text("model: not really\n")
        return path, "not a PyTorch checkpoint"
    return path, "no such file"


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "missing"])
def test_a_file_that_is_not_a_checkpoint_ends_in_one_line_naming_it(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    path, problem = damaged(tmp_path, trained[0], kind)
    code, err = run_main(capsys, "test", "--config", DEMO, "--ckpt_path", str(path), *QUIET, *DATA["test"])
    assert code == 2, err[-2000:]
    assert f"error: --ckpt_path {path}: {problem}" in err and not traceback_in(err)


# -- settings precedence -------------------------------------------------------------------------------------
def test_settings_that_would_misread_the_weights_are_refused_naming_each(
    trained, capsys: pytest.CaptureFixture
) -> None:
    """Lightning replaced these by the checkpoint's without a word; now they are refused, all at once."""
    code, err = run_main(
        capsys, "validate", "--config", DEMO, "--ckpt_path", str(trained[0]), *QUIET,
        "--model.backbone", "bert", "--model.backbone_args.config", '{"d_model": 96, "n_layer": 2}',
        "--model.backbone_args.tokenizer", "bert-base-uncased",
    )  # fmt: skip
    assert code == 2, err[-2000:]
    for change in (
        "model.backbone: checkpoint 'mamba1' -> yours 'bert'",
        "model.backbone_args.config.d_model: checkpoint 64 -> yours 96",
        "model.backbone_args.tokenizer: checkpoint 'builtin:words' -> yours 'bert-base-uncased'",
    ):
        assert change in err
    assert "n_layer" not in err  # the same on both sides: not a difference


@pytest.mark.slow
def test_sound_settings_are_the_users_and_each_difference_is_named(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Measures the user asks for are the ones reported (Lightning reported the checkpoint's)."""
    metrics = tmp_path / "metrics.json"
    with pytest.warns(UserWarning) as caught:
        code, err = run_main(
            capsys, "validate", "--config", DEMO, "--ckpt_path", str(trained[0]), *QUIET,
            "--model.measures", "[nDCG@5]", "--model.lr", "0.5", "--metrics_file", str(metrics),
            "--trainer.default_root_dir", str(tmp_path),
        )  # fmt: skip
    assert code == 0, err[-2000:]
    (warning,) = [str(w.message) for w in caught if "differ from the checkpoint's" in str(w.message)]
    assert (
        "model.measures: checkpoint ['nDCG@10', 'RR@10', 'R@100'] -> yours ['nDCG@5'] (used: yours)"
        in warning
    )
    assert "model.lr: checkpoint 0.001 -> yours 0.5 (used: yours)" in warning
    assert metrics.read_text().count("@") == 1 and "val/nDCG@5" in metrics.read_text()


@pytest.mark.slow
def test_without_model_settings_the_checkpoints_are_used_quietly(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No --config: the model is built as the checkpoint records it (a mamba1 of d_model 64, not the
    defaults), with no warning about settings the user did not give."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_main(
            capsys, "validate", "--ckpt_path", str(trained[0]), *QUIET, "--data.val_dataset",
            "lightning-rank/demo/dev", "--data.max_length", "40", "--data.max_query_length", "12",
            "--data.excerpt", "query_biased", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path),
        )  # fmt: skip
    assert code == 0, err[-2000:]
    assert not [w for w in caught if "differ from the checkpoint's" in str(w.message)]


def test_a_checkpoint_cannot_turn_on_remote_code() -> None:
    saved = {"backbone": "bert", "backbone_args": {"pretrained": "x", "trust_remote_code": True}, "lr": 1e-3}
    settings, notes = settle_model_settings(saved, {}, "validate", shown="x.ckpt")
    assert settings["backbone_args"] == {"pretrained": "x"}
    assert notes and "trust_remote_code: checkpoint True -> yours not given (used: False" in notes[0]
    settings, notes = settle_model_settings(
        saved, {"backbone_args": {"trust_remote_code": True}}, "validate", shown="x.ckpt"
    )
    assert settings["backbone_args"]["trust_remote_code"] is True and not notes


def test_a_resume_refuses_other_frozen_parameters_and_takes_a_new_lr() -> None:
    saved = {"backbone": "bert", "backbone_args": {}, "lr": 1e-3, "frozen": []}
    with pytest.raises(Exception, match=re.escape("model.frozen: checkpoint [] -> yours ['*emb*']")):
        settle_model_settings(saved, {"frozen": ["*emb*"]}, "fit", shown="x.ckpt")
    settings, notes = settle_model_settings(saved, {"frozen": ["*emb*"]}, "test", shown="x.ckpt")
    assert settings["frozen"] == ["*emb*"] and notes
    settings, _ = settle_model_settings(saved, {"lr": 0.5}, "fit", shown="x.ckpt")
    assert settings["lr"] == 0.5


@pytest.mark.slow
def test_a_fine_tune_from_a_checkpoint_trains_with_the_users_lr(trained, tmp_path: Path) -> None:
    """A resumed optimizer state holds the checkpoint's lr; the user's --model.lr replaces it."""
    root = tmp_path / "tune"
    run = cli(
        "fit", "--config", DEMO, "--ckpt_path", str(trained[0]), "--model.lr", "0.5",
        "--trainer.max_steps", "5", *QUIET, "--validate_before_fit", "false", "--validate_after_fit", "false",
        "--data.max_length", "40", "--data.max_query_length", "12", "--data.excerpt", "query_biased",
        "--trainer.default_root_dir", str(root),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "model.lr: checkpoint 0.001 -> yours 0.5 (used: yours)" in run.stderr
    saved = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5 and saved["hyper_parameters"]["lr"] == 0.5
    assert saved["lr_schedulers"][0]["base_lrs"] == [0.5, 0.5]
    assert all(g["initial_lr"] == 0.5 for g in saved["optimizer_states"][0]["param_groups"])


# -- --ckpt_path last without a checkpoint --------------------------------------------------------------
@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_last_without_a_checkpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, subcommand: str
) -> None:
    """Lightning warned and scored an untrained model."""
    code, err = run_main(
        capsys, subcommand, "--config", DEMO, "--ckpt_path", "last", *QUIET, *DATA.get(subcommand, ()),
        "--trainer.default_root_dir", str(tmp_path),
    )  # fmt: skip
    assert code == 2, err[-2000:]
    assert (
        f"error: --ckpt_path last: no checkpoint under {tmp_path / 'checkpoints'} (looked for last*.ckpt), "
        f"so there is no trained model to {subcommand}: train one with `lightning-rank fit`"
    ) in err


# -- one fit per checkpoint folder ----------------------------------------------------------------------
def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, as a running fit does, until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from lightning_rank.cli.folder_lock import "
         f"lock_checkpoint_folder; lock_checkpoint_folder({str(folder)!r}); print('locked', flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_fit_on_a_folder_in_use_fails_at_once_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two fits on one folder used to overwrite each other's last.ckpt and both report success."""
    folder = tmp_path / "checkpoints"
    holder = hold_lock(folder)
    try:
        code, err = run_main(
            capsys, "fit", "--config", DEMO, *QUIET, "--trainer.default_root_dir", str(tmp_path)
        )
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, err[-3000:]
    assert (
        f"error: checkpoint folder {folder} is in use by process {holder.pid} (lock {lock_path(folder)})"
    ) in err
    assert "--trainer.default_root_dir" in err and not traceback_in(err)
    assert not folder.exists() or not list(folder.iterdir())  # refused before anything was written
    assert "val/" not in err  # before --validate_before_fit's validation


def test_fit_last_without_a_checkpoint_says_so_and_a_dead_fits_lock_does_not_block(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A resume that resumes nothing starts from scratch, on one line (a preemptible job's first start);
    the lock file of a fit that ended (here: killed) blocks nobody."""
    folder = tmp_path / "checkpoints"
    dead = hold_lock(folder)
    dead.kill()
    dead.wait()
    assert lock_path(folder).read_text().strip() == str(dead.pid)
    code, err = run_main(
        capsys, "fit", "--config", DEMO, "--ckpt_path", "last", "--trainer.max_steps", "1", *QUIET,
        "--validate_before_fit", "false", "--validate_after_fit", "false",
        "--trainer.default_root_dir", str(tmp_path),
    )  # fmt: skip
    release_checkpoint_folder(folder)
    assert code == 0, err[-3000:]
    assert f"warning: --ckpt_path last: no checkpoint under {folder}: starting from scratch" in err
    assert "no last checkpoint available" not in err  # Lightning's own, longer warning
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 1
