"""The once-per-file check of local data files, its cache, and the reader every collection uses.

Each file is checked in one streaming pass the first time a process reads it (:mod:`.files` parses its
lines); the outcome is cached by path, size and modification time, in memory and in ir_datasets' home, so a
big corpus is checked once. Duplicate document or query ids and duplicate judgements keep their first copy:
the later ones are dropped by every reader, with one warning per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lightning_rank.datamodules.files import Kind, Record, numbered_records
from lightning_rank.errors import DataFileError

_CHECK_VERSION = 1  # bump when the checks change: cached outcomes of older checks are not reused
_EXAMPLES = 3
_console = logging.getLogger("lightning.pytorch")  # Lightning's console handler shows it


@dataclass(frozen=True)
class Checked:
    """What the check of one file found: its records, and the later copies of duplicates (dropped)."""

    records: int
    drop: frozenset[int]  # positions (0-based, among records) of later copies
    duplicates: int
    conflicting: int  # later copies whose text (or grade) differs from the first
    examples: tuple[tuple[str, int, int], ...]  # (key, first line, later line)
    titles: bool  # some document has a title


_KEYS = {"documents": (1, "document ids"), "queries": (1, "query ids"), "qrels": (2, "judgements")}
_checked: dict[tuple, Checked] = {}


def check(path: str | os.PathLike, kind: Kind) -> Checked:
    """Check ``path`` once per process (and once per file version across processes): raises the first
    problem as :class:`DataFileError`, warns once about duplicates."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, kind, _CHECK_VERSION)
    found = _checked.get(key)
    if found is None:
        found = _load_cached(key)
        if found is None:
            found = _scan(path, kind)
            if found.records == 0:
                raise DataFileError(f"{path}: the file holds no {_what(kind)} (it is empty or blank)")
            _save_cached(key, found)
        _checked[key] = found
        _warn_duplicates(path, kind, found)
    return found


def _what(kind: Kind) -> str:
    return {"documents": "documents", "queries": "queries", "qrels": "judgements", "run": "run lines",
            "docpairs": "docpairs"}[kind]  # fmt: skip


def records(path: str | os.PathLike, kind: Kind) -> Iterator[Record]:
    """The checked records of ``path`` without the later copies of duplicates: what every reader uses."""
    drop = check(path, kind).drop
    for position, (_, record) in enumerate(numbered_records(path, kind)):
        if position not in drop:
            yield record


def _scan(path: Path, kind: Kind) -> Checked:
    """One pass that checks every line; duplicate keys are found by hash (8 bytes a record), then confirmed
    by a second pass over the candidates only, when there are any."""
    width = _KEYS.get(kind, (0, ""))[0]
    hashes = array("q")
    count, titles = 0, False
    for count, (_, record) in enumerate(numbered_records(path, kind), start=1):  # noqa: B007
        if width:
            hashes.append(hash(record[:width]))
        titles = titles or (kind == "documents" and record[2] is not None)
    if not width or count < 2:
        return Checked(count, frozenset(), 0, 0, (), titles)
    keys = np.frombuffer(hashes, dtype=np.int64)
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size == 0:
        return Checked(count, frozenset(), 0, 0, (), titles)
    candidates = set(np.flatnonzero(np.isin(keys, repeated)).tolist())
    return _confirm(path, kind, width, candidates, count, titles)


def _confirm(path: Path, kind: Kind, width: int, candidates: set[int], count: int, titles: bool) -> Checked:
    first: dict[tuple, tuple[int, Record]] = {}
    drop: set[int] = set()
    conflicting, examples = 0, []
    for position, (number, record) in enumerate(numbered_records(path, kind)):
        if position not in candidates:
            continue
        key = record[:width]
        if key not in first:
            first[key] = (number, record)
            continue
        drop.add(position)
        first_line, first_record = first[key]
        conflicting += first_record != record
        if len(examples) < _EXAMPLES:
            examples.append((" ".join(key), first_line, number))
    return Checked(count, frozenset(drop), len(drop), conflicting, tuple(examples), titles)


def _warn_duplicates(path: Path, kind: Kind, found: Checked) -> None:
    if not found.duplicates or not _on_rank_zero():
        return
    differ = "another grade" if kind == "qrels" else "another text"
    examples = ", ".join(f"{k!r} at lines {a} and {b}" for k, a, b in found.examples)
    _console.warning(
        f"{path}: {found.duplicates} duplicate {_KEYS[kind][1]} ({found.conflicting} of them with {differ}; "
        f"e.g. {examples}): the first copy of each is used and the later ones are dropped everywhere "
        "(docstore, BM25, training, evaluation). Remove the later copies from the file to silence this."
    )


def _on_rank_zero() -> bool:
    if "lightning.pytorch" not in sys.modules:
        return True
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _cache_file(key: tuple) -> Path:
    import ir_datasets

    digest = hashlib.sha1(repr(key).encode()).hexdigest()
    return Path(ir_datasets.util.home_path()) / "lightning-rank" / "checked" / f"{digest}.json"


def _load_cached(key: tuple) -> Checked | None:
    try:
        saved = json.loads(_cache_file(key).read_text())
    except (OSError, ValueError):
        return None
    saved["drop"] = frozenset(saved["drop"])
    saved["examples"] = tuple(tuple(e) for e in saved["examples"])
    return Checked(**saved)


def _save_cached(key: tuple, found: Checked) -> None:
    """Keep the outcome for other processes; a cache that cannot be written only costs a re-check."""
    target = _cache_file(key)
    content = {**asdict(found), "drop": sorted(found.drop)}
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
        os.replace(tmp, target)
