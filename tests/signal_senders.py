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
