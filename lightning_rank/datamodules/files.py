"""Local data files read line by line by our own parsers, so that every mistake is named with file and line.

Documents and queries (BEIR ``.jsonl`` or ``id<TAB>text`` ``.tsv``), qrels (TREC ``qid 0 docid rel``,
``qid docid rel``, or BEIR's TSV with its ``query-id corpus-id score`` header), TREC runs and docpairs
(``qid<TAB>pos<TAB>neg``) have one line parser each. A problem raises :class:`DataFileError` with
``FILE:LINE: what is wrong; how to fix``. CRLF line endings, blank lines and a UTF-8 BOM are accepted. The
once-per-file check and the handling of duplicates are in :mod:`.file_checks`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, Literal

from lightning_rank.errors import DataFileError, DataFileNotFoundError
from lightning_rank.runs import Run

Kind = Literal["documents", "queries", "qrels", "run", "docpairs"]
Record = tuple
_BOM = b"\xef\xbb\xbf"
_INTEGER = re.compile(r"[+-]?[0-9]+")
_WHITESPACE = re.compile(r"\s")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BEIR_HEADER = ["query-id", "corpus-id", "score"]
_MAX_GRADE = 2**31 - 1  # trec_eval keeps grades in a C int
_JSON_EXAMPLE = {
    "documents": '{"_id": "d1", "title": "...", "text": "..."}',
    "queries": '{"_id": "q1", "text": "..."}',
}


def not_utf8(path: str | os.PathLike, line: int, offset: int, byte: bytes) -> DataFileError:
    """The error for a byte that is not UTF-8 at ``offset`` of ``path`` (on ``line``)."""
    return DataFileError(
        f"{path}:{line}: not valid UTF-8 (byte 0x{byte.hex()} at byte offset {offset}). Local collection "
        "and run files are read as UTF-8: re-encode the file, e.g. `iconv -f latin1 -t utf-8 OLD > NEW` if "
        "it is Latin-1, or fix that line."
    )


# -- lines ---------------------------------------------------------------------------------------------
def numbered_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """``(line number, text, cut)`` of each non-blank line, without its ``\\n`` or ``\\r\\n``; ``cut``: the
    line ends the file without a newline. A BOM at the start is skipped; bytes that are not UTF-8 raise."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            data = raw[len(_BOM) :] if number == 1 and raw.startswith(_BOM) else raw
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                at = offset + len(raw) - len(data) + err.start
                raise not_utf8(path, number, at, data[err.start : err.start + 1]) from None
            if "\x00" in text:
                at = offset + len(raw) - len(data) + data.index(b"\x00")
                raise DataFileError(
                    f"{path}:{number}: a NUL byte at byte offset {at}: this is not UTF-8 text (UTF-16, or "
                    "not a text file?). Re-encode it, e.g. `iconv -f utf-16 -t utf-8 OLD > NEW`."
                )
            offset += len(raw)
            if text.strip():
                yield number, text.rstrip("\r\n"), not text.endswith("\n")


# -- one parser per kind of file: (line number, text, cut) -> record, or DataFileError ---------------------
def _json_object(path: Path, number: int, text: str, cut: bool, kind: Kind) -> dict:
    example = _JSON_EXAMPLE[kind]
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        problem = getattr(err, "msg", "nested too deeply")
        if cut:
            raise DataFileError(
                f"{path}:{number}: the file ends inside a JSON object ({problem}; the last line has no "
                "newline): it looks truncated. Write or download it again."
            ) from None
        column = f" at column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise DataFileError(
            f"{path}:{number}: not valid JSON ({problem}{column}); each line must be one JSON object such as "
            f"{example}"
        ) from None
    if not isinstance(record, dict):
        raise DataFileError(
            f"{path}:{number}: a JSON {_json_type(record)}, not an object; each line must be one JSON object "
            f"such as {example}"
        )
    return record


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "number")


