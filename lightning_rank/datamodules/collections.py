"""Register local BEIR-format folders and the generated demo collection as ir_datasets datasets.

User data, test fixtures and the demo then go through exactly the code that serves MS MARCO: a config
names a dataset id, and :func:`load_dataset` returns the ir_datasets object.

A BEIR folder ``F`` registered as ``NAME`` gives ``NAME`` (docs + queries) and ``NAME/<split>`` for every
``F/qrels/<split>.tsv`` (docs, that split's queries, qrels, scoreddocs when ``F/runs/<split>.trec`` exists,
e.g. written by ``lightning-rank bm25``, and docpairs when ``F/docpairs/<split>.tsv`` holds
``query_id<TAB>positive_doc_id<TAB>negative_doc_id`` lines).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ir_datasets
import requests
from ir_datasets.datasets.base import Dataset, FilteredQueries
from ir_datasets.datasets.beir import BeirDocs, BeirQrels, BeirQueries, BeirTitleDoc
from ir_datasets.formats import (
    GenericDoc,
    GenericQuery,
    TrecQrels,
    TrecScoredDocs,
    TsvDocPairs,
    TsvDocs,
    TsvQueries,
)
from ir_datasets.indices import DEFAULT_DOCSTORE_OPTIONS, PickleLz4FullStore
from ir_datasets.util import LocalDownload

from lightning_rank.datamodules.synthetic import DemoSpec, generate

DEMO_ID = "lightning-rank/demo"
_REQUIRED = ("corpus.jsonl", "queries.jsonl")


class DatasetDownloadError(RuntimeError):
    """An ir_datasets id whose files are not on this machine and could not be downloaded."""


@contextlib.contextmanager
def downloads_fail_fast(dataset_id: str) -> Iterator[None]:
    """Turn ir_datasets' download failures into one clear error: what is missing, where it is kept, how to
    get it. ir_datasets retries 3 times with a 15 s timeout by default; unless the user set
    ``IR_DATASETS_DL_TRIES``, one try is made."""
    os.environ.setdefault("IR_DATASETS_DL_TRIES", "1")
    try:
        yield
    except (
        requests.exceptions.RequestException,
        urllib.error.URLError,
        ConnectionError,
        TimeoutError,
    ) as err:
        url = getattr(getattr(err, "request", None), "url", None) or ""
        raise DatasetDownloadError(
            f"ir_datasets id {dataset_id!r} needs files that are not on this machine and the download "
            f"{url or ''} failed ({type(err).__name__}: no network?). Download the dataset first on a "
            f"machine with network access (e.g. `ir_datasets export {dataset_id} docs > /dev/null`, and "
            f"likewise queries/qrels/scoreddocs) and copy ir_datasets' home, {ir_datasets.util.home_path()} "
            "(set by IR_DATASETS_HOME), to this machine."
        ) from err


class DatasetNotFoundError(KeyError):
    """An ir_datasets id that is neither built into ir_datasets nor registered by lightning-rank."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _registered() -> dict[str, object]:
    return ir_datasets.registry._registered  # no public accessor for the full mapping


def cache_home() -> Path:
    """Where lightning-rank keeps generated collections and docstores (inside ir_datasets' home)."""
    return Path(ir_datasets.util.home_path()) / "lightning-rank"


@dataclass
class LocalFiles:
    """A collection given as files. Docs and queries: ``.tsv`` (``id<TAB>text``) or ``.jsonl`` (BEIR fields:
    ``_id``, ``text``, optional ``title``). Qrels per split: TREC (``qid 0 docid rel``), 3-column TSV, or BEIR
    TSV with its header. Runs per split: TREC run files. Docpairs per split: ``qid<TAB>pos<TAB>neg`` TSV."""

    docs: str
    queries: str
    qrels: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    docpairs: dict[str, str] = field(default_factory=dict)


def register_local(name: str, source: str | os.PathLike | LocalFiles | dict) -> list[str]:
    """Register a BEIR folder (a path) or :class:`LocalFiles` (or its dict) under ``name``."""
    if isinstance(source, dict):
        source = LocalFiles(**source)
    if isinstance(source, LocalFiles):
        return register_files(name, source)
    return register_beir_folder(name, source)


def register_beir_folder(name: str, folder: str | os.PathLike) -> list[str]:
    """Register a BEIR-format folder under ``name``; returns the dataset ids it added."""
    folder = Path(folder).expanduser().resolve()
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a BEIR-format folder: missing {', '.join(missing)}. Expected corpus.jsonl, "
            "queries.jsonl and qrels/<split>.tsv (as BEIR ships them)."
        )
    splits = sorted(f.stem for f in (folder / "qrels").glob("*.tsv"))
    optional = {kind: {s: folder / kind / f"{s}.{ext}" for s in splits} for kind, ext in _EXTRAS.items()}
    files = LocalFiles(
        docs=str(folder / "corpus.jsonl"),
        queries=str(folder / "queries.jsonl"),
        qrels={s: str(folder / "qrels" / f"{s}.tsv") for s in splits},
        **{kind: {s: str(f) for s, f in found.items() if f.is_file()} for kind, found in optional.items()},
    )
    return register_files(name, files)


