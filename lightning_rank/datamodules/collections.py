"""Register local BEIR-format folders and the generated demo collection as ir_datasets datasets.

User data, test fixtures and the demo then go through exactly the code that serves MS MARCO: a config
names a dataset id, and :func:`load_dataset` returns the ir_datasets object.

A BEIR folder ``F`` registered as ``NAME`` gives ``NAME`` (docs + queries) and ``NAME/<split>`` for every
``F/qrels/<split>.tsv`` (docs, that split's queries, qrels, scoreddocs when ``F/runs/<split>.trec`` exists,
e.g. written by ``lightning-rank bm25``, and docpairs when ``F/docpairs/<split>.tsv`` holds
``query_id<TAB>positive_doc_id<TAB>negative_doc_id`` lines).

Local files are read by our own parsers (``lightning_rank.datamodules.files``, ``.file_checks``) through
the handlers of ``.local_handlers``, never by ir_datasets': each file is checked once, mistakes are named
with file and line, and duplicates keep their first copy everywhere.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ir_datasets
import requests
from ir_datasets.datasets.base import Dataset, FilteredQueries

from lightning_rank.datamodules.files import not_utf8, read_qrels
from lightning_rank.datamodules.local_handlers import (
    LocalDocPairs,
    LocalDocs,
    LocalQrels,
    LocalQueries,
    LocalRun,
)
from lightning_rank.datamodules.synthetic import DemoSpec, generate
from lightning_rank.errors import (
    ConfigError,
    DataError,
    DataFileError,
    DataFileNotFoundError,
    DatasetDownloadError,
    DatasetNotFoundError,
)

__all__ = ["DataError", "DataFileError"]  # defined with the readers, raised from here too

DEMO_ID = "lightning-rank/demo"
_REQUIRED = ("corpus.jsonl", "queries.jsonl")


@contextlib.contextmanager
def reading(dataset_id: str, *files: str | os.PathLike | None) -> Iterator[None]:
    """Read ``dataset_id`` (and local ``files`` such as run files) with clear errors: downloads fail fast
    (:func:`downloads_fail_fast`) and a file that is not UTF-8 is named with its line and byte offset."""
    with downloads_fail_fast(dataset_id):
        try:
            yield
        except UnicodeDecodeError as err:
            for path in [*local_files(dataset_id), *(Path(f) for f in files if f)]:
                where = first_invalid_utf8(path)
                if where is not None:
                    raise not_utf8(path, *where) from err
            raise


def local_files(dataset_id: str) -> list[Path]:
    """The files behind a local collection's id (docs, queries, qrels, runs, docpairs); [] for others."""
    return list(getattr(_registered().get(dataset_id), "_lightning_rank_files", []))


def first_invalid_utf8(path: str | os.PathLike) -> tuple[int, int, bytes] | None:
    """``(line, byte offset, bad byte)`` of the first byte of ``path`` that is not UTF-8, or None."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, offset + err.start, line[err.start : err.start + 1]
            offset += len(line)
    return None


def _require_records(path: Path, what: str, name: str) -> None:
    """Fail on a docs or queries file without a single record: nothing could be ranked."""
    with path.open("rb") as f:
        if any(line.strip() for line in f):
            return
    raise DataFileError(
        f"local collection {name!r}: {path} holds no {what} (the file is empty). A reranker needs {what} "
        f"to score: point the collection's {what} at a non-empty file."
    )


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
        source = _local_files(name, source)
    if isinstance(source, LocalFiles):
        return register_files(name, source)
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(
            f"local collection {name!r}: {source!r} is neither the path of a BEIR-format folder nor files "
            "({docs: FILE, queries: FILE, qrels: {SPLIT: FILE}, runs: {SPLIT: FILE}}); give one of those"
        )
    return register_beir_folder(name, source)


def _local_files(name: str, source: dict) -> LocalFiles:
    """:class:`LocalFiles` from a config's dict, or an error naming each key or value that does not fit."""
    keys = list(LocalFiles.__dataclass_fields__)
    unknown = [k for k in source if k not in keys]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), keys, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items())
        raise ConfigError(f"local collection {name!r}: unknown key {said}; the keys are {', '.join(keys)}")
    for key in ("docs", "queries"):
        if not isinstance(source.get(key), str):
            raise ConfigError(
                f"local collection {name!r}: {key} must be the path of a .tsv or .jsonl file, got "
                f"{source.get(key)!r}"
            )
    for key in ("qrels", "runs", "docpairs"):
        value = source.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(
                f"local collection {name!r}: {key} must map each split to a file ({key}: {{test: FILE}}), "
                f"got {value!r}"
            )
    return LocalFiles(**source)