def checked_id(path: Path, number: int, value: object, what: str) -> str:
    """``value`` as an id, or the error: ids are non-empty and hold no whitespace (TREC files split on it)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataFileError(
            f"{path}:{number}: the {what} id {json.dumps(value)} is a {_json_type(value)}, not a string; "
            'write it as a string, e.g. "_id": "d1"'
        )
    value = str(value)
    if not value.strip():
        raise DataFileError(f"{path}:{number}: empty {what} id; give every line a non-empty id")
    if _WHITESPACE.search(value):
        raise DataFileError(
            f"{path}:{number}: the {what} id {value!r} holds whitespace, which TREC qrels and run files "
            "cannot hold (they split columns on it); replace it (e.g. with '_') here and in the qrels and "
            "runs"
        )
    return value


def _json_text(path: Path, number: int, record: dict, key: str, kind: Kind) -> str | None:
    value = record.get(key)
    if value is None and key == "title":
        return "" if key in record else None
    if value is None:
        raise DataFileError(
            f'{path}:{number}: no "{key}" (or null); each line needs "_id" and "text", e.g. '
            f"{_JSON_EXAMPLE[kind]}"
        )
    if not isinstance(value, str):
        raise DataFileError(
            f'{path}:{number}: "{key}" is a {_json_type(value)}, not a string; write the text as a string'
        )
    return value


def _jsonl(kind: Kind) -> Callable[[Path, int, str, bool], Record]:
    what = "document" if kind == "documents" else "query"

    def parse(path: Path, number: int, text: str, cut: bool) -> Record:
        record = _json_object(path, number, text, cut, kind)
        if "_id" not in record:
            raise DataFileError(
                f'{path}:{number}: no "_id"; each line needs "_id" and "text", e.g. {_JSON_EXAMPLE[kind]}'
            )
        record_id = checked_id(path, number, record["_id"], what)
        body = _json_text(path, number, record, "text", kind)
        if kind == "queries":
            return record_id, body
        return record_id, body, _json_text(path, number, record, "title", kind)

    return parse


def _tsv(kind: Kind) -> Callable[[Path, int, str, bool], Record]:
    what = "document" if kind == "documents" else "query"

    def parse(path: Path, number: int, text: str, cut: bool) -> Record:
        columns = text.split("\t")
        if len(columns) == 1:
            spaces = " (are the columns separated by spaces?)" if " " in text else ""
            raise DataFileError(
                f"{path}:{number}: no tab{spaces}: each line is '{what} id<TAB>text'; separate the id "
                "from the text with one tab"
            )
        if len(columns) > 2:
            raise DataFileError(
                f"{path}:{number}: {len(columns)} tab-separated columns, expected 2 ({what} id<TAB>text); "
                "replace the tabs inside the text with spaces"
            )
        record_id = checked_id(path, number, columns[0], what)
        return (record_id, columns[1], None) if kind == "documents" else (record_id, columns[1])

    return parse


def _header_hint(number: int, first: bool, what: str) -> str:
    return f" (line {number} looks like a header: {what} have none; delete it)" if first else ""


class _QrelsParser:
    """TREC (4 columns), 3 columns, or BEIR TSV after its header: the first line decides."""

    FORMATS: ClassVar[dict[int, str]] = {4: "'qid 0 docid relevance' (TREC)", 3: "'qid docid relevance'"}

    def __init__(self) -> None:
        self.columns: int | None = None
        self.header = False

    def __call__(self, path: Path, number: int, text: str, cut: bool) -> Record | None:
        columns = text.split()
        first = self.columns is None
        if first and [c.lower() for c in columns] == _BEIR_HEADER:
            self.columns, self.header = 3, True
            return None
        if first and len(columns) in self.FORMATS:
            self.columns = len(columns)
        if len(columns) != self.columns:
            expected = self.FORMATS.get(self.columns or 0, "")
            raise DataFileError(
                f"{path}:{number}: {len(columns)} columns{_truncated(cut)}; qrels lines are "
                + (f"{expected}, as on the file's first line" if expected else
                   "'qid 0 docid relevance' (TREC), 'qid docid relevance', or BEIR's 'query-id<TAB>corpus-id"
                   "<TAB>score' header and then 'qid<TAB>docid<TAB>relevance'")
            )  # fmt: skip
        grade = columns[-1]
        if not _INTEGER.fullmatch(grade) or abs(int(grade)) > _MAX_GRADE:
            hint = _header_hint(number, first and not self.header, "TREC qrels")
            raise DataFileError(
                f"{path}:{number}: relevance {grade!r} is not an integer{hint}; qrels grades are whole "
                "numbers (0 not relevant, 1 or more relevant)"
            )
        iteration = columns[1] if self.columns == 4 else "0"
        return columns[0], columns[-2], int(grade), iteration


def _truncated(cut: bool) -> str:
    return " (the last line has no newline: is the file truncated?)" if cut else ""


def run_row(path: Path, number: int, text: str, cut: bool, first: bool = False) -> Record:
    """``(qid, docid, score)`` of a TREC run line ``qid Q0 docid rank score [tag]``, or the error."""
    columns = text.split()
    if len(columns) not in (5, 6):
        raise DataFileError(
            f"{path}:{number}: expected 'qid Q0 docid rank score tag' (6 columns), got {len(columns)}"
            f"{_truncated(cut)}"
        )
    qid, _, did, rank, score = columns[:5]
    hint = _header_hint(number, first, "TREC run files")
    if not _INTEGER.fullmatch(rank):
        raise DataFileError(
            f"{path}:{number}: rank {rank!r} (column 4) is not an integer{hint}; lines are 'qid Q0 docid "
            "rank score tag'"
        )
    value = float(score) if _NUMBER.fullmatch(score) else None
    if value is None:
        raise DataFileError(
            f"{path}:{number}: score {score!r} (column 5) is not a number{hint}; lines are 'qid Q0 docid "
            "rank score tag'"
        )
    if not math.isfinite(value):
        raise DataFileError(
            f"{path}:{number}: score {score!r} is beyond a finite float; trec_eval cannot rank it. Rescale "
            "the scores"
        )
    return qid, did, value


class _RunParser:
    def __init__(self) -> None:
        self.first = True

    def __call__(self, path: Path, number: int, text: str, cut: bool) -> Record:
        first, self.first = self.first, False
        return run_row(path, number, text, cut, first)


def _docpair(path: Path, number: int, text: str, cut: bool) -> Record:
    columns = text.split("\t")
    if len(columns) != 3:
        spaces = " (are the columns separated by spaces?)" if len(columns) == 1 and " " in text else ""
        raise DataFileError(
            f"{path}:{number}: {len(columns)} tab-separated columns{spaces}{_truncated(cut)}, expected 3: "
            "'qid<TAB>positive doc id<TAB>negative doc id'"
        )
    return tuple(
        checked_id(path, number, c, w)
        for c, w in zip(columns, ("query", "document", "document"), strict=True)
    )


def _parser(path: Path, kind: Kind) -> Callable[[Path, int, str, bool], Record | None]:
    if kind in ("documents", "queries"):
        return _jsonl(kind) if path.suffix == ".jsonl" else _tsv(kind)
    return {"qrels": _QrelsParser, "run": _RunParser, "docpairs": lambda: _docpair}[kind]()


def numbered_records(path: str | os.PathLike, kind: Kind) -> Iterator[tuple[int, Record]]:
    """``(line number, record)`` of every record of ``path``, checked; no duplicates are dropped.

    Records: documents ``(id, text, title or None)``, queries ``(id, text)``, qrels ``(qid, docid, grade,
    iteration)``, runs ``(qid, docid, score)``, docpairs ``(qid, positive, negative)``."""
    path = Path(path)
    parse = _parser(path, kind)
    for number, text, cut in numbered_lines(path):
        record = parse(path, number, text, cut)
        if record is not None:
            yield number, record


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score [tag]``) into ``{qid: {docid: score}}``.

    The rank column is ignored, as trec_eval does, but must be an integer. Every line is checked
    (:func:`run_row`): a mistake, a document listed twice for one query or an
    empty file raises :class:`~lightning_rank.errors.DataFileError` naming the file and line; a missing one
    :class:`~lightning_rank.errors.DataFileNotFoundError`.
    """
    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"run file {path} does not exist")
    run: Run = {}
    for lineno, (qid, did, value) in numbered_records(path, "run"):
        docs = run.setdefault(qid, {})
        if did in docs:
            raise DataFileError(
                f"{path}:{lineno}: document {did!r} appears twice for query {qid!r}; keep one line per "
                "(query, document)"
            )
        docs[did] = value
    if not run:
        raise DataFileError(f"{path}: the run file holds no 'qid Q0 docid rank score tag' lines")
    return run


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Read a qrels file (TREC ``qid 0 docid grade``, ``qid docid grade`` or BEIR TSV) into ``{qid: {docid:
    grade}}``, every line checked; a document judged twice for one query, an empty or a missing file is
    refused naming the file (and line)."""
    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"qrels file {path} does not exist")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, (qid, did, grade, _) in numbered_records(path, "qrels"):
        judged = qrels.setdefault(qid, {})
        if did in judged:
            raise DataFileError(
                f"{path}:{lineno}: document {did!r} is judged twice for query {qid!r}; keep one line per "
                "(query, document)"
            )
        judged[did] = grade
    if not qrels:
        raise DataFileError(f"{path}: the qrels file holds no 'qid 0 docid relevance' lines")
    return qrels
