"""A callback sending its own process SIGTERM at a chosen batch, as a scheduler would."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch.callbacks import Callback


class SigtermAtBatch(Callback):
    """Sends SIGTERM to this process as prediction batch ``batch`` (0-based) starts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int, *_: Any) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAfterCheckpointAtStep(Callback):
    """Sends SIGTERM to this process just after the checkpoint of training step ``step`` is written: past
    the batch-end check of ``StopOnSigterm`` (checkpoint callbacks run last), inside Lightning's own check."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = False

    def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        if trainer.training and trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtValidationBatch(Callback):
    """Sends SIGTERM to this process as validation batch ``batch`` starts, in fit (not its sanity check)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_validation_batch_start(
        self, trainer: Any, module: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if batch_idx == self.batch and not trainer.sanity_checking and trainer.state.fn == "fit":
            os.kill(os.getpid(), signal.SIGTERM)
