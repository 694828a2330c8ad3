"""Fuzzed local data files: every mutated collection is read, or refused with one line that names the file.

A seeded generator (fixed seed and budget, so a failure replays exactly) writes BEIR folders and TSV/TREC
files with one or two mutations each: dropped or extra columns, bad and huge numbers, header lines, other
encodings, duplicates, empty fields, whitespace in ids, truncation, CRLF, a BOM, blank lines, empty files,
and malformed ``local_collections`` settings. Each mutation knows what it should give: success (CRLF, a BOM,
blank lines, duplicates, ...) or an error at a known line. The invariant for every case: that outcome, the
error one line naming the file (and the line), never a traceback, never a hang, never a changed input file,
never a damaged existing output. The readers run in-process (register + iterate docs, queries, qrels, runs,
docpairs); a subset runs ``lightning-rank bm25`` in-process and a few ``validate`` the demo on a mutated run.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch  # noqa: F401  (its console handler then writes to the session's stderr, not a test's capsys)
import pytest
from helpers import REPO

SEED = 21
READER_CASES = 320
BM25_CASES = 40
VALIDATE_CASES = 4

KINDS = ("docs", "queries", "qrels", "run", "docpairs")
NUM_DOCS, NUM_QUERIES, DEPTH = 12, 6, 5


@dataclass
class Line:
    data: bytes
    bad: bool = False  # the line the case expects the error on


@dataclass
class File:
    """One data file as lines, rendered with its newline, BOM and final newline (or raw bytes)."""

    kind: str
    fmt: str  # jsonl | tsv | beir | trec | 3col | run | docpairs
    lines: list[Line]
    newline: bytes = b"\n"
    bom: bool = False
    final_newline: bool = True
    raw: bytes | None = None
    path: Path | None = None
    line_expected: bool = True  # an error names a line of this file (not for an empty file)

    def render(self) -> bytes:
        if self.raw is not None:
            return self.raw
        body = self.newline.join(line.data for line in self.lines)
        if self.final_newline and self.lines:
            body += self.newline
        return (b"\xef\xbb\xbf" if self.bom else b"") + body

    def bad_line(self) -> int | None:
        return next((i + 1 for i, line in enumerate(self.lines) if line.bad), None)

    def records(self) -> list[int]:
        """Positions of the lines that hold records (not the BEIR qrels header)."""
        start = 1 if self.fmt == "beir" else 0
        return list(range(start, len(self.lines)))


@dataclass
class Case:
    number: int
    layout: str  # beir | files
    files: dict[str, File]
    expect: str = "ok"  # ok | error | either
    mutated: str | None = None
    notes: list[str] = field(default_factory=list)
    source_override: object = None  # a malformed local_collections value

    @property
    def name(self) -> str:
        return f"fuzz{self.number}"

    def __repr__(self) -> str:
        return f"case {self.number} ({self.layout}): {'; '.join(self.notes) or 'unchanged'} -> {self.expect}"


# -- the unmutated collection ------------------------------------------------------------------------------
def base_case(rng: random.Random, number: int) -> Case:
    layout = rng.choice(["beir", "files"])
    docs_fmt = "jsonl" if layout == "beir" else rng.choice(["jsonl", "tsv"])
    queries_fmt = "jsonl" if layout == "beir" else rng.choice(["jsonl", "tsv"])
    qrels_fmt = "beir" if layout == "beir" else rng.choice(["trec", "3col", "beir"])
    titles = rng.random() < 0.5
    docs = []
    for d in range(NUM_DOCS):
        text = f"kavo baba passage {d} topic{d % 3}"
        if docs_fmt == "jsonl":
            record = {"_id": f"d{d}", **({"title": f"title {d}"} if titles else {}), "text": text}
            docs.append(Line(json.dumps(record).encode()))
        else:
            docs.append(Line(f"d{d}\t{text}".encode()))
    queries = []
    for q in range(NUM_QUERIES):
        text = f"kavo topic{q % 3} question {q}"
        if queries_fmt == "jsonl":
            queries.append(Line(json.dumps({"_id": f"q{q}", "text": text, "metadata": {}}).encode()))
        else:
            queries.append(Line(f"q{q}\t{text}".encode()))
    qrels = [Line(b"query-id\tcorpus-id\tscore")] if qrels_fmt == "beir" else []
    for q in range(NUM_QUERIES):
        for d in (q, q + NUM_QUERIES):
            row = {"beir": f"q{q}\td{d}\t1", "trec": f"q{q} 0 d{d} 1", "3col": f"q{q} d{d} 1"}[qrels_fmt]
            qrels.append(Line(row.encode()))
    run = [
        Line(f"q{q} Q0 d{(q + k) % NUM_DOCS} {k + 1} {DEPTH - k}.5 bm25".encode())
        for q in range(NUM_QUERIES)
        for k in range(DEPTH)
    ]
    docpairs = [Line(f"q{q}\td{q}\td{(q + 1) % NUM_DOCS}".encode()) for q in range(NUM_QUERIES)]
    files = {
        "docs": File("docs", docs_fmt, docs),
        "queries": File("queries", queries_fmt, queries),
        "qrels": File("qrels", qrels_fmt, qrels),
        "run": File("run", "run", run),
        "docpairs": File("docpairs", "docpairs", docpairs),
    }
    return Case(number, layout, files)


# -- mutations: each changes one file and returns what the case should give ---------------------------------
Mutation = Callable[[random.Random, File], str]


def _pick(rng: random.Random, file: File) -> Line:
    return file.lines[rng.choice(file.records())]


def _mark(line: Line, data: bytes) -> str:
    line.data, line.bad = data, True
    return "error"


def crlf(rng, file):
    file.newline = b"\r\n"
    return "ok"


def bom(rng, file):
    file.bom = True
    return "ok"


def blank_lines(rng, file):
    for _ in range(rng.randint(1, 3)):
        file.lines.insert(rng.randint(0, len(file.lines)), Line(rng.choice([b"", b"  ", b"\t", b"\r"])))
    return "ok"


def no_final_newline(rng, file):
    file.final_newline = False
    return "ok"


def not_utf8(rng, file):
    line = _pick(rng, file)
    at = rng.randint(0, len(line.data))
    return _mark(line, line.data[:at] + rng.choice([b"\xe9", b"\xff", b"\x80"]) + line.data[at:])


def other_encoding(rng, file):
    text = file.render().decode("utf-8")
    file.raw = text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    file.lines[0].bad = True  # the first line is where it stops being UTF-8
    return "error"


def empty_file(rng, file):
    file.raw = rng.choice([b"", b"\n", b"\n\n  \n"])
    file.line_expected = False
    return "error"


def truncate(rng, file):
    last = file.lines[-1]
    cut = rng.randint(1, max(1, len(last.data) - 1))
    last.data = last.data[:cut]
    file.final_newline = False
    if file.fmt == "jsonl":
        last.bad = True
        return "error"
    last.bad = True  # if the cut leaves a bad line, the error is there
    return "either"


def duplicate(rng, file):
    source = _pick(rng, file)
    copy = Line(source.data)
    position = rng.randint(file.lines.index(source) + 1, len(file.lines))
    file.lines.insert(position, copy)
    if file.kind == "run":  # a document twice for a query: read_trec_run refuses it, at the copy
        copy.bad = True
        return "error"
    return "ok"


def duplicate_changed(rng, file):
    """The same id (or query-document pair) again with another text or grade: the first is kept."""
    source = _pick(rng, file)
    position = rng.randint(file.lines.index(source) + 1, len(file.lines))
    if file.fmt == "jsonl":
        record = json.loads(source.data)
        record["text"] = "another text altogether"
        data = json.dumps(record).encode()
    elif file.kind in ("docs", "queries"):
        data = source.data.split(b"\t")[0] + b"\tanother text altogether"
    else:
        data = source.data[:-1] + b"2"  # qrels: another grade
    file.lines.insert(position, Line(data))
    return "ok"


# docs / queries ------------------------------------------------------------------------------------------
def _set_json(line: Line, change: Callable[[dict], object]) -> bytes:
    record = json.loads(line.data)
    result = change(record)
    return json.dumps(record if result is None else result).encode()


def id_whitespace(rng, file):
    line = _pick(rng, file)
    bad_id = rng.choice(["x y", "x\ty", " x", "x ", "x\u00a0y", "x\u3000y"])
    if file.fmt == "jsonl":
        return _mark(line, _set_json(line, lambda r: r.update(_id=bad_id)))
    if file.kind == "docpairs":
        cols = line.data.split(b"\t")
        cols[rng.randrange(3)] = bad_id.replace("\t", " ").encode()
        return _mark(line, b"\t".join(cols))
    if "\t" in bad_id:
        return "ok"  # in TSV that is a short id and a text with a tab: another mutation covers it
    return _mark(line, bad_id.encode() + b"\t" + line.data.split(b"\t", 1)[1])


def id_empty(rng, file):
    line = _pick(rng, file)
    if file.fmt == "jsonl":
        return _mark(line, _set_json(line, lambda r: r.update(_id=rng.choice(["", "   "]))))
    cols = line.data.split(b"\t")
    cols[rng.randrange(len(cols)) if file.kind == "docpairs" else 0] = b""
    return _mark(line, b"\t".join(cols))


def json_not_object(rng, file):
    return _mark(_pick(rng, file), rng.choice([b"[1, 2]", b'"d1 text"', b"42", b"null", b"true"]))


def json_missing_field(rng, file):
    line = _pick(rng, file)
    key = rng.choice(["_id", "text"])
    return _mark(line, _set_json(line, lambda r: r.pop(key)))


def json_bad_field_type(rng, file):
    line = _pick(rng, file)
    key = rng.choice(["_id", "text"] + (["title"] if b'"title"' in line.data else []))
    value = rng.choice([None, 1.5, ["a"], {"a": 1}, True]) if key != "title" else rng.choice([1.5, ["a"]])
    if key == "text" and value is None:
        value = 3
    return _mark(line, _set_json(line, lambda r: r.update({key: value})))


def json_integer_id(rng, file):
    line = _pick(rng, file)
    line.data = _set_json(line, lambda r: r.update(_id=1000 + rng.randrange(100)))
    return "ok"


def json_extra_fields(rng, file):
    line = _pick(rng, file)
    line.data = _set_json(line, lambda r: r.update(metadata={"url": "x"}, extra=[1, 2]))
    return "ok"


def json_broken_syntax(rng, file):
    line = _pick(rng, file)
    at = rng.choice([line.data.index(b'"'), line.data.index(b":"), len(line.data) - 1])
    broken = rng.choice([line.data[:at] + line.data[at + 1 :], line.data[:-1] + b",}", b"{" + line.data])
    return _mark(line, broken)


def title_null(rng, file):
    line = _pick(rng, file)
    line.data = _set_json(line, lambda r: r.update(title=None))
    return "ok"


def empty_text(rng, file):
    line = _pick(rng, file)
    if file.fmt == "jsonl":
        line.data = _set_json(line, lambda r: r.update(text=""))
    else:
        line.data = line.data.split(b"\t")[0] + b"\t"
    return "ok"


def unicode_text(rng, file):
    line = _pick(rng, file)
    text = rng.choice(["café naïve", "日本語のテキスト", "emoji 🎉 text", "zero\u200bwidth", "x" * 20000])
    if file.fmt == "jsonl":
        line.data = _set_json(line, lambda r: r.update(text=text))
    else:
        line.data = line.data.split(b"\t")[0] + b"\t" + text.encode()
    return "ok"


def tsv_no_tab(rng, file):
    line = _pick(rng, file)
    return _mark(line, line.data.replace(b"\t", b" "))


def tsv_extra_tab(rng, file):
    line = _pick(rng, file)
    return _mark(line, line.data + b"\textra column")


# qrels / runs / docpairs ---------------------------------------------------------------------------------
def _split(line: Line, fmt: str) -> list[bytes]:
    return line.data.split(b"\t") if fmt in ("beir", "docpairs") else line.data.split()


def _join(cols: list[bytes], fmt: str) -> bytes:
    return (b"\t" if fmt in ("beir", "docpairs") else b" ").join(cols)


def drop_column(rng, file):
    line = _pick(rng, file)
    cols = _split(line, file.fmt)
    at = rng.randrange(len(cols))
    del cols[at]
    if file.kind == "run" and at == 5:
        line.data = _join(cols, file.fmt)
        return "ok"  # qid Q0 docid rank score: a run without its tag
    return _mark(line, _join(cols, file.fmt))


def extra_column(rng, file):
    line = _pick(rng, file)
    cols = _split(line, file.fmt)
    cols.insert(rng.randint(0, len(cols)), rng.choice([b"1", b"x", b"0"]))
    return _mark(line, _join(cols, file.fmt))


def bad_relevance(rng, file):
    line = _pick(rng, file)
    cols = _split(line, file.fmt)
    bad = [b"x", b"1.5", b"1.0", b"1e3", b"--1", b"one", b"99999999999999999999", b"0x1", b"1_0"]
    cols[-1] = rng.choice(bad)
    return _mark(line, _join(cols, file.fmt))


def negative_relevance(rng, file):
    line = _pick(rng, file)
    cols = _split(line, file.fmt)
    cols[-1] = rng.choice([b"-1", b"0", b"+2", b"4"])
    line.data = _join(cols, file.fmt)
    return "ok"


def bad_score(rng, file):
    line = _pick(rng, file)
    cols = _split(line, file.fmt)
    if rng.random() < 0.5:
        cols[4] = rng.choice([b"x", b"nan", b"inf", b"-inf", b"1e999", b"1,5", b"NaN"])
    else:
        cols[3] = rng.choice([b"1.5", b"x", b"first", b"1e2"])
    return _mark(line, _join(cols, file.fmt))


def huge_numbers(rng, file):
    line = _pick(rng, file)
    cols = _split(line, file.fmt)
    cols[4] = rng.choice([b"1e300", b"-1e300", b"123456789012345678901234567890", b"0.000000001"])
    cols[3] = rng.choice([cols[3], b"99999999999999999999"])
    line.data = _join(cols, file.fmt)
    return "ok"


HEADERS = {
    "trec": [b"qid iter docid rel", b"query_id 0 doc_id relevance"],
    "3col": [b"qid docid rel", b"query-id corpus-id relevance"],
    "run": [b"qid Q0 docid rank score tag", b"query_id doc_id rank score"],
    "beir": [b"query-id\tcorpus-id\tscore"],
}


def header_line(rng, file):
    file.lines.insert(0, Line(rng.choice(HEADERS[file.fmt]), bad=True))
    return "error"


def remove_beir_header(rng, file):
    del file.lines[0]
    file.fmt = "3col"  # qid<TAB>docid<TAB>grade without a header: the 3-column format
    return "ok"


def spaces_for_tabs(rng, file):
    line = _pick(rng, file)
    if file.fmt == "beir":  # qrels columns are split on any whitespace, as trec_eval splits them
        line.data = line.data.replace(b"\t", b" ")
        return "ok"
    return _mark(line, line.data.replace(b"\t", b" "))


GENERIC: list[Mutation] = [crlf, bom, blank_lines, no_final_newline, not_utf8, other_encoding, empty_file]
BY_FORMAT: dict[str, list[Mutation]] = {
    "jsonl": [
        truncate, duplicate, duplicate_changed, id_whitespace, id_empty, json_not_object,
        json_missing_field, json_bad_field_type, json_integer_id, json_extra_fields, json_broken_syntax,
        empty_text, unicode_text,
    ],
    "tsv": [
        truncate, duplicate, duplicate_changed, id_whitespace, id_empty, empty_text, unicode_text,
        tsv_no_tab, tsv_extra_tab,
    ],
    "beir": [
        truncate, duplicate, duplicate_changed, drop_column, extra_column, bad_relevance,
        negative_relevance, remove_beir_header, spaces_for_tabs,
    ],
    "trec": [truncate, duplicate, duplicate_changed, drop_column, extra_column, bad_relevance,
             negative_relevance, header_line],
    "3col": [truncate, duplicate, duplicate_changed, drop_column, extra_column, bad_relevance,
             negative_relevance, header_line],
    "run": [truncate, duplicate, drop_column, extra_column, bad_score, huge_numbers, header_line],
    "docpairs": [truncate, duplicate, drop_column, extra_column, id_whitespace, id_empty, spaces_for_tabs],
}  # fmt: skip
ACCEPTED = {crlf, bom, blank_lines, no_final_newline}  # combined with another mutation of the same file
JSONL_TITLES = {title_null}


def malformed_source(rng: random.Random, case: Case) -> object:
    """A ``local_collections`` value that cannot be read: a wrong key, a wrong type, a missing file."""
    files = {k: str(case.files[k].path) for k in ("docs", "queries")}
    qrels = str(case.files["qrels"].path)
    return rng.choice([
        {**files, "qrel": {"test": qrels}},
        {**files, "qrels": qrels},
        {**files, "qrels": {"test": [qrels]}},
        {"docs": files["docs"]},
        {**files, "qrels": {"test": qrels + ".missing"}},
        {**files, "docs": None},
        42,
        [files["docs"]],
        {**files, "qrels": {"test": qrels}, "runs": {"test": str(case.files["qrels"].path.parent)}},
    ])  # fmt: skip


def make_case(rng: random.Random, number: int, kinds: tuple[str, ...] = KINDS) -> Case:
    case = base_case(rng, number)
    if rng.random() < 0.03:
        case.expect, case.notes = "config", ["malformed local_collections"]
        return case
    if rng.random() < 0.06:
        return case  # unchanged: it must work
    kind = rng.choice(kinds)
    file = case.files[kind]
    specific = BY_FORMAT[file.fmt] + (list(JSONL_TITLES) if b'"title"' in file.lines[0].data else [])
    mutation = rng.choice(GENERIC if rng.random() < 0.3 else specific)
    expect = mutation(rng, file)
    notes = [f"{kind}.{file.fmt}: {mutation.__name__}"]
    if file.raw is None and mutation not in ACCEPTED and rng.random() < 0.4:
        extra = rng.choice(sorted(ACCEPTED, key=lambda m: m.__name__))
        extra(rng, file)
        notes.append(extra.__name__)
    case.expect, case.mutated, case.notes = expect, kind, notes
    return case


def write_case(case: Case, root: Path) -> object:
    """Write the case's files under ``root``; returns the ``local_collections`` value for them."""
    if case.layout == "beir":
        names = {
            "docs": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels/test.tsv",
            "run": "runs/test.trec", "docpairs": "docpairs/test.tsv",
        }  # fmt: skip
    else:
        suffix = {"jsonl": ".jsonl", "tsv": ".tsv"}
        names = {
            "docs": "docs" + suffix[case.files["docs"].fmt],
            "queries": "topics" + suffix[case.files["queries"].fmt],
            "qrels": "judgements.txt", "run": "bm25.trec", "docpairs": "pairs.tsv",
        }  # fmt: skip
    for kind, file in case.files.items():
        file.path = root / names[kind]
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_bytes(file.render())
    if case.expect == "config":
        return case.source_override
    if case.layout == "beir":
        return str(root)
    return {
        "docs": str(case.files["docs"].path),
        "queries": str(case.files["queries"].path),
        "qrels": {"test": str(case.files["qrels"].path)},
        "runs": {"test": str(case.files["run"].path)},
        "docpairs": {"test": str(case.files["docpairs"].path)},
    }


