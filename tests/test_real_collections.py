"""What real BEIR collections hold and generated ones did not: queries without a single indexable term
(stopwords, punctuation, ``M&M's``, empty), single-word queries, CRLF qrels with BEIR's header, graded
qrels (0, 1, 2), and a folder named like an ir_datasets id (``nfcorpus``). ``lightning-rank bm25 --judged``
and ``benchmarks/beir.py`` run on them end to end."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY_BERT, stub_backbone, tsv_collection

from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.datamodules.synthetic import DemoSpec, generate
from lightning_rank.errors import DataError, DataFileError
from lightning_rank.text.templates import CAUSAL_TEMPLATE

# queries BM25 finds no term of (after stopwords, punctuation and one-letter words are dropped)
TERMLESS = {"stop": "is the of and a", "punct": "?! ... -- (;)", "empty": "", "mm": "M&M's"}
UNKNOWN_WORD = "zyzzyva"  # a single word no document holds


def odd_beir_folder(root: Path, name: str = "nfcorpus") -> tuple[Path, str]:
    """A BEIR folder with train and test splits as BEIR ships them (CRLF qrels with a header, no runs),
    graded qrels (0, 1, 2) and, in both splits, the queries of :data:`TERMLESS`, a single unknown word
    and a single corpus word. Returns the folder and that corpus word."""
    source = generate(
        root / "generated",
        DemoSpec(num_topics=8, filler_vocabulary=12, query_fillers=2, train_queries=40, dev_queries=12),
    )
    folder = root / name
    folder.mkdir()
    shutil.copy(source / "corpus.jsonl", folder / "corpus.jsonl")
    queries = [json.loads(line) for line in (source / "queries.jsonl").read_text().splitlines()]
    corpus = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()]
    word = corpus[0]["text"].split()[0]
    odd = {**TERMLESS, "unknown": UNKNOWN_WORD, "word": word}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in queries)
        + "".join(
            json.dumps({"_id": f"{split}-{k}", "text": text}) + "\n"
            for split in ("train", "test")
            for k, text in odd.items()
        )
    )
    (folder / "qrels").mkdir()
    for split, generated in (("train", "train"), ("test", "dev")):
        rows = ["query-id\tcorpus-id\tscore"]
        for n, line in enumerate((source / "qrels" / f"{generated}.tsv").read_text().splitlines()[1:]):
            qid, doc, _ = line.split("\t")
            rows.append(f"{qid}\t{doc}\t{2 if n % 3 == 0 else 1}")
        for n, qid in enumerate(odd):
            rows += [f"{split}-{qid}\t{corpus[n]['_id']}\t2", f"{split}-{qid}\t{corpus[n + 20]['_id']}\t0"]
        rows.append(f"{rows[1].split()[0]}\t{corpus[-1]['_id']}\t0")  # a judged non-relevant document
        (folder / "qrels" / f"{split}.tsv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return folder, word


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> tuple[Path, str]:
    return odd_beir_folder(tmp_path_factory.mktemp("real"))


def test_bm25_judged_scores_queries_without_terms_zero_and_counts_them(odd_folder, tmp_path, caplog):
    folder, _ = odd_folder
    output = tmp_path / "train.trec"
    collections = json.dumps({"odd-bm25": str(folder)})
    with caplog.at_level(logging.WARNING, logger="lightning_rank.commands.bm25"):
        status = main(["bm25", "--local_collections", collections, "--dataset", "odd-bm25/train",
                       "--depth", "5", "--judged", "true", "--output", str(output)])  # fmt: skip
    assert status == 0
    run = read_trec_run(output)
    for key in (*TERMLESS, "unknown"):  # no term in common with any document: BM25 scores 0 everywhere
        assert len(run[f"train-{key}"]) == 2 and set(run[f"train-{key}"].values()) == {0.0}
    assert len(run["train-word"]) >= 2 and max(run["train-word"].values()) > 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "lightning_rank.commands.bm25"]
    queries = {line.split()[0] for line in (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    assert f"odd-bm25/train: 4 of {len(queries)} queries have no indexable term" in warning
    assert "and 1 share no term with the corpus" in warning and "train-stop ('is the of and a')" in warning


def test_bm25_refuses_a_corpus_without_an_indexable_term(tmp_path, capsys):
    folder = tmp_path / "stopwords"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": "the of"}) + "\n"
                                                 for i in range(3)))  # fmt: skip
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "cats"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td0\t1\n")
    collections = json.dumps({"stopwords": str(folder)})
    status = main(["bm25", "--local_collections", collections, "--dataset", "stopwords/test", "--output",
                   str(tmp_path / "run.trec")])  # fmt: skip
    assert status == 2
    assert "stopwords/test: no document has an indexable term" in capsys.readouterr().err
    assert not (tmp_path / "run.trec").exists()


def beir_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "beir.py"), *args],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_beir_benchmark_runs_on_a_folder_named_like_an_ir_datasets_id(odd_folder, tmp_path):
    folder, _ = odd_folder
    assert folder.name == "nfcorpus"  # an ir_datasets id: registering the folder under it would clash
    out = tmp_path / "out"
    result = beir_script(
        "--data",
        str(folder),
        "--depth",
        "10",
        "--out",
        str(out),
        "--",
        "--model.backbone_args",
        json.dumps(TINY_BERT),
        "--trainer.max_steps",
        "2",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("nDCG@10 bm25=") and " reranker=" in last and " reranker+bm25=" in last
    assert "local/nfcorpus (test)" in result.stdout
    # the termless and unknown-word queries reached every stage: reported by bm25, none crashed
    assert "queries have no indexable term" in (out / "bm25-train.log").read_text()
    assert "queries have no indexable term" in (out / "bm25-test.log").read_text()
    reranked = read_trec_run(out / "reranker-test.trec")
    assert "test-word" in reranked and "test-stop" not in reranked  # nothing to rerank for a termless query


@pytest.mark.slow
def test_beir_benchmark_refuses_a_name_that_ir_datasets_has(odd_folder, tmp_path):
    folder, _ = odd_folder
    result = beir_script("--data", str(folder), "--name", "nfcorpus", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "error: --name nfcorpus: ir_datasets already has a dataset with this id; pass another"
    assert expected in result.stderr
    assert not (tmp_path / "out").exists()


# -- wrong answers with exit 0: duplicate run lines, evaluation without a positive ------------------------
def eval_module(name: str, files: dict, template: str = CAUSAL_TEMPLATE, **kwargs) -> RerankDataModule:
    dm = RerankDataModule(local_collections={name: files}, val_dataset=f"{name}/dev", **kwargs)
    dm.use_backbone(stub_backbone(template))
    return dm


def console(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("lightning") and r.levelno >= 30]


def test_a_run_listing_a_document_twice_for_a_query_is_refused_with_its_line(tmp_path):
    run = [f"{q} Q0 p{(q + k) % 20} {k + 1} {9 - k} bm25" for q in range(6) for k in range(4)]
    run.insert(3, "0 Q0 p1 9 0.5 bm25")  # line 4: p1 again for query 0, with another score
    files = tsv_collection(tmp_path, run=run)
    with pytest.raises(DataFileError, match=rf"^{tmp_path / 'run.trec'}:4: document 'p1' is listed twice for "
                                            r"query '0'.*remove the later line"):  # fmt: skip
        eval_module("dup-eval", files).setup("validate")
    train = RerankDataModule(
        local_collections={"dup-train": files}, train_dataset="dup-train/dev", group_size=2
    )
    train.use_backbone(stub_backbone())
    with pytest.raises(DataFileError, match=r"run\.trec:4: document 'p1' is listed twice for query '0'"):
        train.setup("fit")


def test_a_repeat_in_another_block_of_the_query_is_found_in_its_top_depth(tmp_path):
    run = [f"{q} Q0 p{(q + k) % 20} {k + 1} {9 - k} bm25" for q in range(6) for k in range(4)]
    run.append("0 Q0 p2 5 0.1 bm25")  # query 0 again after the other queries: p2 is in its top 4
    given = tmp_path / "given.trec"
    given.write_text("\n".join(run) + "\n")
    dm = eval_module("dup-block", tsv_collection(tmp_path), val_run=str(given))
    with pytest.raises(DataFileError, match=rf"^{given}:25: document 'p2' is listed twice for query '0'"):
        dm.setup("validate")


def test_an_evaluation_without_a_relevant_document_is_refused(tmp_path):
    files = tsv_collection(tmp_path, qrels=[f"{q} 0 p{q} 0" for q in range(6)])
    expected = (
        r"none of the 6 queries data\.val_dataset reranks has a relevant document in its qrels \(6 are judged"
    )
    with pytest.raises(DataError, match=expected):
        eval_module("no-positive", files).setup("validate")


def test_queries_without_a_relevant_document_are_counted(tmp_path, caplog):
    grades = [2, 1, 0, 1, 0, 1]  # graded qrels: 2 of the 6 queries judge their only document 0
    files = tsv_collection(tmp_path, qrels=[f"{q} 0 p{q} {g}" for q, g in enumerate(grades)])
    with caplog.at_level(logging.WARNING):
        eval_module("some-positive", files).setup("validate")
    (warning,) = [m for m in console(caplog) if "relevant" in m]
    assert "some-positive/dev: 2 of 6 reranked queries have no relevant document in the qrels" in warning
    assert "0 are not judged at all" in warning and "2 count 0 in every measure" in warning
