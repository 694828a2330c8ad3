"""Stop at the next batch on SIGTERM (a scheduler's preemption, ``kill``, ``timeout``) or a first Ctrl-C
(SIGINT), keeping what is done.

Lightning notes a SIGTERM but a single-process fit only acts on it at the end of the epoch, and predict never
does: the process ran on until killed; a Ctrl-C ended a fit at once with nothing saved. This stops after the
current batch instead: ``fit`` first saves ``last.ckpt`` (a batch-end checkpoint, so ``--ckpt_path last``
resumes exactly), ``predict`` writes no partial run file (an existing one is kept). Validate/test already stop
on their own (Lightning's loop). A second Ctrl-C during fit aborts at once without saving (Lightning's own
KeyboardInterrupt handling), except while ``last.ckpt`` is being written: it would be left half written.

A SIGTERM that lands after this callback looked at a training batch (while the step's checkpoint is written,
say) is acted on by Lightning's own check at the end of the step instead; ``on_exception`` then saves
``last.ckpt`` as well, so no stop between two steps loses the work since the last periodic checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_STATUS = {"SIGTERM": 143, "SIGINT": 130}  # 128 + the signal's number, as a shell reports it


class StoppedBySignal(SIGTERMException):
    """Raised after a SIGTERM or a first Ctrl-C at a batch boundary; ``message`` (also its note, what the CLI
    prints) says what was kept and how to go on, ``exit_status`` what the CLI exits with."""

    def __init__(self, message: str, exit_status: int = EXIT_STATUS["SIGTERM"]) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status
        self.add_note(message)  # one channel for the CLI, shared with Lightning's own stop (on_exception)


StoppedBySigterm = StoppedBySignal  # the name it had when it was for SIGTERM alone


class StopOnSignal(Callback):
    """Ends fit (after saving ``last.ckpt``) or predict at the next batch boundary after a SIGTERM, and fit
    after a first Ctrl-C; a second Ctrl-C aborts the fit at once."""

    def __init__(self) -> None:
        self._interrupted = False  # a first Ctrl-C came during this fit
        self._saving = False
        self._previous_handler: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Take over Ctrl-C for the fit, unless it is ignored (a background job) or this is not the main
        thread (where Python cannot handle signals)."""
        if stage != TrainerFn.FITTING or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN or self._previous_handler is not None:
            return
        self._interrupted, self._previous_handler = False, previous
        signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def _restore_sigint(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: stop at the next batch end; second: abort now (after a save under way)."""
        if not self._interrupted:
            self._interrupted = True
            _say("Ctrl-C: stopping after this step and saving last.ckpt (press Ctrl-C again to abort now)")
        elif self._saving:
            _say("Ctrl-C: writing last.ckpt, stopping right after")
        else:
            raise KeyboardInterrupt

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        received = _received_on_any_rank(trainer, self._interrupted)
        if received is None:
            return
        self._saving = True
        try:
            message = _save_last_and_say(trainer, received)
        finally:
            self._saving = False
        raise StoppedBySignal(message, EXIT_STATUS[received])

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Lightning's own SIGTERM stop in fit (the signal came after our last check): between two steps of
        one process save there too; else keep what is on disk. A note on the exception says which (the CLI
        prints it); a second Ctrl-C's says what is kept. Teardown hooks do not run after an exception: the
        Ctrl-C handler is put back here (after a KeyboardInterrupt, Lightning ignores Ctrl-C to shut down)."""
        if isinstance(exception, KeyboardInterrupt):
            self._previous_handler = None
            if trainer.state.fn == TrainerFn.FITTING:
                exception.add_note(f"aborted by Ctrl-C at step {trainer.global_step}: {_kept(trainer)}")
            return
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException) or isinstance(exception, StoppedBySignal):
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        epochs = trainer.fit_loop.epoch_progress.current
        between_steps = trainer.training and epochs.completed < epochs.ready
        if between_steps and trainer.world_size == 1:
            exception.add_note(_save_last_and_say(trainer, "SIGTERM"))
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
        if _received_on_any_rank(trainer, False) is not None:
            raise StoppedBySignal(
                f"stopped by SIGTERM after {batch_idx + 1} prediction batches: no run file written "
                "(an existing one is left as it was)"
            )


StopOnSigterm = StopOnSignal  # the name configs may use


def _say(line: str) -> None:
    """A line on stderr from a signal handler (``print`` could re-enter a write under way)."""
    os.write(2, f"\n{line}\n".encode())


def _received_on_any_rank(trainer: pl.Trainer, interrupted: bool) -> str | None:
    """``SIGTERM`` or ``SIGINT`` if any process got one (``interrupted``: a first Ctrl-C here), else None;
    every rank must then stop at the same batch, or the others hang in the next collective."""
    flags = [trainer.received_sigterm, interrupted]
    if trainer.world_size > 1:
        reduced = trainer.strategy.reduce(
            torch.tensor([float(f) for f in flags], device=trainer.strategy.root_device), reduce_op="sum"
        )
        flags = [bool(f > 0) for f in reduced.tolist()]
    if flags[0]:
        return "SIGTERM"
    return "SIGINT" if flags[1] else None


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


def _save_last_and_say(trainer: pl.Trainer, received: str) -> str:
    """Save ``last.ckpt`` at this step's end; the line the CLI prints about it."""
    saved = _save_last(trainer)
    where = f"saved {saved}; resume with --ckpt_path last" if saved else "checkpointing is off: not saved"
    return f"stopped by {received} after step {trainer.global_step}: {where}"


def _save_last(trainer: pl.Trainer) -> str | None:
    """``last.ckpt`` in the checkpoint callback's folder (all ranks take part: FSDP saves shards)."""
    path = _last_path(trainer)
    if path is None:
        return None
    trainer.save_checkpoint(path)
    return path
