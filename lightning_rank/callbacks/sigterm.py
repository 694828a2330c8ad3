"""Stop at the next batch on SIGTERM (a scheduler's preemption, ``kill``, ``timeout``), keeping what is done.

Lightning notes a SIGTERM but a single-process fit only acts on it at the end of the epoch, and predict never
does: the process ran on until killed. This stops after the current batch instead: ``fit`` first saves
``last.ckpt`` (a batch-end checkpoint, so ``--ckpt_path last`` resumes exactly), ``predict`` writes no
partial run file (an existing one is kept). Validate/test already stop on their own (Lightning's loop).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StoppedBySigterm(SIGTERMException):
    """Raised after a SIGTERM at a batch boundary; ``message`` says what was kept and how to go on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StopOnSigterm(Callback):
    """Ends fit (after saving ``last.ckpt``) or predict at the next batch boundary after a SIGTERM."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not _received_on_any_rank(trainer):
            return
        saved = _save_last(trainer)
        where = f"saved {saved}; resume with --ckpt_path last" if saved else "checkpointing is off: not saved"
        raise StoppedBySigterm(f"stopped by SIGTERM after step {trainer.global_step}: {where}")

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


def _save_last(trainer: pl.Trainer) -> str | None:
    """``last.ckpt`` in the checkpoint callback's folder (all ranks take part: FSDP saves shards)."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
        return None
    path = os.path.join(callback.dirpath, f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
    trainer.save_checkpoint(path)
    return path
