"""Local data files are checked by our own readers: each mistake is one ``error: FILE:LINE: what; fix`` with
exit 2, what real collections hold (CRLF, a BEIR qrels header, a BOM, blank lines) is read, and duplicates
keep their first copy everywhere with one warning that counts them (issue #21)."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import lightning.pytorch  # noqa: F401  (its console handler then writes to the session's stderr)
import pytest

from lightning_rank.cli import main
from lightning_rank.datamodules.collections import load_dataset, register_local
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import InputError

EARLIER = b"q0 Q0 d0 1 1.0 earlier\n"


def beir_folder(root: Path, corpus: bytes | None = None, queries: bytes | None = None,
                qrels: bytes | None = None, newline: bytes = b"\n") -> Path:  # fmt: skip
    """A BEIR folder: 8 documents d0..d7, 4 queries q0..q3 whose positive is d<q>, BEIR TSV qrels."""
    (root / "qrels").mkdir(parents=True)
    lines = {
        "corpus.jsonl": [
            json.dumps({"_id": f"d{d}", "title": f"t{d}", "text": f"kavo baba passage {d} topic{d % 4}"})
            for d in range(8)
        ],
        "queries.jsonl": [json.dumps({"_id": f"q{q}", "text": f"topic{q} question"}) for q in range(4)],
        "qrels/test.tsv": ["query-id\tcorpus-id\tscore", *(f"q{q}\td{q}\t1" for q in range(4))],
    }
    given = {"corpus.jsonl": corpus, "queries.jsonl": queries, "qrels/test.tsv": qrels}
    for name, default in lines.items():
        content = newline.join(line.encode() for line in default) + newline
        (root / name).write_bytes(content if given[name] is None else given[name])
    return root


def bm25(capsys, name: str, source: object, output: Path) -> tuple[int, str]:
    """``lightning-rank bm25`` in-process over ``source`` registered as ``name``: (status, stderr)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    status = main([
        "bm25", "--local_collections", json.dumps({name: str(source) if isinstance(source, Path) else
                                                   source}),
        "--dataset", f"{name}/test", "--output", str(output), "--depth", "8",
    ])  # fmt: skip
    return status, capsys.readouterr().err


