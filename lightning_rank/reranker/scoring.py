"""How the reranker scores (query, document) pairs: ``head(pool(backbone(render(q, d))))`` in fp32, the head
a new ``Linear(hidden, 1)`` or a sequence-classification checkpoint's own classifier.

Over collated batches (padded rows, length buckets, packed rows; through CUDA graphs when training with
them), and over raw texts without Lightning (:meth:`PairScorer.score`), rendered as training rendered them:
the model's ``input_format``, which checkpoints and export folders keep. The export folder itself is
:mod:`.export`; ``save_pretrained`` and ``from_pretrained`` are its entry points on the module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self, get_args

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from rich.console import Console
from rich.progress import track
from torch import Tensor, nn

from lightning_rank.backbones.base import Backbone
from lightning_rank.backbones.classifier_heads import ClassifierHead
from lightning_rank.backbones.registry import build_backbone
from lightning_rank.datamodules.batch import PackedRows, PaddedRows, PairBatch
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.errors import ConfigError
from lightning_rank.reranker.cuda_graphs import PACKING_CONFLICT, TrainingGraphs, check_cuda_graphs
from lightning_rank.reranker.export import export_reranker
from lightning_rank.reranker.export_reader import read_export
from lightning_rank.text.excerpts import Excerpt
from lightning_rank.text.input_format import InputFormat
from lightning_rank.text.passages import Passages, combine_windows

InitHead = Literal["auto", "pretrained", "fresh"]


def choose_head(backbone: Backbone, init_head: InitHead) -> nn.Module:
    """The head, pooled ``[B, H]`` -> ``[B, 1]``: the checkpoint's classifier (``pretrained``, or ``auto``
    when it has one) or a new ``Linear(hidden, 1)`` (``fresh``, or ``auto`` without one). A classifier that
    does not map is an error unless ``fresh``; the head used is logged whenever the checkpoint has one."""
    if init_head not in get_args(InitHead):
        raise ConfigError(
            f"model.init_head must be one of {', '.join(get_args(InitHead))}, got {init_head!r}"
        )
    offered = backbone.pretrained_head()
    if init_head == "fresh" or (offered is None and init_head == "auto"):
        if offered is not None:
            rank_zero_info(
                f"head: a new Linear, as model.init_head is 'fresh'; not the classifier of {offered.found}"
            )
        return nn.Linear(backbone.hidden_size, 1)
    if offered is None:
        raise ConfigError(
            f"model.init_head is 'pretrained' but {type(backbone).__name__} loaded no sequence-classification"
            f" checkpoint (backbone_args.pretrained: {getattr(backbone, 'pretrained', None)!r}): pass one,"
            " such as a cross-encoder, or set model.init_head to 'auto' or 'fresh'"
        )
    if offered.head is None:
        raise ConfigError(
            f"the classifier of {offered.found} cannot be the reranker's head: {offered.problem}; or set "
            "model.init_head: fresh to train a new head on its encoder"
        )
    rank_zero_info(f"head: the classifier of {offered.found}")
    return offered.head


class PairScorer:
    """RerankerModule's scoring: it provides ``hparams``, ``training``, ``device`` and the LightningModule's
    trainer; :meth:`_build_scorer` adds the backbone and the head."""

    backbone: Backbone
    head: nn.Module  # pooled [B, H] -> [B, 1], fp32
    # how training rendered pairs: set by `fit` from the data module, kept in checkpoints and exports, the
    # default of `score()`; None for a model that has not been trained here
    input_format: InputFormat | None

    def _build_scorer(
        self, backbone: str, backbone_args: dict[str, Any] | None, init_head: InitHead = "auto"
    ) -> None:
        """The backbone (``backbone``'s entry point or import path, built with ``backbone_args``) and the
        head (:func:`choose_head`); no graph captured and no input format known yet."""
        self.backbone = build_backbone(backbone, backbone_args)
        self.head = choose_head(self.backbone, init_head)
        self._graphs: TrainingGraphs | None = None
        self.input_format = None

    # -- collated batches --------------------------------------------------------------------------------
    def forward(self, batch: PairBatch) -> Tensor:
        """One relevance score per pair of the batch (fp32); a document split into windows
        (``data.passages``) gets its windows' scores combined as the batch says."""
        scores = self._row_scores(batch)
        if "passage_owner" not in batch:
            return scores
        return combine_windows(batch["passage_mode"], scores, batch["passage_owner"])

    def _row_scores(self, batch: PairBatch) -> Tensor:
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

    def _score(self, batch: PaddedRows, graphs: TrainingGraphs | None = None) -> Tensor:
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

    def _score_packed(self, batch: PackedRows) -> Tensor:
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
            dtype = next(self.head.parameters()).dtype
            return self.head(pooled.to(dtype)).squeeze(-1).float()

    def _training_graphs(self) -> TrainingGraphs | None:
        """The graph cache when training with ``cuda_graphs`` (built on first use), else None."""
        if not (self.hparams.get("cuda_graphs") and self.training and torch.is_grad_enabled()):
            return None
        if self._graphs is None:
            # the CLI checks before fit; this covers the Python API and hand-written loops
            check_cuda_graphs(self.device, self._trainer.strategy if self._trainer is not None else None)
            self._graphs = TrainingGraphs(self, self._score_tensors, limit=self.hparams.cuda_graph_limit)
        return self._graphs

    # -- rendering as in training ------------------------------------------------------------------------
    def _data_input_format(self) -> InputFormat | None:
        """How the trainer's data module renders pairs, if it is ours."""
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

    # -- inference without Lightning ---------------------------------------------------------------------
    def save_pretrained(
        self, folder: str | os.PathLike, overwrite: bool = False, format: str = "native"
    ) -> Path:
        """Export backbone (its own format), tokenizer and head to ``folder`` (:mod:`.export`): a new or
        empty folder, or an earlier export with ``overwrite``. ``format`` ``hf`` / ``sentence-transformers``
        writes a folder those libraries load, where the model maps onto one exactly."""
        return export_reranker(self, folder, overwrite, format)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, trust_remote_code: bool = False, **backbone_overrides: Any
    ) -> Self:
        """Load an export written by :meth:`save_pretrained` (safetensors only), in eval mode: a local
        folder or a Hugging Face hub id (offline: its cached snapshot, else an error naming the id). Python
        files of the folder run only with ``trust_remote_code=True``, never because its manifest asks."""
        exported = read_export(folder, trust_remote_code, **backbone_overrides)
        module = cls(backbone=exported.backbone, backbone_args=exported.backbone_args, init_head="fresh")
        if exported.backbone_state is not None:
            module.backbone.load_state_dict(exported.backbone_state)
        if exported.head_form is not None:
            module.head = ClassifierHead(module.backbone.hidden_size, exported.head_form)
        module.head.load_state_dict(exported.head_state)
        if exported.input_format is not None:
            module.input_format = exported.input_format
        return module.eval()

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
        passages: Passages | dict[str, Any] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Relevance scores of (query, document) pairs, rendered exactly as in training. ``max_length``,
        ``max_query_length`` and ``excerpt`` (the part of a long document read) default to the training's
        data settings, which checkpoints and exports keep (``input_format``; 256, 64 and ``first`` for a model
        not trained here). A backbone whose template shows first-stage scores (``pair+score``) needs each
        pair's as text (``first_stage``), scaled as in training: ``datamodules.first_stage.score_texts``.
        ``passages`` (windows of long documents, their scores combined) defaults to the training's too.
        ``progress``: a progress bar over the batches, on stderr."""
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
            passages=trained.passages if passages is None else Passages.of(passages),
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
            tensors = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            scores[rows] = self.forward(tensors).float().cpu()
        return scores