def cases(count: int, seed: int, kinds: tuple[str, ...] = KINDS) -> list[Case]:
    rng = random.Random(seed)
    return [make_case(rng, i, kinds) for i in range(count)]


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


# -- the invariant ------------------------------------------------------------------------------------------
def check_outcome(case: Case, message: str | None) -> None:
    """Success where the case expects it; else one line naming the mutated file (and its bad line)."""
    if message is None:
        assert case.expect in ("ok", "either"), f"{case!r}: accepted without an error"
        return
    assert "\n" not in message.strip(), f"{case!r}: the error is not one line: {message}"
    assert case.expect != "ok", f"{case!r}: refused: {message}"
    if case.expect == "config":
        return
    file = case.files[case.mutated]
    assert str(file.path) in message, f"{case!r}: the error does not name {file.path}: {message}"
    line = file.bad_line()
    if file.line_expected and line is not None:
        assert f"{file.path}:{line}:" in message, f"{case!r}: the error does not name line {line}: {message}"


def read_everything(case: Case, source: object) -> None:
    """What the commands read: register, then docs (and the docstore), queries, qrels, runs, docpairs."""
    from lightning_rank.datamodules.collections import load_dataset, register_local
    from lightning_rank.datamodules.files import read_trec_run

    if case.expect == "config":
        source = malformed_source(random.Random(case.number), case)
    for dataset_id in register_local(case.name, source):
        dataset = load_dataset(dataset_id)
        doc_ids = [doc.doc_id for doc in dataset.docs_iter()]
        assert doc_ids and all(isinstance(d, str) for d in doc_ids)
        dataset.docs_store().get_many(doc_ids[:3])
        assert all(isinstance(q.query_id, str) for q in dataset.queries_iter())
        for has, read in (("has_qrels", "qrels_dict"), ("has_scoreddocs", "scoreddocs_iter"),
                          ("has_docpairs", "docpairs_iter")):  # fmt: skip
            if getattr(dataset, has)():
                list(getattr(dataset, read)()) if read != "qrels_dict" else dataset.qrels_dict()
    read_trec_run(case.files["run"].path)


