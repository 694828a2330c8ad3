"""Stop at the next batch on SIGTERM (a scheduler's preemption, ``kill``, ``timeout``), keeping what is done.

Lightning notes a SIGTERM but a single-process fit only acts on it at the end of the epoch, and predict never
does: the process ran on until killed. This stops after the current batch instead: ``fit`` first saves
``last.ckpt`` (a batch-end checkpoint, so ``--ckpt_path last`` resumes exactly), ``predict`` writes no
partial run file (an existing one is kept). Validate/test already stop on their own (Lightning's loop).

A SIGTERM that lands after this callback looked at a training batch (while the step's checkpoint is written,
say) is acted on by Lightning's own check at the end of the step instead; ``on_exception`` then saves
``last.ckpt`` as well, so no stop between two steps loses the work since the last periodic checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StoppedBySigterm(SIGTERMException):
    """Raised after a SIGTERM at a batch boundary; ``message`` (also its note, what the CLI prints) says what
    was kept and how to go on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.add_note(message)  # one channel for the CLI, shared with Lightning's own stop (on_exception)


class StopOnSigterm(Callback):
    """Ends fit (after saving ``last.ckpt``) or predict at the next batch boundary after a SIGTERM."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not _received_on_any_rank(trainer):
            return
        raise StoppedBySigterm(_save_last_and_say(trainer))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Lightning's own SIGTERM stop in fit (the signal came after our last check): between two steps of
        one process save there too; else keep what is on disk. A note on the exception says which (the CLI
        prints it)."""
        if not isinstance(exception, SIGTERMException) or isinstance(exception, StoppedBySigterm):
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        epochs = trainer.fit_loop.epoch_progress.current
        between_steps = trainer.training and epochs.completed < epochs.ready
        if between_steps and trainer.world_size == 1:
            exception.add_note(_save_last_and_say(trainer))
            return
        # mid-validation a checkpoint would hold half a validation; at an epoch's end (after its hooks, where
        # a per-epoch ModelCheckpoint has just saved) the loops are past a step's end state; with several
        # ranks the others may not be here to join a save
        if between_steps:
            during = "between steps"
        elif trainer.training:
            during = "at an epoch's end"
        else:
            during = "in validation"
        exception.add_note(f"stopped by SIGTERM {during} at step {trainer.global_step}: {_kept(trainer)}")

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if _received_on_any_rank(trainer):
            raise StoppedBySigterm(
                f"stopped by SIGTERM after {batch_idx + 1} prediction batches: no run file written "
                "(an existing one is left as it was)"
            )


def _received_on_any_rank(trainer: pl.Trainer) -> bool:
    """Whether any process got a SIGTERM; every rank must then stop at the same batch, or the others hang in
    the next collective."""
    received = trainer.received_sigterm
    if trainer.world_size == 1:
        return received
    flag = torch.tensor(float(received), device=trainer.strategy.root_device)
    return bool(trainer.strategy.reduce(flag, reduce_op="sum") > 0)


def _last_path(trainer: pl.Trainer) -> str | None:
    """Where the checkpoint callback keeps ``last.ckpt``; None when checkpointing is off."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
        return None
    return os.path.join(callback.dirpath, f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")


def _kept(trainer: pl.Trainer) -> str:
    """What a stop that saves nothing leaves: the newest ``last.ckpt`` and the step it holds."""
    last = _last_path(trainer)
    if last is None or not os.path.exists(last):
        return "not saved, and no checkpoint was written before"
    saved_step = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)  # ModelCheckpoint's
    holds = f"holds step {saved_step}" if isinstance(saved_step, int) else "is kept"
    return f"not saved here; {last} {holds}; resume with --ckpt_path last"


def _save_last_and_say(trainer: pl.Trainer) -> str:
    """Save ``last.ckpt`` at this step's end; the line the CLI prints about it."""
    saved = _save_last(trainer)
    where = f"saved {saved}; resume with --ckpt_path last" if saved else "checkpointing is off: not saved"
    return f"stopped by SIGTERM after step {trainer.global_step}: {where}"


def _save_last(trainer: pl.Trainer) -> str | None:
    """``last.ckpt`` in the checkpoint callback's folder (all ranks take part: FSDP saves shards)."""
    path = _last_path(trainer)
    if path is None:
        return None
    trainer.save_checkpoint(path)
    return path
