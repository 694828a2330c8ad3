"""``lightning-rank dense``: a run's candidates rescored by a bi-encoder (the SciFact recipe's teacher)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import cli, tiny_bi_encoder

from lightning_rank.commands.dense import dense, load_bi_encoder
from lightning_rank.datamodules.collections import load_dataset, register_local
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.datamodules.synthetic import DemoSpec, generate
from lightning_rank.errors import InputError
from lightning_rank.runs import write_trec_run

sentence_transformers = pytest.importorskip("sentence_transformers")


def dense_cli(collections: str, run: Path, output: Path, model: str | Path, *extra: str):
    """``lightning-rank dense`` over the tiny collection's dev queries."""
    return cli("dense", "--local_collections", collections, "--dataset", "tinydense/dev", "--run", str(run),
               "--output", str(output), "--model", str(model), *extra)  # fmt: skip


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> tuple[str, Path, Path]:
    """A registered tiny collection (``tinydense``), its BM25 dev run and a bi-encoder folder."""
    root = tmp_path_factory.mktemp("dense")
    folder = generate(
        root / "beir",
        DemoSpec(num_topics=8, filler_vocabulary=12, query_fillers=2, train_queries=16, dev_queries=6),
    )
    collections = json.dumps({"tinydense": str(folder)})
    run = root / "bm25-dev.trec"
    done = cli("bm25", "--local_collections", collections, "--dataset", "tinydense/dev", "--depth", "8",
               "--output", str(run))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return collections, run, tiny_bi_encoder(root / "bi-encoder")


@pytest.mark.slow
def test_dense_rescores_every_candidate_with_the_bi_encoders_cosine(collection, tmp_path):
    collections, bm25_run, model = collection
    out = tmp_path / "dense-dev.trec"
    done = dense_cli(collections, bm25_run, out, model, "--max_length", "32")
    assert done.returncode == 0, done.stderr
    assert "nDCG@10=" in done.stdout
    candidates, rescored = read_trec_run(bm25_run), read_trec_run(out)
    assert {q: set(d) for q, d in rescored.items()} == {q: set(d) for q, d in candidates.items()}

    # each score is the cosine of that query's and that document's own embeddings, computed independently
    register_local("tinydense", json.loads(collections)["tinydense"])
    dataset = load_dataset("tinydense/dev")
    queries = {q.query_id: q.default_text() for q in dataset.queries_iter()}
    store = dataset.docs_store()
    encoder = sentence_transformers.SentenceTransformer(str(model), device="cpu")
    encoder.max_seq_length = 32
    for qid in sorted(rescored)[:3]:
        docs = sorted(rescored[qid])
        vectors = encoder.encode(
            [queries[qid], *(store.get(d).default_text() for d in docs)], normalize_embeddings=True,
            convert_to_tensor=True,
        )  # fmt: skip
        expected = (vectors[1:] @ vectors[0]).tolist()
        assert [rescored[qid][d] for d in docs] == pytest.approx(expected, abs=1e-5)
    # a random bi-encoder does not give every candidate of a query one score
    assert any(len(set(docs.values())) > 1 for docs in rescored.values())


@pytest.mark.slow
def test_dense_refuses_a_run_over_another_collection(collection, tmp_path):
    collections, _, model = collection
    stranger = tmp_path / "stranger.trec"
    write_trec_run({"no-such-query": {"d1": 1.0}}, stranger)
    done = dense_cli(collections, stranger, tmp_path / "out.trec", model)
    assert done.returncode == 2 and "none of the run's queries is a query of tinydense/dev" in done.stderr
    assert not (tmp_path / "out.trec").exists()

    qid = next(iter(read_trec_run(collection[1])))
    write_trec_run({qid: {"no-such-doc": 1.0}}, stranger)
    with pytest.raises(ValueError, match=r"is not a run over tinydense/dev.*no-such-doc"):
        # checked before the model loads: a model that is nowhere is not what is reported
        dense("tinydense/dev", str(stranger), str(tmp_path / "out.trec"), str(tmp_path / "nowhere"),
              local_collections=json.loads(collections))  # fmt: skip
    assert not (tmp_path / "out.trec").exists()


def test_dense_names_a_missing_model_and_a_missing_library(collection, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hugging Face hub id"):
        load_bi_encoder(str(tmp_path / "nowhere"), None, "cpu")
    with pytest.raises(InputError, match="downloaded first"):
        load_bi_encoder("lightning-rank/no-such-encoder", None, "cpu")
    with pytest.raises(InputError, match="--max_length must be a positive number of tokens, got 0"):
        load_bi_encoder(str(tmp_path / "nowhere"), 0, "cpu")  # refused before any model is looked for
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(InputError, match=r"needs sentence-transformers: pip install"):
        load_bi_encoder(str(collection[2]), None, "cpu")
