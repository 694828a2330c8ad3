"""RerankerModule: backbone + pooled state + a head (fp32; a new ``Linear(hidden, 1)`` or a checkpoint's own
classifier), a ranking loss and metrics.

The LightningModule itself: its settings, the training step and evaluation. How it scores pairs (batches,
CUDA graphs, raw texts, its export folder) is :class:`.scoring.PairScorer`; what a fit needs around the step
(frozen and LoRA parameters, sharding, optimizer and schedule, the non-finite loss stop, exact resume) is
:class:`.training.TrainingHooks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_rank.datamodules.batch import EvalBatch, TrainBatch
from lightning_rank.losses import GroupCrossEntropy, RankingLoss
from lightning_rank.metrics import (
    DEFAULT_MEASURES,
    Evaluation,
    JudgedQueries,
    RankingMetrics,
    check_judged_queries,
    parse_measures,
)
from lightning_rank.reranker.lora import LoraSettings
from lightning_rank.reranker.scoring import InitHead, PairScorer
from lightning_rank.reranker.training import TrainingHooks, check_training_settings


class RerankerModule(PairScorer, TrainingHooks, pl.LightningModule):
    """A cross-encoder reranker: ``score(q, d) = head(pool(backbone(render(q, d))))``.

    Training contrasts each group's positive against its hard negatives with ``loss``; validation and test
    rerank a run's top-k and report ``measures`` (ir_measures names, computed as trec_eval does) over all
    queries gathered from all ranks.
    """

    def __init__(
        self,
        backbone: str = "mamba1",
        backbone_args: dict[str, Any] | None = None,
        init_head: InitHead = "auto",
        loss: RankingLoss = lazy_instance(GroupCrossEntropy),  # noqa: B008 (jsonargparse prints it)
        measures: Sequence[str] = DEFAULT_MEASURES,
        judged_queries: JudgedQueries = "all",
        optimizer: OptimizerCallable | None = None,
        warmup: float = 0.1,
        scheduler: str = "linear",
        scheduler_args: dict[str, Any] | None = None,
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
            init_head: where the scoring head starts: ``auto`` takes the classifier of a
                sequence-classification ``pretrained`` checkpoint (a cross-encoder such as monoBERT) and
                else a new ``Linear(hidden, 1)``; ``pretrained`` requires such a classifier; ``fresh``
                always starts a new head. The head used is logged.
            loss: the training loss (``GroupCrossEntropy`` is localized contrastive estimation).
            measures: ir_measures names reported in validation and test, e.g. ``nDCG@10``, ``RR@10``.
            judged_queries: which queries those averages are over: ``all`` judged queries of the split, one
                the run has no candidate for scoring 0 (``trec_eval -c``), or ``ranked`` (only those the
                run ranks: trec_eval without ``-c``). The count is printed with the metrics.
            optimizer: optimizer factory (class path + init args); default AdamW with ``lr`` and
                ``weight_decay`` (no decay on biases and norms).
            warmup: warm-up length: a fraction of the total steps if < 1, else a step count.
            scheduler: the learning-rate schedule, one of ``transformers.get_scheduler``'s that step with the
                batch: ``linear`` (rises over the warm-up, then decays linearly to 0 at the last step),
                ``cosine``, ``constant_with_warmup``, ``constant``, ``polynomial``, ``inverse_sqrt``, ... The
                learning rate is logged as ``train/lr``.
            scheduler_args: the schedule's other arguments, e.g. ``{num_cycles: 2}`` for
                ``cosine_with_restarts`` or ``{power: 2.0}`` for ``polynomial``.
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
        check_training_settings(lr, warmup, weight_decay, cuda_graph_limit, scheduler, scheduler_args)
        if isinstance(lora, dict):  # as stored in a checkpoint's hyper-parameters
            lora = LoraSettings(**lora)
        self.save_hyperparameters(ignore=["loss", "optimizer"])
        if lora is not None:
            # plain values only: checkpoints must load with torch.load(weights_only=True)
            self.hparams["lora"] = dataclasses.asdict(lora)
        self._build_scorer(backbone, backbone_args, init_head)
        self.loss = loss
        self.measures = list(measures)
        self.optimizer_factory = optimizer
        self._prepare_training(frozen, lora)
        # transformers' from_pretrained returns modules in eval mode and Lightning keeps each module's mode:
        # without this, dropout would be silently off while fine-tuning a pretrained backbone.
        self.train()
        parse_measures(self.measures)  # unknown measure names fail here, before any data is read
        check_judged_queries(judged_queries)
        self.judged_queries: JudgedQueries = judged_queries
        self._metrics: dict[str, RankingMetrics] = {}
        #: the last validation/test of each stage: ``{stage: {set name: Evaluation}}`` (per-query values)
        self.evaluations: dict[str, dict[str, Evaluation]] = {}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written before ``init_head`` existed holds a new Linear head, whatever its backbone's
        checkpoint offered: the head is rebuilt so to take its weights."""
        super().on_load_checkpoint(checkpoint)
        if "init_head" not in checkpoint.get("hyper_parameters", {}) and not isinstance(self.head, nn.Linear):
            self.head = nn.Linear(self.backbone.hidden_size, 1)
            self.hparams["init_head"] = "fresh"

    # -- training ----------------------------------------------------------------------------------------
    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        """The loss of one batch of groups: each positive's score against its group's negatives."""
        labels = batch["labels"]
        scores = self(batch).view_as(labels)
        loss = self.loss(scores, labels, batch.get("teacher_scores"))
        self._watch_loss(loss, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.size(0))
        self._log_lr(labels.size(0))
        return loss

    # -- evaluation --------------------------------------------------------------------------------------
    def on_validation_start(self) -> None:
        self._warn_if_rendered_unlike_training()

    def on_test_start(self) -> None:
        self._warn_if_rendered_unlike_training()

    def on_predict_start(self) -> None:
        self._warn_if_rendered_unlike_training()

    def _metric(self, stage: str, index: int = 0) -> RankingMetrics:
        key = f"{stage}/{index}"
        if key not in self._metrics:
            split = self.trainer.datamodule.eval_split(stage, index)
            self._metrics[key] = RankingMetrics(
                self.measures, split.qrels, split.query_ids, split.doc_ids, self.judged_queries
            )
        return self._metrics[key].to(self.device)

    def _eval_step(self, batch: EvalBatch, stage: str, index: int = 0) -> None:
        self._metric(stage, index).update(batch["query_index"], batch["doc_index"], self(batch))

    def _eval_epoch_end(self, stage: str) -> None:
        """Log the first set's metrics as ``<stage>/<measure>`` and, for sets of ``data.<stage>_datasets``,
        each set's as ``<stage>/<set name>/<measure>``; print each set's with its query counts."""
        data = self.trainer.datamodule
        sets, by_name = data.eval_sets(stage), data.logs_by_name(stage)
        if not self.trainer.sanity_checking:
            self.evaluations[stage] = {}
        for index, chosen in enumerate(sets):
            metric = self._metric(stage, index)
            if not self.trainer.sanity_checking:
                evaluation = metric.evaluate()
                self.evaluations[stage][chosen.name] = evaluation
                names = [f"{stage}/{chosen.name}/"] if by_name else []
                for prefix in ([f"{stage}/"] if index == 0 else []) + names:
                    # Every rank holds the same gathered value already; sync_dist's mean of equal values is
                    # that value (one tiny all-reduce), and without it Lightning would advise turning it on.
                    for name, value in evaluation.values.items():
                        self.log(
                            prefix + name, value, prog_bar=prefix == f"{stage}/", rank_zero_only=False,
                            sync_dist=True, add_dataloader_idx=False,
                        )  # fmt: skip
                label = f"{stage} {chosen.name}" if by_name else stage
                rank_zero_info(f"{label} metrics {evaluation.summary()}")
            metric.reset()

    def validation_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        return {"query_index": batch["query_index"], "doc_index": batch["doc_index"], "scores": self(batch)}