def register_files(name: str, files: LocalFiles) -> list[str]:
    """Register ``files`` as ``name`` (docs + queries) and ``name/<split>`` for each qrels split.

    Re-registering the same files under the same name is a no-op; other files under a taken name are an
    error (ids must mean one thing within a process). Docstores are built in ir_datasets' home, never
    beside the user's files (which may be read-only).
    """
    docs_path, queries_path = _existing(files.docs, "docs"), _existing(files.queries, "queries")
    marker = f"lightning-rank:{files!r}"
    existing = _registered().get(name)
    if existing is not None:
        if getattr(existing, "_lightning_rank_source", None) == marker:
            return _ids_of(name)
        raise ValueError(f"dataset id {name!r} is already registered (by ir_datasets or other files)")
    namespace = f"lightning-rank-local/{name}-{_fingerprint(docs_path)}"
    docs = _docs_handler(docs_path, namespace)
    queries = _queries_handler(queries_path, namespace)
    _register(name, Dataset(docs, queries), marker)
    for split, qrels_file in sorted(files.qrels.items()):
        qrels = _qrels_handler(_existing(qrels_file, f"qrels[{split}]"))
        parts = [docs, FilteredQueries(queries, functools.partial(_qids_of, qrels), mode="include"), qrels]
        if split in files.runs:
            parts.append(TrecScoredDocs(LocalDownload(_existing(files.runs[split], f"runs[{split}]"))))
        if split in files.docpairs:
            parts.append(TsvDocPairs(LocalDownload(_existing(files.docpairs[split], f"docpairs[{split}]"))))
        _register(f"{name}/{split}", Dataset(*parts), marker)
    return _ids_of(name)


_EXTRAS = {"runs": "trec", "docpairs": "tsv"}


def _existing(path: str | os.PathLike, what: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"local collection {what}: {resolved} does not exist")
    return resolved


class _CachedTsvDocs(TsvDocs):
    """TsvDocs whose docstore lives in ir_datasets' home rather than beside the (maybe read-only) file."""

    def __init__(self, path: Path, namespace: str) -> None:
        super().__init__(LocalDownload(path), namespace=namespace)
        self._store_path = Path(ir_datasets.util.home_path()) / namespace / "docs.pklz4"

    def docs_store(self, field: str = "doc_id", options=DEFAULT_DOCSTORE_OPTIONS) -> PickleLz4FullStore:
        return PickleLz4FullStore(
            path=str(self._store_path),
            init_iter_fn=self.docs_iter,
            data_cls=self.docs_cls(),
            lookup_field=field,
            index_fields=["doc_id"],
            options=options,
        )


def _docs_handler(path: Path, namespace: str):
    if path.suffix == ".jsonl":
        return BeirDocs(namespace, LocalDownload(path), BeirTitleDoc if _has_title(path) else GenericDoc)
    if path.suffix == ".tsv":
        return _CachedTsvDocs(path, namespace)
    raise ValueError(f"{path}: documents must be .jsonl (BEIR fields) or .tsv (id<TAB>text)")


def _queries_handler(path: Path, namespace: str):
    if path.suffix == ".jsonl":
        return BeirQueries(namespace, LocalDownload(path), GenericQuery)
    if path.suffix == ".tsv":
        return TsvQueries(LocalDownload(path), namespace=namespace)
    raise ValueError(f"{path}: queries must be .jsonl (BEIR fields) or .tsv (id<TAB>text)")


def _qrels_handler(path: Path):
    with path.open(encoding="utf-8") as f:
        first = f.readline().split()
    if first[:1] == ["query-id"]:
        return BeirQrels(LocalDownload(path), qrels_defs={})
    if len(first) == 3:
        return TrecQrels(LocalDownload(path), qrels_defs={}, format_3col=True)
    if len(first) == 4:
        return TrecQrels(LocalDownload(path), qrels_defs={})
    raise ValueError(f"{path}:1: qrels lines need 3 (qid docid rel) or 4 (qid 0 docid rel) columns")


def register_demo(spec: DemoSpec | None = None) -> list[str]:
    """Generate (once, in the cache) and register the demo collection as ``lightning-rank/demo``."""
    spec = spec or DemoSpec()
    folder = generate(cache_home() / "demo" / spec.name, spec)
    return register_beir_folder(DEMO_ID, folder)


def load_dataset(dataset_id: str):
    """``ir_datasets.load`` with our collections registered first and a clear error for unknown ids."""
    if (dataset_id == DEMO_ID or dataset_id.startswith(DEMO_ID + "/")) and dataset_id not in _registered():
        register_demo()
    if dataset_id not in _registered():
        close = difflib.get_close_matches(dataset_id, list(_registered()), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DatasetNotFoundError(
            f"unknown ir_datasets id {dataset_id!r}.{hint} Use an id from https://ir-datasets.com, "
            f"{DEMO_ID}/train|dev, or register your own folder with `data.local_collections` "
            "(name: path of a BEIR-format folder)."
        )
    return ir_datasets.load(dataset_id)


def _register(name: str, dataset: Dataset, marker: str) -> None:
    dataset._lightning_rank_source = marker
    ir_datasets.registry.register(name, dataset)


def _ids_of(name: str) -> list[str]:
    return [i for i in _registered() if i == name or i.startswith(name + "/")]


def _qids_of(qrels: BeirQrels) -> set[str]:
    return {q.query_id for q in qrels.qrels_iter()}


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _has_title(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        return "title" in json.loads(first)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:1 is not valid JSON ({err.msg}); each line must be one JSON object"
        ) from err
