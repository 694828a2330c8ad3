"""Tokens/sec profiler: real and padded tokens/sec, sequences/sec, step time, peak memory and MFU.

Cross-encoder batches are padded, so a rate in padded tokens says how busy the device is, while the rate in
real (non-pad) tokens says how fast the data actually goes through; both are reported, summed over all ranks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_rank.callbacks.step_timing import Intervals, Mark, StepClock, device_now, seconds
from lightning_rank.errors import ConfigError

__all__ = ["TokensPerSecond"]

_EVAL_PREFIX = {
    RunningStage.VALIDATING: "val",
    RunningStage.TESTING: "test",
    RunningStage.PREDICTING: "predict",
}
_GIB = 2**30


def _batch_counts(batch: Any) -> tuple[int, int, int] | None:
    """``(real_tokens, padded_tokens, num_sequences)`` of a batch, or None when it cannot tell.

    Uses the ints the collator puts in every batch; falls back to ``attention_mask`` (a real-token count then
    costs a device sync, which the profiler pays anyway).
    """
    if not isinstance(batch, dict):
        return None
    if all(key in batch for key in ("real_tokens", "padded_tokens", "num_sequences")):
        return int(batch["real_tokens"]), int(batch["padded_tokens"]), int(batch["num_sequences"])
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() >= 2:
        return int(mask.sum()), mask.numel(), mask.numel() // mask.shape[-1]
    return None


class TokensPerSecond(Callback):
    """Logs training throughput in real (non-pad) and padded tokens/sec, summed over all ranks.

    Built on :class:`~lightning.fabric.utilities.throughput.Throughput` (rolling window) and
    :func:`~lightning.fabric.utilities.throughput.get_available_flops` (MFU), like Lightning's
    ``ThroughputMonitor``, but reading the token counts the collator puts in every batch (``real_tokens``,
    ``padded_tokens``, ``num_sequences``) and summing them over ranks with ``trainer.strategy.reduce``:
    sequence lengths differ between ranks, so scaling one rank's count by the world size would not be exact.

    Logged every ``log_every_n_steps`` once the window is full (after ``warmup_steps + window_size`` batches):

    - ``train/tokens_per_sec`` (real tokens; also on the progress bar), ``train/padded_tokens_per_sec``,
      ``train/sequences_per_sec``: cluster rates over the last ``window_size`` measured batches.
    - ``train/step_time``: mean seconds per training batch (micro-batch under gradient accumulation).
    - ``train/peak_memory_gib``: peak CUDA memory allocated on this rank's device since the start of training
      (CUDA only; rank 0's figure is the one logged).
    - ``train/mfu``: model FLOPs utilisation, when the device's peak FLOPs for the trainer precision are known
      and ``pl_module.backbone.flops_per_token(seq_len)`` exists: ``3 x flops_per_token(L) x padded tokens``
      per batch (forward + backward), averaged per device.

    Time is wall time from batch end to batch end (data loading included), with the first ``warmup_steps``
    batches, validation runs and epoch boundaries left out. On CUDA the clock is a CUDA event recorded at each
    batch end (when the GPU got there), read back only when a rate is logged: no per-step synchronisation.
    Counts are reduced once per logging step (one small all-reduce), not per batch.

    Validation, test and predict runs log ``val/``, ``test/`` and ``predict/`` ``tokens_per_sec``,
    ``padded_tokens_per_sec`` and ``sequences_per_sec`` once per run (whole run, first ``warmup_steps``
    batches left out), when their batches carry the counts or an ``attention_mask``.

    Args:
        window_size: Number of measured training batches the rates are averaged over.
        warmup_steps: Batches at the start of each loop left out of the measurement (their time includes
            start-up: worker spawn, compilation, allocator warm-up).
        log_every_n_steps: Log every this many training steps; None follows the trainer's
            ``log_every_n_steps``, 0 turns training throughput logging off.

    Example::

        trainer = Trainer(callbacks=[TokensPerSecond(window_size=20)], log_every_n_steps=10)
    """

    def __init__(
        self, window_size: int = 20, warmup_steps: int = 1, log_every_n_steps: int | None = None
    ) -> None:
        super().__init__()
        if window_size < 1:
            raise ConfigError(f"window_size must be >= 1, got {window_size}")
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if log_every_n_steps is not None and log_every_n_steps < 0:
            raise ConfigError(f"log_every_n_steps must be >= 0 or None, got {log_every_n_steps}")
        self.window_size = window_size
        self.warmup_steps = warmup_steps
        self.log_every_n_steps = log_every_n_steps

        self.available_flops: int | None = None
        self._flops_fn: Callable[[int], float] | None = None
        self._flops_cache: dict[int, float] = {}
        self._warned: set[str] = set()
        # training state, reset in on_train_start
        self._clock = StepClock(warmup_steps)
        self._pending: deque[tuple[tuple[Mark, Mark], list[int]]] = deque(maxlen=window_size + 1)
        self._elapsed = 0.0  # measured training seconds so far
        self._totals = [0, 0, 0, 0]  # measured batches, real tokens, padded tokens, sequences (all ranks)
        self._real = Throughput(window_size=window_size + 1)
        self._padded = Throughput(window_size=window_size + 1)
        # evaluation state per stage: clock, local [real, padded, sequences], measured intervals
        self._eval: dict[RunningStage, tuple[StepClock, list[int], Intervals]] = {}

    # ---------------------------------------------------------------- setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        try:
            dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        except (NotImplementedError, RuntimeError):
            dtype = torch.float32
        self.available_flops = get_available_flops(trainer.strategy.root_device, dtype)
        self._flops_fn = getattr(getattr(pl_module, "backbone", None), "flops_per_token", None)
        self._flops_cache.clear()
        if self.available_flops and self._flops_fn is None:
            self._warn_once(
                "flops",
                f"{type(pl_module).__name__} has no `backbone.flops_per_token`: train/mfu is not logged.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def _counts(self, batch: Any) -> tuple[int, int, int] | None:
        counts = _batch_counts(batch)
        if counts is None:
            self._warn_once(
                "counts",
                "TokensPerSecond: batches carry neither `real_tokens`/`padded_tokens`/`num_sequences` nor an"
                " `attention_mask`; those batches are not measured.",
            )
        return counts

    def _train_flops(self, padded: int, sequences: int) -> int:
        """Training FLOPs of one batch: 3 x forward FLOPs per token at the padded length x padded tokens."""
        if not self.available_flops or self._flops_fn is None or sequences == 0:
            return 0
        seq_len = round(padded / sequences)
        if seq_len not in self._flops_cache:
            self._flops_cache[seq_len] = float(self._flops_fn(seq_len))
        return round(3 * self._flops_cache[seq_len] * padded)

    def _log_every(self, trainer: Trainer) -> int:
        return trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps

    # ---------------------------------------------------------------- training

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Throughput differences against the window's first point, so W batches need W + 1 points
        window = self.window_size + 1
        self._clock = StepClock(self.warmup_steps)
        self._pending = deque(maxlen=window)
        self._elapsed = 0.0
        self._totals = [0, 0, 0, 0]
        self._real = Throughput(window_size=window)
        self._padded = Throughput(available_flops=self.available_flops, window_size=window)
        # origin: zero time, zero counts, so the first window covers exactly `window_size` measured batches
        self._real.update(time=0.0, batches=0, samples=0, lengths=0)
        self._padded.update(time=0.0, batches=0, samples=0, lengths=0, flops=0)
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._log_every(trainer) and self._clock.paused:
            self._clock.start(device_now(trainer.strategy.root_device))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self._log_every(trainer)
        if not every:
            return
        now = device_now(trainer.strategy.root_device)
        counts = self._counts(batch)
        if counts is None:
            self._clock.pause()
        elif (interval := self._clock.stop(now)) is not None:
            real, padded, sequences = counts
            self._pending.append((interval, [real, padded, sequences, self._train_flops(padded, sequences)]))

        if trainer.fit_loop._should_accumulate():
            return  # log when the optimizer step is done, as Lightning does
        if (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % every:
            return
        self._flush(trainer)
        metrics = self._compute(trainer)
        if metrics:
            trainer._logger_connector.log_metrics(metrics)
            pl_module.log(
                "train/tokens_per_sec",
                metrics["train/tokens_per_sec"],
                prog_bar=True,
                logger=False,
                on_step=True,
                on_epoch=False,
            )

    def _flush(self, trainer: Trainer) -> None:
        """Sums the pending batches' counts over ranks (one all-reduce) and feeds them to the windows."""
        if not self._pending:
            return
        rows = [row for _, row in self._pending]
        if trainer.world_size > 1:
            local = torch.tensor(rows, dtype=torch.int64, device=trainer.strategy.root_device)
            rows = trainer.strategy.reduce(local, reduce_op="sum").tolist()
        for (interval, _), (real, padded, sequences, flops) in zip(self._pending, rows, strict=True):
            self._elapsed += seconds(*interval)
            elapsed = self._elapsed
            totals = self._totals
            totals[0] += 1
            totals[1] += real
            totals[2] += padded
            totals[3] += sequences
            self._real.update(time=elapsed, batches=totals[0], samples=totals[3], lengths=totals[1])
            # flops per device: Throughput (world_size=1 here) divides by the device's peak for MFU
            self._padded.update(
                time=elapsed,
                batches=totals[0],
                samples=totals[3],
                lengths=totals[2],
                flops=flops / trainer.world_size,
            )
        self._pending.clear()

    def _compute(self, trainer: Trainer) -> dict[str, float]:
        real, padded = self._real.compute(), self._padded.compute()
        if "device/items_per_sec" not in real:
            return {}  # window not full yet
        metrics = {
            "train/tokens_per_sec": real["device/items_per_sec"],
            "train/padded_tokens_per_sec": padded["device/items_per_sec"],
            "train/sequences_per_sec": real["device/samples_per_sec"],
            "train/step_time": 1.0 / real["device/batches_per_sec"],
        }
        device = trainer.strategy.root_device
        if device.type == "cuda":
            metrics["train/peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / _GIB
        if self._flops_fn is not None and "device/mfu" in padded:
            metrics["train/mfu"] = padded["device/mfu"]
        return metrics

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.pause()  # the next epoch's first fetch may restart workers

    # ---------------------------------------------------------------- validation / test / predict

    def _eval_start(self, trainer: Trainer) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._clock.pause()  # validation time is not training time
        stage = trainer.state.stage
        if stage in _EVAL_PREFIX:
            self._eval[stage] = (StepClock(self.warmup_steps), [0, 0, 0], Intervals())

    def _eval_batch_start(self, trainer: Trainer) -> None:
        state = self._eval.get(trainer.state.stage)  # type: ignore[arg-type]
        if state is not None and not trainer.sanity_checking and state[0].paused:
            state[0].start(device_now(trainer.strategy.root_device))

    def _eval_batch_end(self, trainer: Trainer, batch: Any) -> None:
        state = self._eval.get(trainer.state.stage)  # type: ignore[arg-type]
        if state is None or trainer.sanity_checking:
            return
        clock, totals, intervals = state
        now = device_now(trainer.strategy.root_device)
        counts = self._counts(batch)
        if counts is None:
            clock.pause()
        elif (interval := clock.stop(now)) is not None:
            intervals.add(interval)
            for i, count in enumerate(counts):
                totals[i] += count

    def _eval_end(self, trainer: Trainer) -> None:
        stage = trainer.state.stage
        state = self._eval.pop(stage, None)  # type: ignore[arg-type]
        if state is None or trainer.sanity_checking:
            return
        _, totals, intervals = state
        elapsed = intervals.seconds()
        if trainer.world_size > 1:  # every rank gets here; the slowest rank sets the cluster's time
            device = trainer.strategy.root_device
            totals = trainer.strategy.reduce(torch.tensor(totals, device=device), reduce_op="sum").tolist()
            elapsed = trainer.strategy.reduce(
                torch.tensor(elapsed, dtype=torch.float64, device=device), reduce_op="max"
            ).item()
        if elapsed <= 0 or totals[0] == 0:
            return
        prefix = _EVAL_PREFIX[stage]  # type: ignore[index]
        real, padded, sequences = totals
        trainer._logger_connector.log_metrics(
            {
                f"{prefix}/tokens_per_sec": real / elapsed,
                f"{prefix}/padded_tokens_per_sec": padded / elapsed,
                f"{prefix}/sequences_per_sec": sequences / elapsed,
            }
        )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start(trainer)

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_start(trainer)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, batch)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start(trainer)

    def on_test_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_start(trainer)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, batch)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start(trainer)

    def on_predict_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_start(trainer)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, batch)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer)
