"""The training index of a split: judged positives with negatives from a first-stage run (or the dataset's
docpairs), teacher scores for distillation, and the score texts of templates that show them. What the data
cannot give is reported once (:mod:`.reports`); no trainable query at all is an error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lightning.pytorch.utilities.parsing import AttributeDict

from lightning_rank.datamodules.collections import load_dataset, reading
from lightning_rank.datamodules.documents import DocumentLookup, query_texts
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.datamodules.first_stage_runs import (
    ranked,
    ranked_scores,
    run_entries,
    run_file_path,
    run_source,
)
from lightning_rank.datamodules.groups import (
    SkipReport,
    TrainingQuery,
    build_training_index,
    docpairs_as_qrels_and_run,
    fill_unscored,
)
from lightning_rank.datamodules.reports import report_empty_texts, report_short_runs, report_skips
from lightning_rank.errors import ConfigError, DataError
from lightning_rank.runs import Run
from lightning_rank.text.score_text import score_texts


@dataclass
class TrainingData:
    """What the training stream of a split is built from."""

    index: list[TrainingQuery]
    report: SkipReport
    queries: dict[str, str]
    documents: DocumentLookup
    teacher: Run | None  # data.teacher_run's scores
    first_stage: dict[str, dict[str, str]] | None  # score texts, for templates that show them


def build_training_data(hp: AttributeDict, shows_scores: bool) -> TrainingData:
    """Read ``hp.train_dataset`` (the data module's options) into a training index and report what was
    skipped; ``shows_scores``: the backbone's template shows first-stage scores."""
    dataset = load_dataset(hp.train_dataset)
    documents = DocumentLookup(hp.train_dataset)
    empty_docs: set[str] = set()

    def existing(doc_ids: Iterable[str]) -> set[str]:
        present, empty = documents.existing_and_empty(doc_ids)
        empty_docs.update(empty)
        return present

    first_stage = None
    with reading(hp.train_dataset, hp.train_run, hp.teacher_run):
        teacher = read_trec_run(run_file_path(hp.teacher_run, "teacher_run")) if hp.teacher_run else None
        queries = query_texts(dataset)
        qrels = dataset.qrels_dict() if dataset.has_qrels() else {}
        if hp.train_source == "docpairs":
            if shows_scores:
                raise ConfigError(
                    "the backbone's template shows first-stage scores, which docpairs do not have: use "
                    "data.train_source: run with a scored run, or a template without scores"
                )
            if not dataset.has_docpairs():
                raise ConfigError(f"{hp.train_dataset} has no docpairs; use data.train_source: run")
            pairs = ((p.query_id, p.doc_id_a, p.doc_id_b) for p in dataset.docpairs_iter())
            qrels, run = docpairs_as_qrels_and_run(pairs, qrels)
        else:
            scoreddocs = run_entries(dataset, hp.train_dataset, hp.train_run, "train_run")
            source = run_source(dataset, hp.train_dataset, hp.train_run)
            if shows_scores:  # scaled over the top rerank_depth, as in reranking; positives' own too
                positives = {
                    q: {d for d, r in docs.items() if r >= hp.min_relevance} for q, docs in qrels.items()
                }
                run, scores = ranked_scores(
                    scoreddocs, max(hp.negatives_depth, hp.rerank_depth), also=positives, source=source
                )
                first_stage = score_texts(scores, hp.rerank_depth)
            else:
                run = ranked(scoreddocs, hp.negatives_depth, source)
        if teacher is not None and hp.teacher_missing == "lowest":
            teacher = fill_unscored(teacher, qrels, run)
        index, report = build_training_index(
            qrels, run, queries, existing, hp.min_relevance, hp.negatives_depth, teacher, first_stage
        )
    if not index:
        raise DataError(
            f"{hp.train_dataset}: no trainable query: every query was skipped ({report.summary()}). "
            "A query needs a judged positive and a negative, both in the corpus."
        )
    report_skips(f"{hp.train_dataset}: {len(index)} training queries", report, training=True)
    used_queries = {q.query_id for q in index}
    used_docs = {d for q in index for d in (*q.positives, *q.negatives)}
    report_empty_texts(
        hp.train_dataset,
        len(empty_docs & used_docs),
        sum(not queries[q].strip() for q in used_queries),
    )
    report_short_runs(hp.train_dataset, index, hp.group_size, hp.positives_per_group)
    return TrainingData(index, report, queries, documents, teacher, first_stage)
