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
from pathlib import Path

import ir_datasets
import requests
from ir_datasets.datasets.base import Dataset, FilteredQueries
from ir_datasets.datasets.beir import BeirDocs, BeirQrels, BeirQueries, BeirTitleDoc
from ir_datasets.formats import GenericDoc, GenericQuery, TrecScoredDocs, TsvDocPairs
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


def register_beir_folder(name: str, folder: str | os.PathLike) -> list[str]:
    """Register a BEIR-format folder under ``name``; returns the dataset ids it added.

    Re-registering the same folder under the same name is a no-op; another folder under a taken name is an
    error (ids must mean one thing within a process).
    """
    folder = Path(folder).expanduser().resolve()
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a BEIR-format folder: missing {', '.join(missing)}. Expected corpus.jsonl, "
            "queries.jsonl and qrels/<split>.tsv (as BEIR ships them)."
        )
    marker = f"lightning-rank:{folder}"
    existing = _registered().get(name)
    if existing is not None:
        if getattr(existing, "_lightning_rank_source", None) == marker:
            return _ids_of(name)
        raise ValueError(f"dataset id {name!r} is already registered (by ir_datasets or another folder)")

    namespace = f"lightning-rank-local/{name}-{_fingerprint(folder / 'corpus.jsonl')}"
    doc_type = BeirTitleDoc if _has_title(folder / "corpus.jsonl") else GenericDoc
    docs = BeirDocs(namespace, LocalDownload(folder / "corpus.jsonl"), doc_type)
    queries = BeirQueries(namespace, LocalDownload(folder / "queries.jsonl"), GenericQuery)
    _register(name, Dataset(docs, queries), marker)
    for qrels_file in sorted((folder / "qrels").glob("*.tsv")):
        split = qrels_file.stem
        qrels = BeirQrels(LocalDownload(qrels_file), qrels_defs={})
        parts = [docs, FilteredQueries(queries, functools.partial(_qids_of, qrels), mode="include"), qrels]
        run_file = folder / "runs" / f"{split}.trec"
        if run_file.is_file():
            parts.append(TrecScoredDocs(LocalDownload(run_file)))
        pairs_file = folder / "docpairs" / f"{split}.tsv"
        if pairs_file.is_file():
            parts.append(TsvDocPairs(LocalDownload(pairs_file)))
        _register(f"{name}/{split}", Dataset(*parts), marker)
    return _ids_of(name)


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
