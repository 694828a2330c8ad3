"""``lightning-rank bm25``: a BM25 first-stage run (bm25s) for collections that ship none.

The run is a TREC file used for hard negatives (``data.train_run``) and for reranking in evaluation
(``data.val_run`` / ``test_run`` / ``predict_run``). With qrels, the run is also evaluated and printed.
``--judged true`` adds each query's judged documents that BM25 ranked below ``depth``, with their real score:
a train run then scores every positive, for templates that show first-stage scores and for distillation.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bm25s
import Stemmer

from lightning_rank.commands.report import write_and_report
from lightning_rank.datamodules.collections import load_dataset, register_local, require_dataset
from lightning_rank.errors import DataError, check_at_least, check_between
from lightning_rank.metrics import JudgedQueries, check_judged_queries
from lightning_rank.runs import check_replaceable

log = logging.getLogger(__name__)


def bm25_run(
    dataset: str,
    depth: int = 100,
    k1: float = 0.9,
    b: float = 0.4,
    stemmer: str | None = "english",
    stopwords: str | None = "en",
    judged: bool = False,
    qrels: dict[str, dict[str, int]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Retrieve the top ``depth`` documents of ``dataset``'s corpus for each of its queries; with
    ``judged``, also score each query's judged documents outside them (empty otherwise): ``(top, below)``.
    ``qrels``: the dataset's, where the caller has read them already. A query that shares no term with the
    corpus (stopwords or punctuation only, empty) scores every document 0: its top ranking is empty, its
    judged documents score 0, and one warning counts such queries."""
    ds = load_dataset(dataset)
    doc_ids, texts = [], []
    for doc in ds.docs_iter():
        doc_ids.append(doc.doc_id)
        texts.append(doc.default_text())
    if not doc_ids:
        raise DataError(f"{dataset}: the corpus is empty; nothing to retrieve from")
    queries = {q.query_id: q.default_text() for q in ds.queries_iter()}
    if not queries:
        raise DataError(f"{dataset}: no queries; use a split id (e.g. NAME/test) that has queries")
    stem = Stemmer.Stemmer(stemmer) if stemmer else None

    def tokenize(batch: list[str], return_ids: bool = True):
        return bm25s.tokenize(
            batch, stopwords=stopwords, stemmer=stem, show_progress=False, return_ids=return_ids
        )

    corpus_tokens = tokenize(texts)
    if not corpus_tokens.vocab:
        raise DataError(
            f"{dataset}: no document has an indexable term (every text is empty, stopwords or punctuation); "
            "check the collection's corpus file"
        )
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=False)
    qids = list(queries)
    k = min(depth, len(doc_ids))
    hits, scores = retriever.retrieve(tokenize([queries[q] for q in qids]), k=k, show_progress=False)
    run: dict[str, dict[str, float]] = {}
    for qid, row, row_scores in zip(qids, hits, scores, strict=True):
        run[qid] = {doc_ids[i]: float(s) for i, s in zip(row, row_scores, strict=True) if s > 0}
    words = dict(zip(qids, tokenize([queries[q] for q in qids], return_ids=False), strict=True))
    _report_unmatched(dataset, queries, words, run)
    below: dict[str, dict[str, float]] = {}
    if judged and ds.has_qrels():
        position = {d: i for i, d in enumerate(doc_ids)}
        qrels = ds.qrels_dict() if qrels is None else qrels
        for qid in qids:
            missing = [d for d in qrels.get(qid, {}) if d in position and d not in run[qid]]
            if missing:
                # get_scores fails on a query without terms; from ids, every document scores 0 there
                every_score = retriever.get_scores_from_ids(retriever.get_tokens_ids(words[qid]))
                below[qid] = {d: float(every_score[position[d]]) for d in missing}
    return run, below


def _report_unmatched(
    dataset: str, queries: dict[str, str], words: dict[str, list[str]], run: dict[str, dict[str, float]]
) -> None:
    """One warning counting the queries BM25 ranks nothing for, with examples, when there are any."""
    termless = [q for q in queries if not words[q]]
    unmatched = [q for q in queries if words[q] and not run[q]]
    if not termless and not unmatched:
        return
    examples = ", ".join(f"{q} ({queries[q][:40]!r})" for q in (termless + unmatched)[:3])
    log.warning(
        f"{dataset}: {len(termless)} of {len(queries)} queries have no indexable term (empty, or only "
        f"stopwords, punctuation and one-letter words) and {len(unmatched)} share no term with the corpus, "
        f"e.g. {examples}. BM25 scores every document 0 for them: their ranking is empty (with --judged, "
        "their judged documents are written with score 0)."
    )


def bm25(
    dataset: str,
    output: str,
    depth: int = 100,
    k1: float = 0.9,
    b: float = 0.4,
    stemmer: str | None = "english",
    local_collections: dict[str, Any] | None = None,
    measures: list[str] | None = None,
    tag: str = "bm25",
    judged: bool = False,
    judged_queries: JudgedQueries = "all",
) -> dict[str, float]:
    """Write a BM25 TREC run for the queries of ``dataset`` and, when it has qrels, print its metrics.

    Args:
        dataset: ir_datasets id with docs and queries (``beir/scifact/test``, a registered ``NAME/test``).
        output: TREC run file to write (atomically; its folder is created); an existing file is replaced
            only when it is a run.
        depth: documents retrieved per query.
        k1: BM25 term-frequency saturation (0.9 as Anserini's default).
        b: BM25 length normalisation (0.4 as Anserini's default).
        stemmer: PyStemmer language, or null for none.
        local_collections: ``{name: folder or files}`` collections to register first (see README).
        measures: ir_measures names to report when the dataset has qrels.
        tag: the run tag (last TREC column).
        judged: also write each query's judged documents that rank below ``depth``, with their BM25 score
            (a train run for ``pair+score`` templates or distillation: every positive scored). The printed
            metrics are of the top ``depth`` alone.
        judged_queries: which queries the printed averages are over: ``all`` judged queries of the
            dataset, one the run has no candidate for scoring 0 (``trec_eval -c``), or ``ranked`` (only
            those the run ranks: trec_eval without ``-c``).
    """
    check_at_least("--depth", depth, 1)
    check_at_least("--k1", k1, 0)
    check_between("--b", b, 0, 1)
    check_judged_queries(judged_queries)
    for name, folder in (local_collections or {}).items():
        register_local(name, folder)
    require_dataset(dataset, "--dataset", register_option="--local_collections")
    check_replaceable(output, "run")  # before the index is built
    start = time.perf_counter()
    ds = load_dataset(dataset)
    qrels = ds.qrels_dict() if judged and ds.has_qrels() else None  # read once: the judged run and the report
    top, below = bm25_run(dataset, depth, k1, b, stemmer, judged=judged, qrels=qrels)
    run = {qid: {**docs, **below.get(qid, {})} for qid, docs in top.items()}  # the judged rank below
    # the printed metrics are of the top depth alone, without the judged extras
    return write_and_report(
        run, output, dataset, tag, start, measures, evaluated=top, qrels=qrels, judged_queries=judged_queries
    )
