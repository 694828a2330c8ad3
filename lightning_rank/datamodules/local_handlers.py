"""ir_datasets handlers of local files (documents, queries, qrels, runs, docpairs), each read by our checked
reader (:func:`.file_checks.records`), so duplicates keep their first copy in every reader."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import ir_datasets
from ir_datasets.datasets.beir import BeirTitleDoc
from ir_datasets.formats import (
    BaseDocPairs,
    BaseDocs,
    BaseQrels,
    BaseQueries,
    BaseScoredDocs,
    GenericDoc,
    GenericDocPair,
    GenericQuery,
    GenericScoredDoc,
    TrecQrel,
)
from ir_datasets.indices import DEFAULT_DOCSTORE_OPTIONS, PickleLz4FullStore

from lightning_rank.datamodules.file_checks import check, records


class LocalDocs(BaseDocs):
    """Documents of a local .jsonl or .tsv file, read by our checked reader (first copy of a duplicate id
    kept); the docstore lives in ir_datasets' home rather than beside the (maybe read-only) file."""

    def __init__(self, path: Path, namespace: str) -> None:
        super().__init__()
        self._path, self._namespace = path, namespace
        self._store_path = Path(ir_datasets.util.home_path()) / namespace / "docs.pklz4"

    def docs_iter(self):
        return iter(self.docs_store())

    def docs_cls(self) -> type:
        return BeirTitleDoc if check(self._path, "documents").titles else GenericDoc

    def docs_store(self, field: str = "doc_id", options=DEFAULT_DOCSTORE_OPTIONS) -> PickleLz4FullStore:
        return PickleLz4FullStore(
            path=str(self._store_path),
            init_iter_fn=self._docs,
            data_cls=self.docs_cls(),  # checks the file before the store is built
            lookup_field=field,
            index_fields=["doc_id"],
            options=options,
        )

    def _docs(self) -> Iterator[GenericDoc | BeirTitleDoc]:
        titles = self.docs_cls() is BeirTitleDoc
        for doc_id, text, title in records(self._path, "documents"):
            yield BeirTitleDoc(doc_id, text, title or "") if titles else GenericDoc(doc_id, text)

    def docs_count(self) -> int | None:
        store = self.docs_store()
        return store.count() if store.built() else None

    def docs_namespace(self) -> str:
        return self._namespace


class LocalQueries(BaseQueries):
    """Queries of a local .jsonl or .tsv file (first copy of a duplicate id kept)."""

    def __init__(self, path: Path, namespace: str) -> None:
        super().__init__()
        self._path, self._namespace = path, namespace

    def queries_iter(self) -> Iterator[GenericQuery]:
        return (GenericQuery(*record) for record in records(self._path, "queries"))

    def queries_namespace(self) -> str:
        return self._namespace


class LocalQrels(BaseQrels):
    """Qrels of a local file: TREC, 3 columns or BEIR TSV with its header (first copy of a duplicate kept)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def qrels_iter(self) -> Iterator[TrecQrel]:
        return (TrecQrel(*record) for record in records(self._path, "qrels"))

    def qrels_path(self) -> str:
        return str(self._path)

    def qrels_cls(self) -> type:
        return TrecQrel

    def qrels_defs(self) -> dict:
        return {}


class LocalRun(BaseScoredDocs):
    """A local TREC run file (``qid Q0 docid rank score [tag]``), checked; entries as the file lists them."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._path = Path(path)

    def scoreddocs_iter(self) -> Iterator[GenericScoredDoc]:
        return (GenericScoredDoc(*record) for record in records(self._path, "run"))

    def scoreddocs_path(self) -> str:
        return str(self._path)


class LocalDocPairs(BaseDocPairs):
    """Local docpairs, ``qid<TAB>positive<TAB>negative`` lines, checked."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def docpairs_iter(self) -> Iterator[GenericDocPair]:
        return (GenericDocPair(*record) for record in records(self._path, "docpairs"))

    def docpairs_path(self) -> str:
        return str(self._path)
