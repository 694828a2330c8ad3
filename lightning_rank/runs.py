"""TREC run files: read, write (atomically), and rank; the one format every command exchanges."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from lightning_rank.errors import ConfigError, DataError, InputError, OutputError

Run = dict[str, dict[str, float]]


def rank_documents(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents of one query in trec_eval's order: score descending, ties by docid descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def _check_token(kind: str, value: str, error: type[InputError] = DataError) -> None:
    if not value or any(c.isspace() for c in value):
        raise error(f"{kind} {value!r} cannot be written to a TREC run file (empty or has whitespace)")


def write_trec_run(
    run: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str], tag: str = "lightning-rank"
) -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run file, atomically.

    Lines are ``qid Q0 docid rank score tag``; queries in sorted order, ranks 1.. in trec_eval's order
    (score descending, ties by docid descending), scores written with full precision (``repr``), so
    trec_eval reads back the same ranking. The file is written to a temporary file in the same folder and
    moved into place with ``os.replace``: a failed write leaves an existing file untouched, and an existing
    file that is not a run is never replaced (:func:`check_replaceable`).
    """
    _check_token("tag", tag, ConfigError)
    path = check_replaceable(path, "run")
    lines: list[str] = []
    for qid in sorted(run):
        _check_token("query id", qid)
        for rank, (did, score) in enumerate(rank_documents(run[qid]), start=1):
            _check_token("doc id", did)
            value = float(score)
            if math.isnan(value):
                raise ValueError(f"score of ({qid!r}, {did!r}) is NaN; trec_eval cannot rank it")
            lines.append(f"{qid} Q0 {did} {rank} {value!r} {tag}\n")
    atomic_write_lines(path, lines)


def atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write lines to a temp file next to ``path``, fsync, then ``os.replace`` it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; keep the mode of the file we replace, else the usual 0644
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_metrics_file(path: str | os.PathLike[str], metrics: Mapping[str, float]) -> Path:
    """Write ``{name: value}`` as a JSON object, atomically, where :func:`check_replaceable` allows it."""
    path = check_replaceable(path, "metrics", option="--metrics_file")
    atomic_write_lines(path, [json.dumps(dict(sorted(metrics.items())), indent=2) + "\n"])
    return path


OutputKind = Literal["run", "metrics", "per_query"]


_KIND_LABELS = {
    "run": "TREC run file",
    "metrics": "metrics file (a JSON object of numbers)",
    "per_query": "per-query results file (TSV: system, query, measure, value)",
}


_EXAMPLE_NAMES = {"run": "run.trec", "metrics": "metrics.json", "per_query": "per_query.tsv"}

#: the first line of a per-query results file
PER_QUERY_HEADER = "system\tquery\tmeasure\tvalue"


def write_per_query(path: str | os.PathLike[str], rows: Iterable[tuple[str, str, str, float]]) -> Path:
    """Write ``(system, query, measure, value)`` rows as TSV under :data:`PER_QUERY_HEADER`, atomically,
    where :func:`check_replaceable` allows it."""
    path = check_replaceable(path, "per_query")
    lines = []
    for system, query, measure, value in rows:
        for token in (system, query, measure):
            if "\t" in token or "\n" in token:
                raise DataError(f"{token!r} holds a tab or a newline; it cannot be a TSV field of {path}")
        lines.append(f"{system}\t{query}\t{measure}\t{value!r}\n")
    atomic_write_lines(path, [PER_QUERY_HEADER + "\n", *lines])
    return path


