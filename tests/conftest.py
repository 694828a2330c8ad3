"""Offline, isolated test environment: no hub access, a private ir_datasets home per session; and the
fixtures several test files share. Helpers that tests import live in tests/helpers.py."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("IR_DATASETS_HOME", tempfile.mkdtemp(prefix="lightning-rank-irds-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def run_cli():
    """:func:`helpers.cli`: ``lightning-rank ARGS`` in a subprocess."""
    from helpers import cli

    return cli


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A 3-step demo fit on 40-token query-biased excerpts (:data:`helpers.TRAINED_SETTINGS`): its
    checkpoint, its export (``lightning-rank export``) and what export printed, shared by the test files
    that need a trained model."""
    import contextlib
    import io

    from helpers import DEMO, TRAINED_SETTINGS

    from lightning_rank.cli import main

    root = tmp_path_factory.mktemp("fit")
    main([
        "fit", "--config", DEMO, "--trainer.max_steps", "3",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--validate_before_fit", "false", "--validate_after_fit", "false", *TRAINED_SETTINGS,
    ])  # fmt: skip
    (ckpt,) = root.rglob("last.ckpt")
    export = root / "export"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["export", "--ckpt_path", str(ckpt), "--output", str(export)])
    return ckpt, export, printed.getvalue()
