"""What a fit of the reranker needs around its training step: RerankerModule's Lightning hooks for training.

Parameters kept fixed or adapted with LoRA, sharding by the FSDP2 strategy, the default optimizer and
schedule (:mod:`.optim`), the stop at the first non-finite loss (:mod:`.finite_loss`) and exact resume
(:mod:`.resume`). A mixin, so that the module keeps one class and its checkpoints their keys.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_rank.datamodules.batch import TrainFields
from lightning_rank.errors import ConfigError, NonFiniteLossError, check_at_least
from lightning_rank.reranker.finite_loss import FiniteLossGuard, LossOrigin
from lightning_rank.reranker.lora import LoraSettings, add_lora
from lightning_rank.reranker.optim import (
    check_optimizer_settings,
    current_lr,
    default_optimizer,
    no_decay_names,
    param_groups,
    retune_resumed_optimizer,
    warmup_schedule,
)
from lightning_rank.reranker.resume import (
    restore_stream_states,
    rng_states,
    saved_input_format,
    saved_stream_states,
    set_rng_states,
)


def check_training_settings(
    lr: float,
    warmup: float,
    weight_decay: float,
    cuda_graph_limit: int,
    scheduler: str = "linear",
    scheduler_args: dict[str, Any] | None = None,
) -> None:
    """Negative rates, an unknown schedule and a graph limit below 1 fail at configuration, before the
    backbone is built."""
    check_optimizer_settings(lr, warmup, weight_decay, scheduler, scheduler_args)
    check_at_least("model.cuda_graph_limit", cuda_graph_limit, 1)


class TrainingHooks:
    """RerankerModule's training hooks; it provides ``backbone``, ``hparams``, ``optimizer_factory``,
    ``input_format`` and ``_data_input_format()`` (:class:`.scoring.PairScorer`), and the LightningModule's
    ``trainer``."""

    def _prepare_training(self, frozen: Sequence[str], lora: LoraSettings | None) -> None:
        """Fix the ``frozen`` parameters, add LoRA adapters, and decide weight decay on the whole model."""
        for pattern in frozen:
            matched = [p for name, p in self.named_parameters() if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ConfigError(f"model.frozen: pattern {pattern!r} matches no parameter name")
            for param in matched:
                param.requires_grad_(False)
        if lora is not None:
            add_lora(self.backbone, lora)
        self._no_decay_names = no_decay_names(self)
        self._guard = FiniteLossGuard(self._raise_nonfinite)

    def configure_model(self) -> None:
        """Let a sharding strategy shard the model, once the processes and the device mesh exist."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from lightning_rank.strategies import BackboneFSDP2Strategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, BackboneFSDP2Strategy):
            strategy.shard(self)
        elif isinstance(strategy, ModelParallelStrategy):
            raise ConfigError(
                "ModelParallelStrategy needs a model parallelised by its own code: use "
                "lightning_rank.strategies.BackboneFSDP2Strategy (--config configs/strategy/fsdp2.yaml)"
            )

    # -- optimization ------------------------------------------------------------------------------------
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: weight decay on matrices; none on biases, norms and the
        parameters a backbone marks ``_no_weight_decay`` (Mamba's ``A_log``, ``D``, ``dt_bias``, as in
        mamba_ssm)."""
        return param_groups(self.named_parameters(), self._no_decay_names, self.hparams.weight_decay)

    def default_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with ``lr``; the fused CUDA implementation (one kernel a step) when weights are on a GPU."""
        return default_optimizer(self.optimizer_param_groups(), self.hparams.lr)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.optimizer_param_groups())
        else:
            optimizer = self.default_optimizer()
        hp = self.hparams
        return warmup_schedule(
            optimizer,
            hp.warmup,
            self.trainer.estimated_stepping_batches,
            hp.get("scheduler", "linear"),
            hp.get("scheduler_args"),
        )

    def _log_lr(self, batch_size: int) -> None:
        """Log ``train/lr``, the learning rate this step applies."""
        optimizers = self.trainer.optimizers
        if optimizers:
            self.log("train/lr", current_lr(optimizers[0]), batch_size=batch_size)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # CUDA graphs write gradients into static buffers: keep .grad allocated and zero it in place
        optimizer.zero_grad(set_to_none=not self.hparams.get("cuda_graphs"))

    # -- the stop at a non-finite loss -------------------------------------------------------------------
    def _watch_loss(self, loss: Tensor, batch: TrainFields) -> None:
        """Hand the step's loss to the guard (unless ``stop_on_nonfinite_loss`` is off)."""
        if self.hparams.get("stop_on_nonfinite_loss", True):
            trainer = self.trainer
            step, epoch, rank = trainer.global_step, trainer.current_epoch, trainer.global_rank
            self._guard.watch(loss, LossOrigin(step, epoch, rank, batch.get("query_ids") or []))

    def _raise_nonfinite(self, value: float, origin: LossOrigin, late: bool) -> None:
        trainer = self.trainer
        shown = ", ".join(map(str, origin.queries[:20])) + (
            f" (+{len(origin.queries) - 20} more)" if len(origin.queries) > 20 else ""
        )
        callback = trainer.checkpoint_callback
        last = (getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")) or None
        kept = f"the last checkpoint, {last}, is kept as it was" if last else "no checkpoint was written yet"
        when = (
            f"Found at step {trainer.global_step} (on a GPU the loss is checked without stalling each step), "
            "before any later checkpoint was written"
            if late
            else "Stopped before the step was applied"
        )
        raise NonFiniteLossError(
            f"training loss is {value} at step {origin.step} (epoch {origin.epoch}); queries of this batch "
            f"on rank {origin.rank}: {shown or 'unknown'}. {when}; {kept}. Try a lower --model.lr, "
            "--trainer.gradient_clip_val 1.0, or --trainer.precision bf16-mixed instead of 16-mixed; resume "
            "with --ckpt_path last"
        )

    def on_train_epoch_end(self) -> None:
        self._guard.check(wait=True)

    def on_train_end(self) -> None:
        self._guard.check(wait=True)

    # -- exact resume: RNG states travel in the checkpoint -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._guard.check(wait=True)  # a checkpoint never holds weights a non-finite loss has touched
        checkpoint["rng_states"] = rng_states()
        if self.input_format is not None:
            checkpoint["input_format"] = self.input_format.as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        loaded = saved_input_format(checkpoint)
        if loaded is not None:
            self.input_format = loaded
        self._stream_states = saved_stream_states(checkpoint)  # applied in on_train_start

    def on_train_start(self) -> None:
        # after any checkpoint is restored: a resumed fit records the settings it now trains with
        self.input_format = self._data_input_format() or self.input_format
        retune_resumed_optimizer(self)
        states, self._stream_states = getattr(self, "_stream_states", []), []
        restore_stream_states(self.trainer.train_dataloader, states)