def register_beir_folder(name: str, folder: str | os.PathLike) -> list[str]:
    """Register a BEIR-format folder under ``name``; returns the dataset ids it added."""
    folder = Path(folder).expanduser().resolve()
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise DataFileNotFoundError(
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
    beside the user's files (which may be read-only). Files are checked when they are first read.
    """
    docs_path, queries_path = _existing(files.docs, "docs"), _existing(files.queries, "queries")
    for path, what in ((docs_path, "documents"), (queries_path, "queries")):
        if path.suffix not in (".jsonl", ".tsv"):
            raise DataFileError(f"{path}: {what} must be .jsonl (BEIR fields) or .tsv (id<TAB>text)")
    _require_records(docs_path, "documents", name)
    _require_records(queries_path, "queries", name)
    marker = f"lightning-rank:{files!r}"
    existing = _registered().get(name)
    if existing is not None:
        if getattr(existing, "_lightning_rank_source", None) == marker:
            return _ids_of(name)
        raise ConfigError(f"dataset id {name!r} is already registered (by ir_datasets or other files)")
    namespace = f"lightning-rank-local/{name}-{_fingerprint(docs_path)}"
    docs = LocalDocs(docs_path, namespace)
    queries = LocalQueries(queries_path, namespace)
    _register(name, Dataset(docs, queries), marker, [docs_path, queries_path])
    for split, qrels_file in sorted(files.qrels.items()):
        qrels_path = _existing(qrels_file, f"qrels[{split}]")
        qrels = LocalQrels(qrels_path)
        parts = [docs, FilteredQueries(queries, functools.partial(_qids_of, qrels), mode="include"), qrels]
        split_files = [docs_path, queries_path, qrels_path]
        if split in files.runs:
            split_files.append(_existing(files.runs[split], f"runs[{split}]"))
            parts.append(LocalRun(split_files[-1]))
        if split in files.docpairs:
            split_files.append(_existing(files.docpairs[split], f"docpairs[{split}]"))
            parts.append(LocalDocPairs(split_files[-1]))
        _register(f"{name}/{split}", Dataset(*parts), marker, split_files)
    return _ids_of(name)


_EXTRAS = {"runs": "trec", "docpairs": "tsv"}


def _existing(path: str | os.PathLike, what: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        raise DataFileNotFoundError(f"local collection {what}: {resolved} is a folder; name a file")
    if not resolved.is_file():
        raise DataFileNotFoundError(f"local collection {what}: {resolved} does not exist")
    return resolved


def register_demo(spec: DemoSpec | None = None) -> list[str]:
    """Generate (once, in the cache) and register the demo collection as ``lightning-rank/demo``."""
    spec = spec or DemoSpec()
    folder = generate(cache_home() / "demo" / spec.name, spec)
    return register_beir_folder(DEMO_ID, folder)


def load_dataset(dataset_id: str):
    """``ir_datasets.load`` with our collections registered first and a clear error for unknown ids."""
    require_dataset(dataset_id)
    return ir_datasets.load(dataset_id)


def require_dataset(
    dataset_id: str, option: str | None = None, register_option: str = "data.local_collections"
) -> None:
    """Raise :class:`DatasetNotFoundError` (with close ids) unless ``dataset_id`` is registered; the demo
    collection is generated and registered on first use. Reads no data, so it can run at configuration.
    ``option`` names the setting that gave the id; ``register_option`` the one that registers a folder
    (``data.local_collections`` in fit/predict configs, ``--local_collections`` in bm25/fuse)."""
    if (dataset_id == DEMO_ID or dataset_id.startswith(DEMO_ID + "/")) and dataset_id not in _registered():
        register_demo()
    if dataset_id not in _registered():
        close = difflib.get_close_matches(dataset_id, list(_registered()), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DatasetNotFoundError(
            f"{option + ': ' if option else ''}unknown ir_datasets id {dataset_id!r}.{hint} "
            "Use an id from https://ir-datasets.com, "
            f"{DEMO_ID}/train|dev, or register your own folder with `{register_option}` "
            "(name: path of a BEIR-format folder)."
        )


def _register(name: str, dataset: Dataset, marker: str, files: list[Path]) -> None:
    dataset._lightning_rank_source = marker
    dataset._lightning_rank_files = files  # named in errors about their content (see `reading`)
    ir_datasets.registry.register(name, dataset)


def _ids_of(name: str) -> list[str]:
    return [i for i in _registered() if i == name or i.startswith(name + "/")]


def _qids_of(qrels: LocalQrels) -> set[str]:
    return {q.query_id for q in qrels.qrels_iter()}


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def load_judgements(qrels: str) -> dict[str, dict[str, int]]:
    """The qrels of ``--qrels``: a qrels file where that path exists, else a (registered) dataset id."""
    if os.path.exists(qrels):
        return read_qrels(qrels)
    try:
        require_dataset(qrels, "--qrels", register_option="--local_collections")
    except DatasetNotFoundError as err:
        raise DataFileNotFoundError(f"--qrels {qrels}: there is no such qrels file, and {err}") from None
    dataset = load_dataset(qrels)
    if not dataset.has_qrels():
        raise DataError(f"--qrels {qrels}: this dataset has no qrels; name a split with relevance judgements")
    return dataset.qrels_dict()