READER_CASES_LIST = cases(READER_CASES, SEED)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", READER_CASES_LIST, ids=lambda c: f"case{c.number}")
def test_readers_hold_the_invariant(case: Case, tmp_path: Path) -> None:
    from lightning_rank.errors import InputError

    source = write_case(case, tmp_path / "data")
    before = hashes(tmp_path / "data")
    try:
        read_everything(case, source)
        message = None
    except InputError as err:
        message = str(err)
    check_outcome(case, message)
    assert hashes(tmp_path / "data") == before, f"{case!r}: an input file changed"


BM25_CASES_LIST = cases(BM25_CASES, SEED + 1, kinds=("docs", "queries", "qrels"))
EARLIER = b"q0 Q0 d0 1 1.0 earlier\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", BM25_CASES_LIST, ids=lambda c: f"case{c.number}")
def test_bm25_command_holds_the_invariant(case: Case, tmp_path: Path, capsys) -> None:
    from lightning_rank.cli import main
    from lightning_rank.datamodules.files import read_trec_run

    source = write_case(case, tmp_path / "data")
    if case.expect == "config":
        source = malformed_source(random.Random(case.number), case)
    before = hashes(tmp_path / "data")
    output = tmp_path / "out" / "bm25.trec"
    output.parent.mkdir()
    output.write_bytes(EARLIER)
    name = f"bm25-{case.name}"
    status = main([
        "bm25", "--local_collections", json.dumps({name: source}), "--dataset", f"{name}/test",
        "--output", str(output), "--depth", "5",
    ])  # fmt: skip
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, f"{case!r}: {stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if status == 0:
        check_outcome(case, None)
        assert read_trec_run(output), f"{case!r}: an empty run"
    else:
        assert status == 2 and len(errors) == 1, f"{case!r}: exit {status}: {stderr}"
        check_outcome(case, errors[0])
        assert output.read_bytes() == EARLIER, f"{case!r}: the earlier output was damaged"
    assert hashes(tmp_path / "data") == before, f"{case!r}: an input file changed"


