"""RerankDataModule: ir_datasets ids (or registered local folders) in, tokenized batches out.

What the data cannot give is reported once per split at setup, on Lightning's console logger, rather than
failing the run: entries naming unknown queries or documents are skipped (a warning with counts), pairs
with empty text are kept and scored (a warning with counts: an empty document is valid reranker input), and
queries with fewer run candidates than a group needs repeat negatives (a warning with the count of queries),
and pairs whose template and query leave ``max_length`` no document token are counted in a warning.
Input that leaves nothing to do or that has no single reading is an error: no trainable query, nothing to
rerank, an empty corpus, a validation/test split without a relevant document, a ``max_length`` the template
fills alone, and a run listing a document twice for a query (refused as ``lightning-rank rerank`` refuses it).
The training index is built in :mod:`.training_setup`, runs are read in :mod:`.first_stage_runs`, and the
messages are :mod:`.reports`'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.collections import (
    load_dataset,
    reading,
    register_local,
    require_dataset,
)
from lightning_rank.datamodules.compatibility import check_model_fits_data
from lightning_rank.datamodules.document_room import check_document_room, report_no_room
from lightning_rank.datamodules.documents import DocumentLookup, query_texts
from lightning_rank.datamodules.eval_sets import EvalSet, EvalSetSpec, eval_sets
from lightning_rank.datamodules.eval_split import EvalSplit, RerankCollator, RerankPairs, build_eval_split
from lightning_rank.datamodules.first_stage_runs import ranked_scores, run_entries, run_source
from lightning_rank.datamodules.groups import NegativeSampling, TeacherMissing
from lightning_rank.datamodules.reports import check_judged, report_empty_texts, report_skips
from lightning_rank.datamodules.stream import ResumableLoader, TrainingGroupStream
from lightning_rank.datamodules.training_setup import build_training_data
from lightning_rank.errors import ConfigError, DataError, check_at_least, check_group_size, check_sizes
from lightning_rank.text.excerpts import Excerpt, check_excerpt
from lightning_rank.text.input_format import check_passages
from lightning_rank.text.passages import Passages
from lightning_rank.text.score_text import score_texts

EVAL_STAGES = ("val", "test", "predict")
_POSITIVE_OPTIONS = (
    "batch_size", "eval_batch_size", "negatives_depth", "rerank_depth", "max_length", "max_query_length",
    "length_buckets", "pad_to_multiple_of",
)  # fmt: skip


class RerankDataModule(pl.LightningDataModule):
    """Training groups from qrels + a first-stage run; validation/test/predict rerank a run's top-k.

    Tokenization follows the backbone of the model being trained (its tokenizer and template), which the
    module reads from the trainer at ``setup``; call :meth:`use_backbone` to use it without a trainer. A
    template that shows first-stage scores (``pair+score``) gets each candidate's score from the run it
    came from, scaled per query over the top ``rerank_depth`` (``first_stage.score_texts``).
    """

    def __init__(
        self,
        train_dataset: str | None = None,
        val_dataset: str | None = None,
        test_dataset: str | None = None,
        predict_dataset: str | None = None,
        train_run: str | None = None,
        val_run: str | None = None,
        test_run: str | None = None,
        predict_run: str | None = None,
        val_datasets: list[EvalSetSpec] | None = None,
        test_datasets: list[EvalSetSpec] | None = None,
        local_collections: dict[str, Any] | None = None,
        train_source: Literal["run", "docpairs"] = "run",
        teacher_run: str | None = None,
        teacher_missing: TeacherMissing = "skip",
        group_size: int = 8,
        positives_per_group: int = 1,
        batch_size: int = 4,
        eval_batch_size: int = 64,
        negatives_depth: int = 100,
        negative_sampling: NegativeSampling = "uniform",
        min_relevance: int = 1,
        rerank_depth: int = 100,
        max_length: int = 256,
        max_query_length: int = 64,
        excerpt: Excerpt = "first",
        passages: Passages | None = None,
        pad_to_multiple_of: int | None = None,
        length_buckets: int = 1,
        packing: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            train_dataset: ir_datasets id with qrels (and scoreddocs unless ``train_run`` is given).
            val_dataset: ir_datasets id whose run top-k is reranked and scored after each epoch.
            test_dataset: as ``val_dataset``, for ``lightning-rank test``.
            predict_dataset: ir_datasets id with queries (+ scoreddocs or ``predict_run``) to rerank.
            train_run: TREC run file whose top ``negatives_depth`` give hard negatives (default: the
                dataset's scoreddocs).
            val_run: TREC run file to rerank for validation (default: the dataset's scoreddocs).
            test_run: TREC run file to rerank for test.
            predict_run: TREC run file to rerank for predict.
            val_datasets: several validation sets instead of ``val_dataset``: a list of ir_datasets ids or
                ``{dataset: ID, run: FILE, name: LABEL}`` mappings (``run`` defaults to the dataset's
                scoreddocs, ``name`` to its id). Each set's metrics are logged as ``val/<name>/<measure>``;
                the first set's also as ``val/<measure>`` (what checkpoints monitor by default).
            test_datasets: as ``val_datasets``, for ``lightning-rank test``.
            local_collections: ``{name: source}`` to register as ir_datasets ids ``name`` and
                ``name/<split>`` before anything is loaded; a source is a BEIR-format folder or files
                (``{docs: .tsv|.jsonl, queries: .tsv|.jsonl, qrels: {split: file}, runs: {split: file}}``).
            train_source: where training groups come from: ``run`` (qrels positives + negatives from the
                run's top ``negatives_depth``) or ``docpairs`` (the dataset's docpairs, e.g.
                ``msmarco-passage/train/triples-small``: doc_a positive, doc_b's the negatives).
            teacher_run: TREC run file whose scores are kept with each group as ``teacher_scores``, for
                distillation losses (MarginMSE, KLDistillation, e.g. the train run itself).
            teacher_missing: documents the teacher did not score: ``skip`` them, or give them the query's
                ``lowest`` teacher score (a truncated first-stage run: its positives outside the top-k).
            group_size: documents per training group: ``positives_per_group`` positives (fewer when the
                query has fewer) + negatives up to ``group_size``.
            positives_per_group: positives per training group, drawn uniformly from the query's and put
                highest grade first; a query with fewer keeps all it has and fills the group with
                negatives. Labels are the positives' qrels grades, 0 for negatives (``lightning_rank.losses``
                says what each loss does with several positives and with grades).
            batch_size: training groups per batch (a batch holds ``batch_size * group_size`` pairs).
            eval_batch_size: pairs per validation/test/predict batch.
            negatives_depth: how deep in the run hard negatives are sampled from.
            negative_sampling: ``uniform`` over the top ``negatives_depth``, or ``top`` (the highest ranked).
            min_relevance: qrels relevance at or above which a document is a positive (its grade is its
                label); judged documents below it (negative "junk" grades too) are negatives, label 0.
            rerank_depth: candidates per query reranked in validation/test/predict; templates that show
                first-stage scores scale each query's scores over this many (training too).
            max_length: tokens per pair; documents are truncated to fit.
            max_query_length: queries are kept whole up to this many tokens.
            excerpt: which part of a document longer than its share of ``max_length`` is read: ``first`` (its
                start) or ``query_biased`` (its first sentence, then the sentences sharing the most query
                terms, in document order; ``lightning_rank.text.excerpts``). Training and reranking alike.
            passages: read long documents as windows, e.g. ``{mode: maxp, length: 64, stride: 32}``
                (``lightning_rank.text.passages``): reranking scores every window of a document and takes
                the first (``firstp``), the highest (``maxp``), the sum or the mean of their scores;
                training reads each document's first window. Default: no windows, the document's start.
            pad_to_multiple_of: pad each batch's length up to a multiple of this (e.g. 8 for tensor cores).
            length_buckets: sort each batch's pairs by length and pad this many buckets separately (the
                model scores them one after the other): less padding on passages of mixed lengths.
            packing: put several pairs in each row of up to ``max_length`` tokens, each seeing only itself
                (``datamodules.packing``): almost no padding; same scores as padded rows. Transformers
                backbones with SDPA or eager attention, Mamba on its PyTorch path; not with
                ``length_buckets`` or ``model.cuda_graphs``.
            num_workers: DataLoader workers (tokenization happens there).
            seed: seeds query order and negative sampling (with the epoch).
        """
        super().__init__()
        check_group_size(group_size, positives_per_group)  # at configuration time, before any data is read
        _check_ranges(locals())
        check_excerpt(excerpt)
        passages = Passages.of(passages)
        check_passages(excerpt, passages)
        check_model_fits_data(None, {"packing": packing, "length_buckets": length_buckets})
        self.save_hyperparameters()
        if passages is not None:  # plain values: checkpoints load with torch.load(weights_only=True)
            self.hparams["passages"] = dataclasses.asdict(passages)
        for name, source in (local_collections or {}).items():
            register_local(name, source)
        self._sets = {
            "val": eval_sets("val", val_dataset, val_run, val_datasets),
            "test": eval_sets("test", test_dataset, test_run, test_datasets),
            "predict": eval_sets("predict", predict_dataset, predict_run, None),
        }
        if train_dataset is not None:  # a mistyped id fails now, before the trainer or any data
            require_dataset(train_dataset, "data.train_dataset")
        for stage, sets in self._sets.items():
            for i, chosen in enumerate(sets):
                option = (
                    f"data.{stage}_datasets[{i}]" if self.logs_by_name(stage) else f"data.{stage}_dataset"
                )
                require_dataset(chosen.dataset, option)
        self._backbone = None
        self._train: TrainingGroupStream | None = None
        self._eval: dict[str, list[EvalSplit]] = {}

    def use_backbone(self, backbone: Any) -> None:
        """Tokenize for ``backbone`` (its tokenizer and template)."""
        self._backbone = backbone

    def _backbone_in_use(self) -> Any:
        backbone = self._backbone
        if backbone is None and self.trainer is not None and self.trainer.lightning_module is not None:
            backbone = self.trainer.lightning_module.backbone
        if backbone is None:
            raise RuntimeError(
                "RerankDataModule needs a backbone: use it with a Trainer or call use_backbone()"
            )
        return backbone

    def _shows_scores(self) -> bool:
        return self._backbone_in_use().template.needs_score

    def check_packing(self, backbone: Any) -> None:
        """With ``packing``, refuse a backbone that cannot score packed rows, naming why and the fix."""
        check_model_fits_data(SimpleNamespace(backbone=backbone), self.hparams)

    def _collator(self, training: bool = False) -> PairCollator:
        """Pairs as the backbone renders them; ``training``: each document's first window only."""
        backbone = self._backbone_in_use()
        self.check_packing(backbone)
        hp = self.hparams
        passages = Passages.of(hp.get("passages"))
        return PairCollator(
            backbone.tokenizer,
            backbone.template,
            hp.max_length,
            hp.max_query_length,
            hp.pad_to_multiple_of,
            hp.length_buckets,
            hp.excerpt,
            hp.get("packing", False),
            passages.for_training if training and passages is not None else passages,
        )

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
        model = self.trainer.lightning_module if self.trainer is not None else None
        check_model_fits_data(model, self.hparams, stage)  # every model x data rule, before data is read
        self._check_document_room()
        if stage == "fit":
            self._setup_train()
            self._setup_eval("val")
        elif stage == "validate":
            self._setup_eval("val")
        elif stage in ("test", "predict"):
            self._setup_eval(stage)

    def _check_document_room(self) -> None:
        check_document_room(self._backbone_in_use(), self.hparams)

    def _report_no_room(
        self, dataset_id: str, queries: list[str], scores: list[str] | None, what: str
    ) -> None:
        report_no_room(self._backbone_in_use(), self.hparams, dataset_id, queries, scores, what)

    def _setup_train(self) -> None:
        hp = self.hparams
        if hp.train_dataset is None:
            raise ConfigError("`fit` needs data.train_dataset (an ir_datasets id with qrels)")
        data = build_training_data(hp, self._shows_scores())
        index, first_stage = data.index, data.first_stage
        widest = {q: max(texts.values(), key=len) for q, texts in (first_stage or {}).items() if texts}
        self._report_no_room(
            hp.train_dataset,
            [data.queries[q.query_id] for q in index],
            [widest.get(q.query_id, "100") for q in index] if first_stage is not None else None,
            "training queries",
        )
        self.train_report = data.report
        self._train = TrainingGroupStream(
            index,
            data.queries,
            data.documents,
            self._collator(training=True),
            hp.group_size,
            hp.batch_size,
            hp.seed,
            hp.negative_sampling,
            data.teacher,
            first_stage,
            hp.positives_per_group,
        )

    def _setup_eval(self, stage: str) -> None:
        sets = self._sets[stage]
        if not sets:
            if stage == "val":
                return
            also = f" or data.{stage}_datasets (a list of them)" if stage != "predict" else ""
            raise ConfigError(f"`{stage}` needs data.{stage}_dataset (an ir_datasets id){also}")
        if stage not in self._eval:
            self._eval[stage] = [self._read_eval_set(stage, i, chosen) for i, chosen in enumerate(sets)]

    def _read_eval_set(self, stage: str, index: int, chosen: EvalSet) -> EvalSplit:
        """Read, check and report one evaluation set."""
        hp = self.hparams
        dataset_id, run_file = chosen.dataset, chosen.run
        plural = self.logs_by_name(stage)
        run_option = f"{stage}_datasets[{index}].run" if plural else f"{stage}_run"
        dataset = load_dataset(dataset_id)
        with reading(dataset_id, run_file):
            queries = query_texts(dataset)
            scoreddocs = run_entries(dataset, dataset_id, run_file, run_option)
            source = run_source(dataset, dataset_id, run_file)
            run, scores = ranked_scores(scoreddocs, hp.rerank_depth, source=source)
            doc_texts = DocumentLookup(dataset_id).texts({d for _, d in run})
            qrels = dataset.qrels_dict() if dataset.has_qrels() else {}
        first_stage = score_texts(scores, hp.rerank_depth) if self._shows_scores() else None
        split = build_eval_split(run, queries, qrels, doc_texts, hp.rerank_depth, first_stage)
        if not split.pairs:
            raise DataError(
                f"{dataset_id}: nothing to rerank: every run entry was skipped ({split.report.summary()}). "
                f"Check that data.{run_option} belongs to this collection."
            )
        report_skips(
            f"{dataset_id}: reranking {len(split.pairs)} pairs of {len(split.query_ids)} queries",
            split.report,
        )
        report_empty_texts(
            dataset_id,
            sum(not t.strip() for t in split.doc_texts),
            sum(not t.strip() for t in split.query_texts),
        )
        if stage in ("val", "test"):
            check_judged(dataset_id, stage, split)
        shown = split.score_texts
        self._report_no_room(
            dataset_id,
            [split.query_texts[q] for q, _ in split.pairs],
            [shown[pair] for pair in split.pairs] if shown is not None else None,
            "pairs",
        )
        return split

    def eval_sets(self, stage: str) -> list[EvalSet]:
        """The evaluation sets of ``stage`` (``val``, ``test`` or ``predict``), in the configured order."""
        return list(self._sets[stage])

    def logs_by_name(self, stage: str) -> bool:
        """Whether ``stage``'s metrics are also logged per set (``data.<stage>_datasets`` gives its sets)."""
        return stage != "predict" and self.hparams.get(f"{stage}_datasets") is not None

    def eval_split(self, stage: str, index: int = 0) -> EvalSplit:
        """The id tables, qrels and pairs of set ``index`` of ``stage`` (``val``, ``test`` or ``predict``)."""
        if stage not in self._eval:
            self._setup_eval(stage)
        return self._eval[stage][index]

    # -- loaders ---------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "setup('fit') first"
        return ResumableLoader(
            self._train,
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer else 0,
            shard_fn=self._shard,
            num_workers=self.hparams.num_workers,
        )

    def _shard(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _eval_loaders(self, stage: str) -> DataLoader | list[DataLoader]:
        """One loader a set; a single set's alone, as Lightning gives it no ``dataloader_idx`` then."""
        loaders = [self._eval_loader(stage, i) for i in range(len(self._sets[stage]))]
        return loaders[0] if len(loaders) == 1 else loaders

    def _eval_loader(self, stage: str, index: int = 0) -> DataLoader:
        split = self.eval_split(stage, index)
        return DataLoader(
            RerankPairs(split),
            batch_size=self.hparams.eval_batch_size,
            shuffle=False,
            collate_fn=RerankCollator(split, self._collator()),
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loaders("val") if self._sets["val"] else []

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        self._setup_eval("test")
        return self._eval_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def _check_ranges(options: Mapping[str, Any]) -> None:
    """Sizes and depths of 0 or below (and negative workers) fail at configuration, naming the option."""
    check_sizes("data.", **{name: options[name] for name in _POSITIVE_OPTIONS})
    check_at_least("data.num_workers", options["num_workers"], 0, "0 tokenizes in the main process")