def assert_one_error(status: int, stderr: str, needle: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2 and "Traceback" not in stderr, stderr
    assert len(errors) == 1 and needle in errors[0], stderr


def corpus_with(line: int, replacement: bytes) -> bytes:
    """The default corpus with its line ``line`` (1-based) replaced."""
    lines = [
        json.dumps({"_id": f"d{d}", "text": f"kavo baba passage {d} topic{d % 4}"}).encode() for d in range(8)
    ]
    lines[line - 1] = replacement
    return b"\n".join(lines) + b"\n"


# -- one error per kind of mistake, with file and line, through `lightning-rank bm25` ---------------------
CORPUS_MISTAKES = {
    "truncated last line": (corpus_with(8, b'{"_id": "d7", "text": "kavo ba')[:-1], 8, "looks truncated"),
    "not an object": (corpus_with(3, b'["d2", "text"]'), 3, "a JSON array, not an object"),
    "no _id": (corpus_with(4, b'{"id": "d3", "text": "x"}'), 4, 'no "_id"'),
    "no text": (corpus_with(5, b'{"_id": "d4", "body": "x"}'), 5, 'no "text"'),
    "text not a string": (corpus_with(5, b'{"_id": "d4", "text": 3}'), 5, '"text" is a number, not a string'),
    "id with a space": (corpus_with(2, b'{"_id": "d 1", "text": "x"}'), 2, "'d 1' holds whitespace"),
    "id with a tab": (corpus_with(2, b'{"_id": "d\\t1", "text": "x"}'), 2, "holds whitespace"),
    "empty id": (corpus_with(6, b'{"_id": "", "text": "x"}'), 6, "empty document id"),
    "invalid JSON": (corpus_with(2, b'{"_id": "d1" "text": "x"}'), 2, "not valid JSON (Expecting ','"),
    "UTF-16": ("\n".join(f'{{"_id": "d{d}", "text": "x"}}' for d in range(3)).encode("utf-16-le"), 1,
               "a NUL byte"),
}  # fmt: skip


@pytest.mark.parametrize("mistake", CORPUS_MISTAKES)
def test_corpus_mistakes_are_one_error_with_file_and_line(tmp_path, capsys, mistake):
    content, line, needle = CORPUS_MISTAKES[mistake]
    folder = beir_folder(tmp_path / "data", corpus=content)
    output = tmp_path / "out" / "run.trec"
    output.parent.mkdir()
    output.write_bytes(EARLIER)
    status, stderr = bm25(capsys, f"corpus-{abs(hash(mistake))}", folder, output)
    assert_one_error(status, stderr, f"error: {folder / 'corpus.jsonl'}:{line}: ")
    assert needle in stderr, stderr
    assert output.read_bytes() == EARLIER


def tsv_files(root: Path, docs: bytes | None = None, queries: bytes | None = None,
              qrels: bytes | None = None) -> dict:  # fmt: skip
    root.mkdir(parents=True)
    content = {
        "docs.tsv": docs or b"".join(b"d%d\tkavo passage %d topic%d\n" % (d, d, d % 4) for d in range(8)),
        "queries.tsv": queries or b"".join(b"q%d\ttopic%d question\n" % (q, q) for q in range(4)),
        "qrels.txt": qrels or b"".join(b"q%d 0 d%d 1\n" % (q, q) for q in range(4)),
    }
    for name, data in content.items():
        (root / name).write_bytes(data)
    return {"docs": str(root / "docs.tsv"), "queries": str(root / "queries.tsv"),
            "qrels": {"test": str(root / "qrels.txt")}}  # fmt: skip


GOOD_DOCS = [b"d%d\tkavo passage %d topic%d" % (d, d, d % 4) for d in range(8)]
GOOD_QRELS = [b"q%d 0 d%d 1" % (q, q) for q in range(4)]
TSV_MISTAKES = {
    "docs: 3 columns": ("docs", [*GOOD_DOCS[:3], b"d3\tkavo\tpassage", *GOOD_DOCS[4:]], 4,
                        "3 tab-separated columns, expected 2"),
    "docs: no tab": ("docs", [*GOOD_DOCS[:2], b"d2 kavo passage", *GOOD_DOCS[3:]], 3,
                     "no tab (are the columns"),
    "docs: id with a space": ("docs", [b"d 0\tkavo", *GOOD_DOCS[1:]], 1, "'d 0' holds whitespace"),
    "docs: empty id": ("docs", [*GOOD_DOCS[:7], b"\tkavo"], 8, "empty document id"),
    "queries: empty id": ("queries", [b"q0\ttopic0", b" \ttopic1"], 2, "empty query id"),
    "qrels: 5 columns": ("qrels", [*GOOD_QRELS[:1], b"q1 0 d1 1 x", *GOOD_QRELS[2:]], 2,
                         "5 columns; qrels lines are 'qid 0 docid relevance' (TREC)"),
    "qrels: fractional relevance": ("qrels", [*GOOD_QRELS[:2], b"q2 0 d2 1.5"], 3,
                                    "relevance '1.5' is not an integer"),
    "qrels: word relevance": ("qrels", [*GOOD_QRELS[:3], b"q3 0 d3 yes"], 4,
                              "relevance 'yes' is not an integer"),
    "qrels: huge relevance": ("qrels", [b"q0 0 d0 99999999999"], 1,
                              "relevance '99999999999' is not an integer"),
    "qrels: header": ("qrels", [b"qid iter docid rel", *GOOD_QRELS], 1, "looks like a header"),
    "qrels: BEIR header then 4 columns": ("qrels", [b"query-id\tcorpus-id\tscore", *GOOD_QRELS], 2,
                                          "4 columns; qrels lines are 'qid docid relevance'"),
    "qrels: cut short": ("qrels", [*GOOD_QRELS[:3], b"q3 0 d"], 4, "is the file truncated?"),
}  # fmt: skip


@pytest.mark.parametrize("mistake", TSV_MISTAKES)
def test_tsv_and_trec_mistakes_are_one_error_with_file_and_line(tmp_path, capsys, mistake):
    kind, lines, line, needle = TSV_MISTAKES[mistake]
    final = b"" if mistake == "qrels: cut short" else b"\n"
    files = tsv_files(tmp_path / "data", **{kind: b"\n".join(lines) + final})
    path = {"docs": files["docs"], "queries": files["queries"], "qrels": files["qrels"]["test"]}[kind]
    status, stderr = bm25(capsys, f"tsv-{abs(hash(mistake))}", files, tmp_path / "out" / "run.trec")
    assert_one_error(status, stderr, f"error: {path}:{line}: ")
    assert needle in stderr, stderr


RUN_MISTAKES = {
    "header": (b"qid Q0 docid rank score tag\nq0 Q0 d0 1 2.0 t\n", 1, "looks like a header"),
    "rank not an integer": (b"q0 Q0 d0 1 2.0 t\nq0 Q0 d1 0.5 1.0 t\n", 2, "rank '0.5' (column 4)"),
    "score not a number": (b"q0 Q0 d0 1 high t\n", 1, "score 'high' (column 5) is not a number"),
    "score NaN": (b"q0 Q0 d0 1 2.0 t\nq0 Q0 d1 2 nan t\n", 2, "score 'nan' (column 5) is not a number"),
    "score overflows": (b"q0 Q0 d0 1 1e999 t\n", 1, "beyond a finite float"),
    "3 columns": (b"q0 Q0 d0 1 2.0 t\n\nq0 d1 1.0\n", 3, "expected 'qid Q0 docid rank score tag'"),
    "a document twice": (b"q0 Q0 d0 1 2.0 t\r\nq0 Q0 d0 2 1.0 t\r\n", 2, "'d0' appears twice"),
    "empty": (b"\n\n", None, "holds no 'qid Q0 docid rank score tag' lines"),
}


@pytest.mark.parametrize("mistake", RUN_MISTAKES)
def test_run_file_mistakes_are_one_error_with_file_and_line(tmp_path, capsys, mistake):
    content, line, needle = RUN_MISTAKES[mistake]
    bad = tmp_path / "reranked.trec"
    bad.write_bytes(content)
    good = tmp_path / "bm25.trec"
    good.write_bytes(b"q0 Q0 d0 1 2.0 bm25\nq0 Q0 d1 2 1.0 bm25\n")
    output = tmp_path / "fused.trec"
    output.write_bytes(EARLIER)
    status = main(["fuse", "--run", str(bad), "--first_stage", str(good), "--output", str(output),
                   "--weight", "0.5"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert_one_error(status, stderr, f"error: {bad}{f':{line}:' if line else ':'} ")
    assert needle in stderr, stderr
    assert output.read_bytes() == EARLIER


def test_docpairs_mistakes_name_file_and_line(tmp_path):
    files = tsv_files(tmp_path / "data")
    pairs = tmp_path / "data" / "pairs.tsv"
    pairs.write_bytes(b"q0\td0\td1\nq1 d1 d2\n")
    register_local("pairs-bad", {**files, "docpairs": {"test": str(pairs)}})
    with pytest.raises(InputError, match=rf"^{pairs}:2: 1 tab-separated columns \(are the columns separated"):
        list(load_dataset("pairs-bad/test").docpairs_iter())


# -- what real collections hold is read ----------------------------------------------------------------
def test_crlf_bom_and_blank_lines_read_as_the_plain_files(tmp_path, capsys):
    """Real BEIR qrels are CRLF with a `query-id corpus-id score` header; a BOM and blank lines are common."""
    plain = beir_folder(tmp_path / "plain")
    crlf = beir_folder(tmp_path / "crlf", newline=b"\r\n")
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        path = crlf / name
        path.write_bytes(b"\xef\xbb\xbf\r\n" + path.read_bytes().replace(b"\r\n", b"\r\n  \r\n", 2))
    runs = {}
    for name, folder in (("plain", plain), ("crlf", crlf)):
        status, stderr = bm25(capsys, f"endings-{name}", folder, tmp_path / f"{name}.trec")
        assert status == 0, stderr
        runs[name] = read_trec_run(tmp_path / f"{name}.trec")
    assert runs["crlf"] == runs["plain"] and len(runs["plain"]) == 4
    plain_ds, crlf_ds = load_dataset("endings-plain/test"), load_dataset("endings-crlf/test")
    assert crlf_ds.qrels_dict() == plain_ds.qrels_dict()
    assert list(crlf_ds.docs_iter()) == list(plain_ds.docs_iter())


def test_real_beir_folder_is_read_and_checked_once(tmp_path, monkeypatch):
    """SciFact as BEIR ships it (CRLF qrels with a header): read whole, then served from the cached check."""
    from helpers import SHARED_DATA

    from lightning_rank.datamodules import file_checks as data_files

    scifact = SHARED_DATA / "scifact"
    if not (scifact / "corpus.jsonl").is_file():
        pytest.skip("no SciFact copy in ../shared/data")
    register_local("scifact-check", scifact)
    dataset = load_dataset("scifact-check/test")
    start = time.perf_counter()
    assert len(dataset.qrels_dict()) == 300 and sum(1 for _ in dataset.docs_iter()) == 5183
    assert sum(1 for _ in dataset.queries_iter()) == 300
    assert time.perf_counter() - start < 10  # checks and docstore build of 8 MB: about 1 s on 2 cores
    data_files._checked.clear()  # as in a new process: the checks come from the cache in ir_datasets' home

    def no_rescan(*args):
        raise AssertionError("checked twice")

    monkeypatch.setattr(data_files, "_scan", no_rescan)
    assert len(dataset.qrels_dict()) == 300 and sum(1 for _ in dataset.queries_iter()) == 300
    assert load_dataset("scifact-check").docs_store().get("4983").title.startswith("Microstructural")


# -- duplicates ------------------------------------------------------------------------------------------
def console(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("lightning") and r.levelno >= 30]


def test_duplicate_document_ids_keep_the_first_copy_everywhere(tmp_path, capsys, caplog):
    """The docstore and BM25 see one copy: the run equals the one over the corpus without the later copies."""
    lines = [json.dumps({"_id": f"d{d}", "text": f"kavo baba passage {d} topic{d % 4}"}) for d in range(8)]
    duplicated = [*lines[:5], json.dumps({"_id": "d2", "text": "topic0 topic1 topic2 topic3"}), *lines[5:],
                  lines[7]]  # fmt: skip
    clean = beir_folder(tmp_path / "clean", corpus="\n".join(lines).encode() + b"\n")
    dup = beir_folder(tmp_path / "dup", corpus="\n".join(duplicated).encode() + b"\n")
    with caplog.at_level(logging.WARNING):
        assert bm25(capsys, "dup-docs", dup, tmp_path / "dup.trec")[0] == 0
    assert bm25(capsys, "clean-docs", clean, tmp_path / "clean.trec")[0] == 0
    assert read_trec_run(tmp_path / "dup.trec") == read_trec_run(tmp_path / "clean.trec")
    assert console(caplog) == [
        f"{dup / 'corpus.jsonl'}: 2 duplicate document ids (1 of them with another text; e.g. 'd2' at "
        "lines 3 and 6, 'd7' at lines 9 and 10): the first copy of each is used and the later ones are "
        "dropped everywhere (docstore, BM25, training, evaluation). Remove the later copies from the file to "
        "silence this."
    ]
    docs = load_dataset("dup-docs/test")
    assert [d.doc_id for d in docs.docs_iter()] == [f"d{d}" for d in range(8)]
    assert docs.docs_store().get("d2").text == "kavo baba passage 2 topic2"


def test_duplicate_query_ids_and_judgements_keep_the_first_with_counts(tmp_path, caplog):
    queries = b"q0\ttopic0 question\nq1\ttopic1 question\nq0\tanother text\nq2\ttopic2 question\n"
    qrels = b"q0 0 d0 1\nq1 0 d1 1\nq0 0 d0 1\nq1 0 d1 0\nq2 0 d2 2\n"
    files = tsv_files(tmp_path / "data", queries=queries, qrels=qrels)
    with caplog.at_level(logging.WARNING):
        register_local("dup-queries", files)
        dataset = load_dataset("dup-queries/test")
        assert {q.query_id: q.text for q in dataset.queries_iter()} == {
            "q0": "topic0 question", "q1": "topic1 question", "q2": "topic2 question",
        }  # fmt: skip
        assert dataset.qrels_dict() == {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 2}}
    warned = console(caplog)
    assert len(warned) == 2, warned
    assert warned[0].startswith(
        f"{files['qrels']['test']}: 2 duplicate judgements (1 of them with another grade; e.g. 'q0 d0' at "
        "lines 1 and 3, 'q1 d1' at lines 2 and 4)"
    )
    assert warned[1].startswith(
        f"{files['queries']}: 1 duplicate query ids (1 of them with another text; e.g. 'q0' at lines 1 and 3)"
    )


# -- settings ------------------------------------------------------------------------------------------
MALFORMED = [
    ({"docs": "D", "queries": "Q", "qrel": {}}, "unknown key 'qrel' (did you mean 'qrels'?)"),
    ({"docs": "D", "queries": "Q", "qrels": "Q"}, "qrels must map each split to a file"),
    ({"docs": "D"}, "queries must be the path of a .tsv or .jsonl file, got None"),
    (42, "42 is neither the path of a BEIR-format folder nor files"),
]


@pytest.mark.parametrize(("source", "needle"), MALFORMED)
def test_malformed_local_collections_are_one_error(source, needle):
    from lightning_rank.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^local collection 'settings': {re.escape(needle)}"):
        register_local("settings", source)


@pytest.mark.parametrize(("source", "needle"), MALFORMED)
def test_malformed_local_collections_through_the_cli_are_one_error(tmp_path, capsys, source, needle):
    status, stderr = bm25(capsys, "settings-cli", source, tmp_path / "run.trec")
    assert_one_error(status, stderr, f"error: local collection 'settings-cli': {needle}")