def read_per_query(path: str | os.PathLike[str]) -> dict[str, dict[str, dict[str, float]]]:
    """A file of :func:`write_per_query` as ``{system: {measure: {query: value}}}``; a file without the
    header, or a line that is not four tab-separated fields ending in a number, is a :class:`DataError`
    naming the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"{path}: no such per-query file (write one with `lightning-rank test --per_query_file`)"
        )
    values: dict[str, dict[str, dict[str, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if lineno == 1:
                if line != PER_QUERY_HEADER:
                    raise DataError(
                        f"{path}: line 1 is {line[:60]!r}, not the header {PER_QUERY_HEADER!r} of a "
                        "per-query file (as `lightning-rank test --per_query_file` writes)"
                    )
                continue
            if not line:
                continue
            fields = line.split("\t")
            try:
                system, query, measure, value = fields
                number = float(value)
            except ValueError:
                raise DataError(
                    f"{path}:{lineno}: {line[:60]!r} is not 'system<TAB>query<TAB>measure<TAB>value'"
                ) from None
            values.setdefault(system, {}).setdefault(measure, {})[query] = number
    return values


_RUN_LINES_CHECKED = 1000  # a prefix tells a run from anything else; reading a 1 GB run whole would not pay


_METRICS_BYTES_CHECKED = 1 << 20


def check_replaceable(path: str | os.PathLike[str], kind: OutputKind, option: str = "--output") -> Path:
    """``path`` (``~`` expanded) when a ``kind`` file may be written there, else :class:`OutputError`.

    A write may create a file or replace an empty one or one of its own kind (a run: lines of ``qid Q0 docid
    rank score tag``; metrics: a JSON object of numbers); never a folder or any other file, so a mistyped
    output path cannot destroy a user's file. Writers call it before their expensive work and again at the
    write."""
    path = Path(path).expanduser()
    label = _KIND_LABELS[kind]
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{option} {path}: {blocker} is a file, not a folder; pass a path in a folder")
    if path.is_dir():
        raise OutputError(
            f"{option} {path} is a folder; the {label} is written to a file: pass a file path such as "
            f"{path / _EXAMPLE_NAMES[kind]}"
        )
    if not path.exists():
        return path
    reason = "it is not a regular file" if not path.is_file() else _why_not_replaceable(path, kind)
    if reason:
        raise OutputError(
            f"{option} {path} exists and is not a {label}: {reason}. It was left as it is; pass another "
            f"{option} path (an existing {label} or an empty file may be replaced)"
        )
    return path


def _why_not_replaceable(path: Path, kind: OutputKind) -> str | None:
    """Why the existing file at ``path`` does not look like a ``kind`` file (None when it does)."""
    try:
        if kind == "metrics":
            return _why_not_metrics(path)
        if kind == "per_query":
            return _why_not_per_query(path)
        return _why_not_run(path)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    except UnicodeDecodeError as err:
        return f"it is not UTF-8 text (byte {err.start})"


def _why_not_run(path: Path) -> str | None:
    """None when the first lines of ``path`` are TREC run lines (``read_trec_run``'s rules), else why not."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno > _RUN_LINES_CHECKED:
                break
            fields = line.split()
            if fields and not _is_run_line(fields):
                return f"line {lineno} ({line.strip()[:60]!r}) is not 'qid Q0 docid rank score tag'"
    return None


def _is_run_line(fields: list[str]) -> bool:
    if len(fields) not in (5, 6):
        return False
    try:
        int(fields[3])
        float(fields[4])
    except ValueError:
        return False
    return True


def _why_not_per_query(path: Path) -> str | None:
    """None when ``path`` is empty or starts with :data:`PER_QUERY_HEADER`, else why not."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().rstrip("\n")
    return None if first in ("", PER_QUERY_HEADER) else f"its first line is {first[:60]!r}, not the header"


def _why_not_metrics(path: Path) -> str | None:
    """None when ``path`` is empty or a JSON object whose values are all numbers, else why not."""
    if path.stat().st_size > _METRICS_BYTES_CHECKED:
        return f"it holds {path.stat().st_size} bytes, more than a metrics file"
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return f"it is not JSON (line {err.lineno}: {err.msg})"
    if not isinstance(value, dict):
        return f"it holds a JSON {type(value).__name__}, not an object"
    wrong = [k for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int | float)]
    return f"{wrong[0]!r} is not a number" if wrong else None
