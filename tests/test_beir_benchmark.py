"""benchmarks/beir.py end to end on a tiny generated BEIR folder: the code path of the SciFact result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, TINY_BERT, tiny_bi_encoder

from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.datamodules.synthetic import DemoSpec, generate


@pytest.mark.slow
def test_beir_benchmark_runs_bm25_teacher_fit_rerank_and_reports(tmp_path):
    folder = generate(
        tmp_path / "tinybeir",
        DemoSpec(num_topics=8, filler_vocabulary=12, query_fillers=2, train_queries=40, dev_queries=10),
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "beir.py"),
            "--data",
            str(folder),
            "--test-split",
            "dev",
            "--depth",
            "20",
            "--out",
            str(out),
            "--teacher",
            "bm25+dense",
            "--teacher-model",
            str(tiny_bi_encoder(tmp_path / "bi-encoder")),
            "--teacher-max-length",
            "32",
            "--",
            "--model.backbone_args",
            json.dumps({**TINY_BERT, "pooling": "mean"}),  # the recipe's pooling
            "--trainer.max_steps",
            "3",
            "--data.excerpt",  # what a CrossEncoder reads: the start of each document
            "first",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("nDCG@10 bm25=") and " reranker=" in last and " reranker+bm25=" in last
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]) == {"BM25", "reranker", "reranker+bm25"}
    assert 0.0 <= saved["weight"] <= 1.0
    # the distilled teacher is BM25 fused with the bi-encoder, over the same candidates as BM25's train run
    assert 0.0 <= saved["teacher_weight"] <= 1.0 and saved["timings_s"]["teacher"] > 0
    assert "teacher: " in result.stdout and " x bi-encoder + " in result.stdout
    teacher, bm25 = read_trec_run(out / "teacher-train.trec"), read_trec_run(out / "bm25-train.trec")
    assert {q: set(d) for q, d in teacher.items()} == {q: set(d) for q, d in bm25.items()}
    config = yaml.safe_load(next((out / "fit").rglob("config.yaml")).read_text())
    assert config["data"]["teacher_run"] == str(out / "teacher-train.trec")
    # a fifth of the 40 train queries (at most 100) held out to tune the interpolation, and not trained on
    held_out = (out / "qrels-heldout.tsv").read_text().splitlines()[1:]
    trained = (out / "qrels-train.tsv").read_text().splitlines()[1:]
    assert len({line.split()[0] for line in held_out}) == 8
    assert not {line.split()[0] for line in held_out} & {line.split()[0] for line in trained}
    for run in ("bm25-train.trec", "bm25-heldout.trec", "bm25-dev.trec", "reranker-heldout.trec",
                "reranker-dev.trec", "fused-dev.trec"):  # fmt: skip
        assert (out / run).stat().st_size > 0
    # the config's loss distils BM25: without its train run as the teacher, training would stop at once
    assert "WeightedSum" in (out / "fit.log").read_text()

    # the fine-tuned reranker exported for sentence-transformers reranks through CrossEncoder as predict did
    parity = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cross_encoder_export.py"), "--data", str(folder),
         "--out", str(out), "--test-split", "dev", "--depth", "20"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert parity.returncode == 0, parity.stdout[-2000:] + parity.stderr[-2000:]
    last = parity.stdout.strip().splitlines()[-1]
    assert last.startswith("nDCG@10 predict=") and last.endswith("diff=0.0000"), last
    assert (out / "cross-encoder" / "modules.json").is_file()  # mean pooling: a CrossEncoder of modules
    ours, theirs = read_trec_run(out / "reranker-dev.trec"), read_trec_run(out / "cross-encoder-dev.trec")
    assert {q: set(d) for q, d in ours.items()} == {q: set(d) for q, d in theirs.items()}
    assert max(abs(ours[q][d] - theirs[q][d]) for q in ours for d in ours[q]) < 1e-4


@pytest.mark.slow
def test_beir_benchmark_refuses_a_teacher_model_without_the_dense_teacher(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "beir.py"), "--data", str(tmp_path)]
    result = subprocess.run([*command, "--teacher-model", "x"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pass that too, or drop it" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.slow
def test_beir_benchmark_names_a_folder_without_the_test_split_and_exits_2(tmp_path):
    folder = tmp_path / "collection"
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    command = [sys.executable, str(REPO / "benchmarks" / "beir.py"), "--data", str(folder),
               "--out", str(tmp_path / "out"), "--model", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {folder}: no qrels/test.tsv"), result.stderr
