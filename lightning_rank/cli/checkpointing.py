"""The checkpoints a fit keeps in ``<default_root_dir>/checkpoints``: ``last.ckpt`` always, ``best.ckpt`` by
a validation metric.

``last.ckpt`` (with the periodic ``epoch=..-step=..ckpt``) is what ``--ckpt_path last`` resumes from;
``best.ckpt`` holds the weights of the validation with the highest ``--checkpoint_monitor`` (default: the
first measure of the first validation set, ``val/<measure>``), for ``--ckpt_path best``. A fit without
validation keeps ``last.ckpt`` only, and says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rank.errors import ConfigError


def checkpoint_folder(root: str | os.PathLike | None) -> Path:
    """The one fixed folder per run (not the logger's versioned one)."""
    return Path(str(root or os.getcwd())) / "checkpoints"


def last_checkpoint(root: str | os.PathLike | None, every_n_steps: int) -> ModelCheckpoint:
    """``last.ckpt`` kept current (every ``every_n_steps`` optimizer steps if > 0, else at epoch ends)."""
    if every_n_steps < 0:
        raise ConfigError(f"--checkpoint_every_n_steps must be >= 0, got {every_n_steps}")
    return ModelCheckpoint(
        dirpath=checkpoint_folder(root), save_last=True, every_n_train_steps=every_n_steps or None
    )


def best_checkpoint(root: str | os.PathLike | None, monitor: str) -> ModelCheckpoint:
    """``best.ckpt``: replaced after each validation whose ``monitor`` beats every earlier one (mode max:
    every trec_eval measure grows with quality)."""
    return ModelCheckpoint(
        dirpath=checkpoint_folder(root),
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )


def monitored_metric(
    chosen: str | None, measures: Sequence[str], set_names: Sequence[str], by_name: bool
) -> str | None:
    """The validation metric ``best.ckpt`` is chosen by: ``chosen`` if it is one a fit logs, by default the
    first set's first measure; None (with a note) when the fit has no validation set."""
    if not set_names:
        if chosen:
            raise ConfigError(
                f"--checkpoint_monitor {chosen}: this fit has no validation set, so nothing logs it: set "
                "data.val_dataset or data.val_datasets, or drop --checkpoint_monitor"
            )
        print(
            "note: no validation set (data.val_dataset / data.val_datasets): only last.ckpt is kept, "
            "no best.ckpt",
            file=sys.stderr,
        )
        return None
    logged = [f"val/{m}" for m in measures]
    if by_name:
        logged += [f"val/{name}/{m}" for name in set_names for m in measures]
    if chosen is None:
        return logged[0]
    if chosen not in logged:
        raise ConfigError(
            f"--checkpoint_monitor {chosen} is not a metric this fit logs; choose one of {', '.join(logged)} "
            "(model.measures of data.val_dataset, or of each set of data.val_datasets by its name)"
        )
    return chosen
