"""First-stage runs read for training and reranking: a split's run entries (a run file or the dataset's
scoreddocs), each query's top-k by score in bounded memory, and the refusal of a document listed twice."""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning_rank.datamodules.collections import local_files
from lightning_rank.datamodules.local_handlers import LocalRun
from lightning_rank.errors import ConfigError, DataFileError, DataFileNotFoundError


def run_file_path(run_file: str, option: str) -> Path:
    """The path of a run file given as ``data.<option>``, which must exist."""
    path = Path(run_file).expanduser()
    if not path.is_file():
        raise DataFileNotFoundError(f"data.{option}: run file {path} does not exist")
    return path


def run_entries(dataset: Any, dataset_id: str, run_file: str | None, option: str) -> Iterator[Any]:
    """The run's entries: those of ``run_file`` if given (checked by our reader), else the dataset's
    scoreddocs; a dataset without either is refused, naming the option to set."""
    if run_file is not None:
        return LocalRun(run_file_path(run_file, option)).scoreddocs_iter()
    if not dataset.has_scoreddocs():
        raise ConfigError(
            f"{dataset_id} has no first-stage run: set data.{option} to a TREC run file "
            "(build one with `lightning-rank bm25`)"
        )
    return dataset.scoreddocs_iter()


def ranked(scoreddocs: Iterator[Any], depth: int, source: str | Path = "the run") -> list[tuple[str, str]]:
    """Top-``depth`` (query, doc) pairs per query by descending score (ties: doc id descending, as
    trec_eval), queries in first-seen order. Memory is bounded by queries x depth, not by the run's size
    (MS MARCO's BM25 train run has ~800M lines)."""
    return ranked_scores(scoreddocs, depth, source=source)[0]


def ranked_scores(
    scoreddocs: Iterator[Any],
    depth: int,
    also: Mapping[str, Collection[str]] | None = None,
    source: str | Path = "the run",
) -> tuple[list[tuple[str, str]], dict[str, dict[str, float]]]:
    """:func:`ranked` and the scores of its pairs, plus those of the ``also`` documents of each query
    (judged positives) wherever the run ranks them. The candidates every rerank takes (``predict`` here,
    ``lightning-rank rerank``).

    A document listed twice for one query is refused (:class:`DataFileError` naming ``source``, a file or
    a dataset id), as ``lightning-rank rerank`` and trec_eval refuse it: which of its scores counts is
    ambiguous. It is found within each query's consecutive lines (runs list a query's documents together)
    and against each query's top ``depth`` so far, so memory stays bounded by queries x depth."""
    heaps: dict[str, list[tuple[float, str]]] = {}
    kept: dict[str, set[str]] = {}  # the documents in each query's heap
    extra: dict[str, dict[str, float]] = {}
    current, consecutive = None, set()  # the query of the last lines and the documents they listed
    for sd in scoreddocs:
        qid, doc = sd.query_id, sd.doc_id
        if qid != current:
            current, consecutive = qid, set()
        heap, in_heap = heaps.setdefault(qid, []), kept.setdefault(qid, set())
        if doc in consecutive or doc in in_heap:
            raise _duplicate_entry(source, qid, doc)
        consecutive.add(doc)
        item = (sd.score, doc)
        if len(heap) < depth:
            heapq.heappush(heap, item)
            in_heap.add(doc)
        elif item > heap[0]:
            in_heap.discard(heapq.heapreplace(heap, item)[1])
            in_heap.add(doc)
        if also is not None and doc in also.get(qid, ()):
            extra.setdefault(qid, {})[doc] = sd.score
    pairs = [(q, d) for q, heap in heaps.items() for _, d in sorted(heap, reverse=True)]
    scores = {q: {d: s for s, d in heap} for q, heap in heaps.items()}
    for qid, docs in extra.items():
        scores[qid].update(docs)
    return pairs, scores


def run_source(dataset: Any, dataset_id: str, run_file: str | None) -> str | Path:
    """What a duplicate run entry is reported in: the run file (given, or a local collection's), else the
    dataset's run by id."""
    if run_file is not None:
        return Path(run_file).expanduser()
    if local_files(dataset_id):
        with contextlib.suppress(AttributeError, NotImplementedError):
            return Path(dataset.scoreddocs_handler().scoreddocs_path())
    return f"the run (scoreddocs) of {dataset_id}"


def _duplicate_entry(source: str | Path, qid: str, doc: str) -> DataFileError:
    where = str(source)
    if isinstance(source, Path) and source.is_file():
        where += f":{_second_line(source, qid, doc)}"
    return DataFileError(
        f"{where}: document {doc!r} is listed twice for query {qid!r}. A run lists each document once per "
        "query (`lightning-rank rerank` and trec_eval refuse a repeat too): remove the later line."
    )


def _second_line(path: Path, qid: str, doc: str) -> int | str:
    """The line number of the second ``qid ... doc`` line of a TREC run file ('?' if not found)."""
    seen = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) >= 3 and fields[0] == qid and fields[2] == doc:
                seen += 1
                if seen == 2:
                    return number
    return "?"