def demo_run_cases(count: int, seed: int) -> list[tuple[bytes, str, int | None]]:
    """Mutations of the demo's dev run: ``(content, expected outcome, bad line)``."""
    from lightning_rank.datamodules.collections import cache_home, register_demo
    from lightning_rank.datamodules.synthetic import DemoSpec

    register_demo()
    lines = (cache_home() / "demo" / DemoSpec().name / "runs" / "dev.trec").read_bytes().splitlines()
    rng = random.Random(seed)
    chosen = [bad_score, drop_column, header_line, crlf]
    result = []
    for number in range(count):
        file = File("run", "run", [Line(line) for line in lines])
        expect = chosen[number % len(chosen)](rng, file)
        result.append((file.render(), expect, file.bad_line()))
    return result


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("number", range(VALIDATE_CASES))
def test_validate_on_a_mutated_run_holds_the_invariant(number: int, tmp_path: Path, capsys) -> None:
    from lightning_rank.cli import main

    content, expect, line = demo_run_cases(VALIDATE_CASES, SEED + 2)[number]
    run = tmp_path / "dev.trec"
    run.write_bytes(content)
    before = hashes(tmp_path)
    status = main([
        "validate", "--config", str(REPO / "configs" / "demo.yaml"), "--data.val_run", str(run),
        "--data.rerank_depth", "5", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(tmp_path / "root"), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    if status == 0:
        assert expect in ("ok", "either"), f"case {number}: accepted: {stderr}"
    else:
        errors = [x for x in stderr.splitlines() if x.startswith("error:")]
        assert status == 2 and len(errors) == 1, stderr
        assert expect != "ok" and f"{run}:{line}:" in errors[0], errors[0]
    assert {k: v for k, v in hashes(tmp_path).items() if k in before} == before
