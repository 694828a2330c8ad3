"""RerankerModule: backbone + pooled state + ``Linear(hidden, 1)`` head (fp32), a ranking loss and metrics."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from rich.console import Console
from rich.progress import track
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_rank.backbones.base import Backbone
from lightning_rank.backbones.registry import build_backbone
from lightning_rank.errors import NonFiniteLossError, check_at_least, check_sizes
from lightning_rank.losses import GroupCrossEntropy, RankingLoss
from lightning_rank.metrics import DEFAULT_MEASURES, RankingMetrics, parse_measures
from lightning_rank.reranker.checkpoints import retune_resumed_optimizer
from lightning_rank.reranker.cuda_graphs import PACKING_CONFLICT, TrainingGraphs, check_cuda_graphs
from lightning_rank.reranker.finite_loss import FiniteLossGuard, LossOrigin
from lightning_rank.reranker.lora import LoraSettings, add_lora
from lightning_rank.text.excerpts import Excerpt
from lightning_rank.text.input_format import InputFormat


class RerankerModule(pl.LightningModule):
    """A cross-encoder reranker: ``score(q, d) = Linear(pool(backbone(render(q, d))))``.

    Training contrasts each group's positive against its hard negatives with ``loss``; validation and test
    rerank a run's top-k and report ``measures`` (ir_measures names, computed as trec_eval does) over all
    queries gathered from all ranks.
    """

    def __init__(
        self,
        backbone: str = "mamba1",
        backbone_args: dict[str, Any] | None = None,
        loss: RankingLoss = lazy_instance(GroupCrossEntropy),  # noqa: B008 (jsonargparse prints it)
        measures: Sequence[str] = DEFAULT_MEASURES,
        optimizer: OptimizerCallable | None = None,
        warmup: float = 0.1,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        frozen: Sequence[str] = (),
        lora: LoraSettings | None = None,
        stop_on_nonfinite_loss: bool = True,
        cuda_graphs: bool = False,
        cuda_graph_limit: int = 24,
    ) -> None:
        """
        Args:
            backbone: entry-point name (``lightning-rank backbones`` lists them) or import path of a
                Backbone class.
            backbone_args: constructor arguments of the backbone (``pretrained``, ``config``, ...).
            loss: the training loss (``GroupCrossEntropy`` is localized contrastive estimation).
            measures: ir_measures names reported in validation and test, e.g. ``nDCG@10``, ``RR@10``.
            optimizer: optimizer factory (class path + init args); default AdamW with ``lr`` and
                ``weight_decay`` (no decay on biases and norms).
            warmup: linear warm-up length: a fraction of the total steps if < 1, else a step count; the
                learning rate then decays linearly to 0 at the last step.
            lr: learning rate of the default optimizer.
            weight_decay: weight decay of the default optimizer.
            frozen: glob patterns of parameter names to keep fixed, e.g. ``["*word_embeddings*"]`` (a
                large share of a small encoder's parameters, and of its optimizer time on a CPU).
            lora: train LoRA adapters (peft) instead of the backbone's weights, e.g. ``{r: 16}``; target
                modules default per backbone. Exports merge the adapters into plain weights.
            stop_on_nonfinite_loss: stop training at the first NaN/inf loss, naming the step and the
                batch's query ids; the last checkpoint stays the last good one. On a CPU before the step is
                applied; on a GPU a step or two later (the check waits for no kernel), but always before the
                next checkpoint is written.
            cuda_graphs: capture the training forward and backward as CUDA graphs, one per input shape,
                and replay them (no kernel-launch overhead: the lever for launch-bound models such as
                mamba_ssm's Mamba-2). Each graph keeps its activations: bound the shapes with
                ``data.pad_to_multiple_of``. One GPU or DDP; not with FSDP. Validation runs eagerly.
            cuda_graph_limit: most graphs kept; shapes beyond run eagerly, with a warning.
        """
        super().__init__()
        _check_ranges(lr=lr, warmup=warmup, weight_decay=weight_decay, cuda_graph_limit=cuda_graph_limit)
        if isinstance(lora, dict):  # as stored in a checkpoint's hyper-parameters
            lora = LoraSettings(**lora)
        self.save_hyperparameters(ignore=["loss", "optimizer"])
        if lora is not None:
            # plain values only: checkpoints must load with torch.load(weights_only=True)
            self.hparams["lora"] = dataclasses.asdict(lora)
        self.backbone: Backbone = build_backbone(backbone, backbone_args)
        self.head = nn.Linear(self.backbone.hidden_size, 1)
        self.loss = loss
        self.measures = list(measures)
        self.optimizer_factory = optimizer
        self._freeze(frozen)
        if lora is not None:
            add_lora(self.backbone, lora)
        # Decided on the unsharded model: FSDP replaces parameters (dropping `_no_weight_decay`) and FSDP1
        # flattens them (every shard is 1-D), after which neither the marks nor the shapes tell.
        self._no_decay_names = {
            name
            for name, param in self.named_parameters()
            if param.ndim < 2 or "norm" in name.lower() or getattr(param, "_no_weight_decay", False)
        }
        # transformers' from_pretrained returns modules in eval mode and Lightning keeps each module's mode:
        # without this, dropout would be silently off while fine-tuning a pretrained backbone.
        self.train()
        parse_measures(self.measures)  # unknown measure names fail here, before any data is read
        self._metrics: dict[str, RankingMetrics] = {}
        self._graphs: TrainingGraphs | None = None
        self._guard = FiniteLossGuard(self._raise_nonfinite)
        # how training rendered pairs: set by `fit` from the data module, kept in checkpoints and exports, the
        # default of `score()`; None for a model that has not been trained here
        self.input_format: InputFormat | None = None

    def _freeze(self, patterns: Sequence[str]) -> None:
        for pattern in patterns:
            matched = [p for name, p in self.named_parameters() if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ValueError(f"model.frozen: pattern {pattern!r} matches no parameter name")
            for param in matched:
                param.requires_grad_(False)

    def configure_model(self) -> None:
        """Let a sharding strategy shard the model, once the processes and the device mesh exist."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from lightning_rank.strategies import BackboneFSDP2Strategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, BackboneFSDP2Strategy):
            strategy.shard(self)
        elif isinstance(strategy, ModelParallelStrategy):
            raise TypeError(
                "ModelParallelStrategy needs a model parallelised by its own code: use "
                "lightning_rank.strategies.BackboneFSDP2Strategy (--config configs/strategy/fsdp2.yaml)"
            )

    # -- scoring -----------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """One relevance score per row of the batch (fp32); length buckets are scored separately and
        their scores put back in row order."""
        if "sequence_ids" in batch:  # packed rows (data.packing)
            return self._score_packed(batch)
        graphs = self._training_graphs()
        if graphs is not None:
            graphs.start_step()
        if "buckets" not in batch:
            return self._score(batch, graphs)
        n = sum(len(b["rows"]) for b in batch["buckets"])
        parts = [(b["rows"], self._score(b, graphs)) for b in batch["buckets"]]
        scores = parts[0][1].new_empty(n)
        for rows, part in parts:
            scores[rows] = part
        return scores

    def _score(self, batch: dict[str, Any], graphs: TrainingGraphs | None = None) -> Tensor:
        """Scores of one (bucket of a) batch, through ``graphs`` when training with CUDA graphs."""
        tensors = [batch["input_ids"], batch["attention_mask"]]
        if batch.get("token_type_ids") is not None:
            tensors.append(batch["token_type_ids"])
        return (self._score_tensors if graphs is None else graphs)(*tensors)

    def _score_tensors(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        hidden = self.backbone(input_ids, attention_mask, token_type_ids)
        return self._head_scores(self.backbone.pool(hidden, attention_mask))

    def _score_packed(self, batch: dict[str, Any]) -> Tensor:
        """Scores of a packed batch, one per pair in the order the pairs were given."""
        if self.hparams.get("cuda_graphs") and self.training:
            raise ValueError(PACKING_CONFLICT)
        sequence_ids = batch["sequence_ids"]
        hidden = self.backbone.forward_packed(
            batch["input_ids"], batch["position_ids"], sequence_ids, batch.get("token_type_ids")
        )
        pooled = self.backbone.pool_packed(
            hidden, sequence_ids, batch["sequence_starts"], batch["sequence_lengths"]
        )
        return self._head_scores(pooled)

    def _head_scores(self, pooled: Tensor) -> Tensor:
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            # fp32 unless a strategy casts the parameters themselves (FSDP mixed precision: bf16 head)
            return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float()

    # -- CUDA graphs (model.cuda_graphs) ---------------------------------------------------------------------
    def _training_graphs(self) -> TrainingGraphs | None:
        """The graph cache when training with ``cuda_graphs`` (built on first use), else None."""
        if not (self.hparams.get("cuda_graphs") and self.training and torch.is_grad_enabled()):
            return None
        if self._graphs is None:
            # the CLI checks before fit; this covers the Python API and hand-written loops
            check_cuda_graphs(self.device, self._trainer.strategy if self._trainer is not None else None)
            self._graphs = TrainingGraphs(self, self._score_tensors, limit=self.hparams.cuda_graph_limit)
        return self._graphs

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # CUDA graphs write gradients into static buffers: keep .grad allocated and zero it in place
        optimizer.zero_grad(set_to_none=not self.hparams.get("cuda_graphs"))

    # -- training ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels = batch["labels"]
        scores = self(batch).view_as(labels)
        loss = self.loss(scores, labels, batch.get("teacher_scores"))
        if self.hparams.get("stop_on_nonfinite_loss", True):
            self._guard.watch(loss, self._batch_where(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.size(0))
        return loss

    def _batch_where(self, batch: dict[str, Any]) -> LossOrigin:
        trainer = self.trainer
        step, epoch, rank = trainer.global_step, trainer.current_epoch, trainer.global_rank
        return LossOrigin(step, epoch, rank, batch.get("query_ids") or [])

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

    # -- exact resume: RNG states travel in the checkpoint ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._guard.check(wait=True)  # a checkpoint never holds weights a non-finite loss has touched
        checkpoint["rng_states"] = _rng_states()
        if self.input_format is not None:
            checkpoint["input_format"] = self.input_format.as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])
        saved = checkpoint.get("input_format")  # checkpoints from before it was recorded: the data's settings
        loaded = (
            InputFormat(**saved)
            if saved
            else InputFormat.from_settings(checkpoint.get("datamodule_hyper_parameters"))
        )
        if loaded is not None:
            self.input_format = loaded
        # Lightning hands the saved stream position only to a train loader it builds after restoring the
        # loops, but configure_optimizers (estimated_stepping_batches) builds it before: without this the
        # stream would restart at the epoch's first batch. Applied in on_train_start (twice is harmless).
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._stream_states = fit_state.get("combined_loader") or []

    def on_train_epoch_end(self) -> None:
        self._guard.check(wait=True)

    def on_train_end(self) -> None:
        self._guard.check(wait=True)

    def on_train_start(self) -> None:
        # after any checkpoint is restored: a resumed fit records the settings it now trains with
        self.input_format = self._data_input_format() or self.input_format
        retune_resumed_optimizer(self)
        states, self._stream_states = getattr(self, "_stream_states", []), []
        loaders = self.trainer.train_dataloader
        loaders = list(loaders) if isinstance(loaders, list | tuple) else [loaders]
        stateful = [loader for loader in loaders if hasattr(loader, "load_state_dict")]
        for loader, state in zip(stateful, states, strict=False):
            loader.load_state_dict(state)

    # -- evaluation --------------------------------------------------------------------------------------
    def _data_input_format(self) -> InputFormat | None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return InputFormat.from_settings(getattr(datamodule, "hparams", None))

    def _warn_if_rendered_unlike_training(self) -> None:
        """Warn when test/predict/validate render pairs unlike the fit that trained these weights."""
        now = self._data_input_format()
        if self.input_format is None or now is None or self.trainer.state.fn == "fit":
            return
        changes = self.input_format.differences(now)
        if changes:
            rank_zero_warn(
                f"these weights were trained on pairs rendered with other data settings (training -> now: "
                f"{'; '.join(changes)}): scores will not be what training measured. Pass the fit's data "
                "settings (its config) unless the change is meant."
            )

    def on_validation_start(self) -> None:
        self._warn_if_rendered_unlike_training()

    def on_test_start(self) -> None:
        self._warn_if_rendered_unlike_training()

    def on_predict_start(self) -> None:
        self._warn_if_rendered_unlike_training()

    def _metric(self, stage: str) -> RankingMetrics:
        if stage not in self._metrics:
            split = self.trainer.datamodule.eval_split(stage)
            self._metrics[stage] = RankingMetrics(self.measures, split.qrels, split.query_ids, split.doc_ids)
        return self._metrics[stage].to(self.device)

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        self._metric(stage).update(batch["query_index"], batch["doc_index"], self(batch))

    def _eval_epoch_end(self, stage: str) -> None:
        metric = self._metric(stage)
        if not self.trainer.sanity_checking:
            # Every rank holds the same gathered value already; sync_dist's mean of equal values is that
            # value (one tiny all-reduce), and without it Lightning would advise turning it on.
            for name, value in metric.compute().items():
                self.log(f"{stage}/{name}", value, prog_bar=True, rank_zero_only=False, sync_dist=True)
        metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"query_index": batch["query_index"], "doc_index": batch["doc_index"], "scores": self(batch)}

    # -- inference without Lightning ------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Export backbone (its own format), tokenizer and head to ``folder`` (:mod:`.export`): a new or
        empty folder, or an earlier export with ``overwrite``."""
        from lightning_rank.reranker.export import export_reranker

        return export_reranker(self, folder, overwrite)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, trust_remote_code: bool = False, **backbone_overrides: Any
    ) -> RerankerModule:
        """Load an export written by :meth:`save_pretrained` (safetensors only), in eval mode. Python files
        of the folder run only with ``trust_remote_code=True``, never because its manifest asks."""
        from lightning_rank.reranker.export import load_reranker

        return load_reranker(folder, trust_remote_code, **backbone_overrides)

    @torch.no_grad()
    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 64,
        max_length: int | None = None,
        max_query_length: int | None = None,
        first_stage: Sequence[str] | None = None,
        excerpt: Excerpt | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Relevance scores of (query, document) pairs, rendered exactly as in training. ``max_length``,
        ``max_query_length`` and ``excerpt`` (the part of a long document read) default to the training's
        data settings, which checkpoints and exports keep (``input_format``; 256, 64 and ``first`` for a model
        not trained here). A backbone whose template shows first-stage scores (``pair+score``) needs each
        pair's as text (``first_stage``), scaled as in training: ``datamodules.first_stage.score_texts``.
        ``progress``: a progress bar over the batches, on stderr."""
        from lightning_rank.datamodules.collate import PairCollator

        if len(queries) != len(documents) or (first_stage is not None and len(first_stage) != len(queries)):
            given = f", {len(first_stage)} first-stage scores" if first_stage is not None else ""
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents{given}: one per pair")
        trained = self.input_format or InputFormat()
        collate = PairCollator(
            self.backbone.tokenizer,
            self.backbone.template,
            trained.max_length if max_length is None else max_length,
            trained.max_query_length if max_query_length is None else max_query_length,
            excerpt=trained.excerpt if excerpt is None else excerpt,
        )
        # batches of similar lengths pad less; a pair's score does not depend on its batch
        order = sorted(range(len(documents)), key=lambda i: len(documents[i]) + len(queries[i]))
        scores = torch.empty(len(order))
        starts = range(0, len(order), batch_size)
        if progress:
            starts = track(starts, description="scoring", transient=True, console=Console(stderr=True))
        for start in starts:
            rows = order[start : start + batch_size]
            shown = [first_stage[i] for i in rows] if first_stage is not None else None
            batch = collate([queries[i] for i in rows], [documents[i] for i in rows], shown)
            tensors = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
            scores[rows] = self._score(tensors).float().cpu()
        return scores

    # -- optimization ------------------------------------------------------------------------------------
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: weight decay on matrices; none on biases, norms and the
        parameters a backbone marks ``_no_weight_decay`` (Mamba's ``A_log``, ``D``, ``dt_bias``, as in
        mamba_ssm)."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                exempt = _unwrapped_name(name) in self._no_decay_names
                (no_decay if exempt else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def default_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with ``lr``; the fused CUDA implementation (one kernel a step) when weights are on a GPU."""
        groups = self.optimizer_param_groups()
        on_cuda = all(p.is_cuda for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=self.hparams.lr, fused=on_cuda or None)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.optimizer_param_groups())
        else:
            optimizer = self.default_optimizer()
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = self.hparams.warmup
        warmup_steps = int(warmup * total) if warmup < 1 else int(warmup)
        scheduler = LambdaLR(optimizer, _linear_warmup_decay(warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _check_ranges(lr: float, warmup: float, weight_decay: float, cuda_graph_limit: int) -> None:
    """Negative rates and a graph limit below 1 fail at configuration, before the backbone is built."""
    check_sizes("model.", minimum=0, lr=lr, warmup=warmup, weight_decay=weight_decay)
    check_at_least("model.cuda_graph_limit", cuda_graph_limit, 1)


def _unwrapped_name(name: str) -> str:
    """A parameter's name as in the unwrapped model (FSDP1 and activation checkpointing insert segments)."""
    for segment in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(segment, "")
    return name


def _rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), Python and NumPy generator states, as tensors and plain Python values only so
    that the checkpoint still loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _linear_warmup_decay(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor
