"""Exit codes: an input error (an ``InputError``) ends in one ``error:`` line and exit 2; anything else is a
bug and ends in its traceback and exit 1, in function subcommands (bm25, fuse, ...) and trainer ones alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DEMO, REPO

from lightning_rank.cli import main
from lightning_rank.errors import InputError

RUN = "q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0 bm25\n"


def crash(target: str, exception: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``lightning-rank ARGV`` in a subprocess, with ``target`` (``module:attribute``) replaced by a function
    that raises ``exception`` (a genuine bug, not an input error), run the way the console script runs."""
    module, _, attribute = target.partition(":")
    script = (
        "import importlib, sys\n"
        f"module = importlib.import_module({module!r})\n"
        "def bug(*args, **kwargs):\n"
        f"    raise {exception}('a bug in the code, not in the input')\n"
        f"setattr(module, {attribute!r}, bug)\n"
        "from lightning_rank.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def assert_crashed(result: subprocess.CompletedProcess, exception: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{exception}: ") and "a bug in the code, not in the input" in last, result.stderr
    assert "error: a bug" not in result.stderr, result.stderr  # not shown as a user mistake


SLOW = pytest.mark.slow  # one case of each stays in the quick loop (`-m "not slow"`)


@pytest.mark.parametrize(
    "exception",
    ["ValueError", *(pytest.param(e, marks=SLOW) for e in ("KeyError", "RuntimeError", "FileNotFoundError"))],
)
def test_a_bug_in_a_function_subcommand_is_a_traceback_and_exit_1(exception, tmp_path) -> None:
    (tmp_path / "a.trec").write_text(RUN)
    argv = ["fuse", "--run", str(tmp_path / "a.trec"), "--first_stage", str(tmp_path / "a.trec")]
    argv += ["--output", str(tmp_path / "fused.trec")]
    assert_crashed(crash("lightning_rank.commands.fuse:interpolate", exception, argv), exception)
    assert not (tmp_path / "fused.trec").exists()


@SLOW
def test_a_bug_under_bm25_is_a_traceback_and_exit_1(tmp_path) -> None:
    argv = ["bm25", "--dataset", "lightning-rank/demo/dev", "--output", str(tmp_path / "bm25.trec")]
    assert_crashed(crash("lightning_rank.commands.bm25:bm25_run", "ValueError", argv), "ValueError")


@pytest.mark.parametrize("exception", ["ValueError", pytest.param("KeyError", marks=SLOW)])
def test_a_bug_in_a_trainer_subcommand_is_a_traceback_and_exit_1(exception, tmp_path) -> None:
    argv = ["validate", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "run")]
    target = "lightning_rank.cli.trainer:check_model_fits_data"  # called before any data is read
    assert_crashed(crash(target, exception, argv), exception)


def test_the_function_subcommands_catch_input_errors_only(monkeypatch, tmp_path) -> None:
    """In-process: what is not an InputError leaves main() as raised (the interpreter prints it, exit 1)."""
    import lightning_rank.commands.fuse as fuse

    def bug(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(fuse, "read_trec_run", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["fuse", "--run", "a", "--first_stage", "b", "--output", str(tmp_path / "out.trec")])


# -- every kind of input error: exit 2 and its one line ---------------------------------------------------
def files(root: Path) -> dict[str, str]:
    """A good run, a run with a bad line, a file that is not a run, a missing file, a run of the demo."""
    (root / "good.trec").write_text(RUN)
    (root / "bad.trec").write_text(RUN + "q1 Q0 d3 three 0.5 bm25\n")
    (root / "notes.txt").write_text("my notes, not a run\n")
    (root / "demo.trec").write_text("q1000 Q0 d11 1 2.0 bm25\nq1000 Q0 d59 2 1.0 bm25\n")  # the demo's ids
    names = {"good": "good.trec", "bad": "bad.trec", "notes": "notes.txt", "missing": "missing.trec"}
    names["demo"] = "demo.trec"
    return {key: str(root / name) for key, name in names.items()}


INPUT_ERRORS = {
    "option-range": (["bm25", "--dataset", "lightning-rank/demo/dev", "--output", "{out}", "--depth", "0"],
                     "--depth must be >= 1, got 0"),
    "option-range-fuse": (["fuse", "--run", "{good}", "--first_stage", "{good}", "--output", "{out}",
                           "--weight", "1.5"], "--weight must be in [0, 1], got 1.5"),
    "missing-file": (["fuse", "--run", "{missing}", "--first_stage", "{good}", "--output", "{out}"],
                     "missing.trec"),
    "unknown-dataset": (["bm25", "--dataset", "no-such-collection/test", "--output", "{out}"],
                        "no-such-collection/test"),
    "bad-run-line": (["fuse", "--run", "{bad}", "--first_stage", "{good}", "--output", "{out}"],
                     "bad.trec:3"),
    "refused-output": (["fuse", "--run", "{good}", "--first_stage", "{good}", "--output", "{notes}"],
                       "notes.txt"),
    "unknown-measure": (["fuse", "--run", "{good}", "--first_stage", "{good}", "--output", "{out}",
                         "--measure", "nDCG@ten"], "unknown or malformed measure 'nDCG@ten'"),
    "tune-without-qrels": (["fuse", "--run", "{good}", "--first_stage", "{good}", "--output", "{out}",
                            "--weight", "tune"], "--weight tune needs --qrels"),
    "bad-tag": (["fuse", "--run", "{good}", "--first_stage", "{good}", "--output", "{out}",
                 "--tag", "my tag"], "tag 'my tag' cannot be written to a TREC run file"),
    "missing-checkpoint": (["export", "--ckpt_path", "{missing}", "--output", "{out}"],
                           "checkpoint {missing} does not exist"),
    "not-an-export": (["rerank", "--model", "{root}", "--dataset", "lightning-rank/demo/dev",
                       "--run", "{demo}", "--output", "{out}"], "is not a lightning-rank export"),
    "trainer-option": (["validate", "--config", DEMO, "--data.group_size", "1"],
                       "data.group_size must be >= 2"),
    "trainer-checkpoint-steps": (["fit", "--config", DEMO, "--checkpoint_every_n_steps", "-1",
                                  "--trainer.default_root_dir", "{root}/run"],
                                 "--checkpoint_every_n_steps must be >= 0, got -1"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), INPUT_ERRORS.values(), ids=INPUT_ERRORS.keys())
def test_every_input_error_exits_2_with_its_one_line_message(argv, message, tmp_path, capsys) -> None:
    names = {**files(tmp_path), "out": str(tmp_path / "out" / "run.trec"), "root": str(tmp_path)}
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert message.format(**names) in line, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_input_errors_are_the_projects_own_types() -> None:
    """Every user-facing error class in the package is defined in errors.py and is an InputError where it
    stands for bad input."""
    from lightning_rank import errors

    raised_by_input = [
        "ConfigError", "DataError", "DataFileError", "DataFileNotFoundError", "DatasetNotFoundError",
        "DatasetDownloadError", "CheckpointError", "OutputError", "UntrustedCodeError",
        "UnknownBackboneError", "HubModelNotCachedError", "ModelNotFoundError",
    ]  # fmt: skip
    for name in raised_by_input:
        assert issubclass(getattr(errors, name), InputError), name
    defined = subprocess.run(
        ["grep", "-rlE", r"^class \w+(Error|Exception)\b", "lightning_rank"],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.split()
    assert defined == ["lightning_rank/errors.py"], defined
