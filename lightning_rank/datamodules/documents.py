"""Document and query texts: documents looked up in the ir_datasets docstore (safe in forked DataLoader
workers), queries read from the dataset, and the texts a run lists."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from lightning_rank.datamodules.collections import load_dataset
from lightning_rank.errors import DataError


class DocumentLookup:
    """Texts by doc id (``doc.default_text()``, i.e. ``title text`` for BEIR), one docstore per process.

    The docstore keeps open file handles: each process (main or worker) opens its own, so forked workers
    never share a file offset.
    """

    def __init__(self, dataset_id: str) -> None:
        self.dataset_id = dataset_id
        self._store = None
        self._pid: int | None = None

    def _docstore(self):
        if self._store is None or self._pid != os.getpid():
            self._store = load_dataset(self.dataset_id).docs_store()
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict:
        return {"dataset_id": self.dataset_id, "_store": None, "_pid": None}

    def texts(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Texts of the ids found; missing ids are simply absent."""
        return {d: doc.default_text() for d, doc in self._docstore().get_many(list(doc_ids)).items()}

    def existing_and_empty(self, doc_ids: Iterable[str]) -> tuple[set[str], set[str]]:
        """The ids the corpus holds, and those of them whose text is empty or blank (one bulk lookup)."""
        found = self._docstore().get_many(list(doc_ids))
        return set(found), {d for d, doc in found.items() if not doc.default_text().strip()}


def query_texts(dataset: Any) -> dict[str, str]:
    """``{query id: text}`` of an ir_datasets dataset's queries."""
    return {q.query_id: q.default_text() for q in dataset.queries_iter()}


def run_texts(
    dataset: str, run: Mapping[str, Mapping[str, float]], source: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The query texts and document texts a run over ``dataset`` lists: ``(queries, documents)``. A run with
    queries or documents the dataset lacks (a run made for another dataset) is refused (:class:`DataError`),
    naming examples and the run's file (``source``)."""
    queries = {q.query_id: q.default_text() for q in load_dataset(dataset).queries_iter()}
    missing_queries = sorted(q for q in run if q not in queries)
    if len(missing_queries) == len(run):
        raise DataError(
            f"{source}: none of the run's queries is a query of {dataset}; pass the run of that dataset"
        )
    listed = {d for docs in run.values() for d in docs}
    texts = DocumentLookup(dataset).texts(listed)
    missing_docs = sorted(listed - texts.keys())
    if missing_queries or missing_docs:
        raise DataError(
            f"{source}: the run is not a run over {dataset}: {len(missing_queries)} of its queries and "
            f"{len(missing_docs)} of its documents are not in the dataset (e.g. "
            f"{(missing_queries or missing_docs)[:3]}); pass the dataset the run was made for"
        )
    return {q: queries[q] for q in run}, texts
