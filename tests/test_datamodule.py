"""Training groups and evaluation pairs: sharding, exact resume, hard-negative rules, skip counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import stub_backbone

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.datamodules import RerankDataModule, register_beir_folder
from lightning_rank.datamodules.groups import build_training_index
from lightning_rank.datamodules.stream import ResumableLoader
from lightning_rank.errors import DataError

WORDS = load_tokenizer("builtin:words")


def write_collection(root: Path, n_queries: int = 24, n_docs: int = 60) -> Path:
    """A small BEIR folder: query i has positive d{i} (and d{i+1} for even i); a run of 12 per query."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as f:
        for d in range(n_docs):
            doc = {"_id": f"d{d}", "title": "", "text": f"baba bebe kavo{d % 5} doc {d}"}
            f.write(json.dumps(doc) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for q in range(n_queries):
            f.write(json.dumps({"_id": f"q{q}", "text": f"kavo query {q}"}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"]
    for q in range(n_queries):
        rows.append(f"q{q}\td{q}\t1")
        if q % 2 == 0:
            rows.append(f"q{q}\td{q + 1}\t2")
    (root / "qrels" / "train.tsv").write_text("\r\n".join(rows) + "\r\n")  # BEIR ships CRLF
    (root / "runs").mkdir(exist_ok=True)
    run = [f"q{q} Q0 d{(q + k) % n_docs} {k + 1} {20 - k} bm25" for q in range(n_queries) for k in range(12)]
    (root / "runs" / "train.trec").write_text("\n".join(run) + "\n")
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> str:
    folder = write_collection(tmp_path_factory.mktemp("fixture") / "fx")
    register_beir_folder("fixture-collection", folder)
    return "fixture-collection/train"


def make_dm(dataset: str, **kwargs) -> RerankDataModule:
    dm = RerankDataModule(train_dataset=dataset, group_size=4, batch_size=3, seed=7, **kwargs)
    dm.use_backbone(stub_backbone())
    dm.setup("fit")
    return dm


def loader(dm: RerankDataModule, rank: int, world: int, workers: int, epoch: int = 0) -> ResumableLoader:
    return ResumableLoader(
        dm._train, epoch_fn=lambda: epoch, shard_fn=lambda: (rank, world), num_workers=workers
    )


def test_two_ranks_two_workers_cover_every_query_exactly_once(collection):
    dm = make_dm(collection)
    trainable = {q.query_id for q in dm._train.index}
    assert len(trainable) == 24
    seen = Counter()
    for rank in range(2):
        for batch in loader(dm, rank, 2, workers=2):
            seen.update(batch["query_ids"])
    assert set(seen) == trainable
    assert all(n == 1 for n in seen.values())


def test_epochs_reshuffle_and_runs_are_deterministic(collection):
    dm = make_dm(collection)
    order = lambda epoch: [q for b in loader(dm, 0, 1, 0, epoch) for q in b["query_ids"]]  # noqa: E731
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_unseen_batches(collection, workers):
    dm = make_dm(collection)
    full = list(loader(dm, 0, 1, workers))
    first = loader(dm, 0, 1, workers)
    it = iter(first)
    consumed = [next(it) for _ in range(3)]
    state = first.state_dict()
    del it
    assert state == {"epoch": 0, "batches": 3}
    fresh = make_dm(collection)  # a new process would build a new DataModule
    resumed = loader(fresh, 0, 1, workers)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(consumed) + len(rest) == len(full)
    for got, want in zip(consumed + rest, full, strict=True):
        assert got["query_ids"] == want["query_ids"]
        assert got["input_ids"].equal(want["input_ids"])


def test_negatives_are_never_judged_positives_and_groups_have_g_docs(collection):
    dm = make_dm(collection)
    import ir_datasets

    qrels = ir_datasets.load(collection).qrels_dict()
    stream = dm._train
    for position, query in enumerate(stream.index):
        assert not set(query.negatives) & {d for d, r in qrels[query.query_id].items() if r >= 1}
        batch = stream.make_batch([position])
        assert batch["input_ids"].shape[0] == 4 and batch["labels"].shape == (1, 4)


def test_skipped_entries_are_counted():
    qrels = {"q1": {"d1": 1}, "q2": {"d9": 0}, "q3": {"gone": 1}, "q4": {"d1": 1}}
    run = [("q1", "d1"), ("q1", "d2"), ("q1", "missing"), ("q2", "d2"), ("q4", "d1"), ("qx", "d2")]
    queries = {"q1": "a", "q2": "b", "q3": "c", "q4": "d"}
    index, report = build_training_index(qrels, run, queries, lambda ids: set(ids) & {"d1", "d2", "d9"})
    assert [q.query_id for q in index] == ["q1"]
    assert index[0].negatives == ("d2",)
    assert report.counts == {
        "queries without positives": 2,  # q2 (only a 0-judged doc) and q3 (its positive is missing)
        "positives missing from the corpus": 1,
        "run entries naming missing documents": 1,
        "queries without negatives in the run": 1,  # q4: its only candidate is its positive
        "run/qrels entries for unknown queries": 1,
    }


def test_batches_carry_token_counts(collection):
    dm = make_dm(collection, pad_to_multiple_of=8)
    batch = next(iter(loader(dm, 0, 1, 0)))
    assert batch["padded_tokens"] == batch["input_ids"].numel()
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["real_tokens"] == int(batch["attention_mask"].sum()) < batch["padded_tokens"]


def test_group_size_below_two_is_rejected():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        RerankDataModule(group_size=1)


def test_unknown_dataset_id_suggests_close_ids():
    from lightning_rank.datamodules import load_dataset

    with pytest.raises(KeyError, match="Did you mean: msmarco-passage/dev/small"):
        load_dataset("msmarco-pasage/dev/small")


def test_dataset_that_needs_a_download_fails_fast_offline(tmp_path, monkeypatch):
    """beir/scifact is not on this machine; with no network the download fails and we say what to do."""
    import time

    import requests

    from lightning_rank.errors import DatasetDownloadError

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve host (no network)")

    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path))
    monkeypatch.setattr(requests, "get", offline)  # as here and in CI, even on a networked machine
    dm = RerankDataModule(train_dataset="beir/scifact/train")
    dm.use_backbone(stub_backbone())
    start = time.perf_counter()
    with pytest.raises(DatasetDownloadError) as err:
        dm.setup("fit")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "'beir/scifact/train'" in message and "Download the dataset first" in message
    assert str(tmp_path) in message


def test_length_buckets_cut_padding_and_keep_row_order(collection):
    plain = make_dm(collection)
    bucketed = make_dm(collection, length_buckets=3)
    a = next(iter(loader(plain, 0, 1, 0)))
    b = next(iter(loader(bucketed, 0, 1, 0)))
    assert a["query_ids"] == b["query_ids"] and a["real_tokens"] == b["real_tokens"]
    assert b["padded_tokens"] <= a["padded_tokens"]
    rows = sorted(int(r) for bucket in b["buckets"] for r in bucket["rows"])
    assert rows == list(range(a["input_ids"].shape[0]))
    for bucket in b["buckets"]:  # each bucket holds exactly the rows' tokens of the unbucketed batch
        for row, ids, mask in zip(bucket["rows"], bucket["input_ids"], bucket["attention_mask"], strict=True):
            n = int(mask.sum())
            assert ids[:n].equal(a["input_ids"][row, :n])


@pytest.fixture(scope="module")
def pairs_collection(tmp_path_factory) -> str:
    folder = write_collection(tmp_path_factory.mktemp("pairs") / "px")
    (folder / "docpairs").mkdir()
    # q0's pairs include d1 as a "negative", but d1 is judged relevant for q0 in qrels: it must not be used.
    rows = [f"q{q}\td{q}\td{(q + 7 + k) % 60}" for q in range(24) for k in range(5)] + ["q0\td0\td1"]
    (folder / "docpairs" / "train.tsv").write_text("\n".join(rows) + "\n")
    register_beir_folder("pairs-collection", folder)
    return "pairs-collection/train"


def test_docpairs_give_groups_and_never_a_judged_positive_as_negative(pairs_collection):
    dm = make_dm(pairs_collection, train_source="docpairs")
    by_query = {q.query_id: q for q in dm._train.index}
    assert len(by_query) == 24
    assert "d1" not in by_query["q0"].negatives and "d1" in by_query["q0"].positives
    assert by_query["q3"].negatives == tuple(f"d{(3 + 7 + k) % 60}" for k in range(5))
    batch = next(iter(loader(dm, 0, 1, 0)))
    assert batch["input_ids"].shape[0] == 3 * 4


def test_teacher_scores_travel_with_their_documents(collection, tmp_path):
    lines = [
        f"q{q} Q0 d{(q + k) % 60} {k + 1} {100 - q - k / 10} teacher" for q in range(24) for k in range(12)
    ]
    teacher = tmp_path / "teacher.trec"
    teacher.write_text("\n".join(lines) + "\n")
    dm = make_dm(collection, teacher_run=str(teacher))
    stream = dm._train
    batch = stream.make_batch([0, 1])
    assert batch["teacher_scores"].shape == (2, 4)
    scores = {(q, d): float(s) for q, _, d, _, s, _ in (line.split() for line in lines)}
    import random

    for row, position in enumerate([0, 1]):  # re-derive the sampled group to check alignment
        query = stream.index[position]
        rng = random.Random(hash((stream.seed, stream.epoch, position)))
        from lightning_rank.datamodules.groups import sample_group

        group, _ = sample_group(query, 4, rng)
        expected = [scores[(query.query_id, d)] for d in group]
        assert batch["teacher_scores"][row].tolist() == pytest.approx(expected)


def test_a_truncated_first_stage_teacher_fills_its_missing_positives_with_the_lowest_score(
    collection, tmp_path
):
    """The train run as its own teacher, cut off before the positives: ``skip`` loses every query (no scored
    positive), ``lowest`` keeps them all, the positive scored as the run's last entry."""
    lines = [f"q{q} Q0 d{(q + k) % 60} {k} {30 - k} bm25" for q in range(24) for k in range(2, 12)]
    teacher = tmp_path / "first-stage.trec"
    teacher.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="every query was skipped"):
        make_dm(collection, teacher_run=str(teacher))
    dm = make_dm(collection, teacher_run=str(teacher), teacher_missing="lowest")
    assert len(dm._train.index) == 24
    batch = dm._train.make_batch([0, 1, 2])
    positive, negatives = batch["teacher_scores"][:, 0], batch["teacher_scores"][:, 1:]
    assert positive.tolist() == [30 - 11] * 3 and (negatives >= 30 - 11).all()


def test_run_top_k_is_bounded_and_breaks_ties_like_trec_eval():
    from lightning_rank.datamodules.first_stage_runs import ranked as _ranked

    scored = [("a", 1.0), ("b", 3.0), ("c", 3.0), ("d", 0.5), ("e", 2.0)]
    rows = [SimpleNamespace(query_id="q1", doc_id=d, score=s) for d, s in scored]
    rows.append(SimpleNamespace(query_id="q0", doc_id="z", score=1.0))
    assert _ranked(iter(rows), 3) == [("q1", "c"), ("q1", "b"), ("q1", "e"), ("q0", "z")]


def test_tsv_and_trec_files_register_and_train_from_a_read_only_folder(tmp_path):
    import os
    import stat

    src = tmp_path / "files"
    src.mkdir()
    (src / "docs.tsv").write_text("".join(f"p{d}\tbaba kavo{d % 3} passage {d}\n" for d in range(30)))
    (src / "queries.tsv").write_text("".join(f"{q}\tkavo question {q}\n" for q in range(10)))
    (src / "qrels.txt").write_text("".join(f"{q} 0 p{q} 1\n" for q in range(10)))
    (src / "run.trec").write_text(
        "".join(f"{q} Q0 p{(q + k) % 30} {k + 1} {9 - k} bm25\n" for q in range(10) for k in range(8))
    )
    for f in src.iterdir():
        f.chmod(stat.S_IREAD)
    src.chmod(stat.S_IREAD | stat.S_IEXEC)
    try:
        files = {
            "docs": str(src / "docs.tsv"),
            "queries": str(src / "queries.tsv"),
            "qrels": {"train": str(src / "qrels.txt")},
            "runs": {"train": str(src / "run.trec")},
        }
        dm = RerankDataModule(
            train_dataset="tsv-files/train",
            local_collections={"tsv-files": files},
            group_size=4,
            batch_size=2,
        )
        dm.use_backbone(stub_backbone())
        dm.setup("fit")
        assert len(dm._train.index) == 10
        batch = next(iter(loader(dm, 0, 1, 0)))
        assert batch["input_ids"].shape[0] == 8
        assert sorted(os.listdir(src)) == [
            "docs.tsv",
            "qrels.txt",
            "queries.tsv",
            "run.trec",
        ]  # nothing written
    finally:
        src.chmod(stat.S_IRWXU)


def test_skip_counts_are_reported_once_where_users_see_them(collection, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        make_dm(collection)
    reports = [r.getMessage() for r in caplog.records if "training queries; skipped" in r.getMessage()]
    assert reports == ["fixture-collection/train: 24 training queries; skipped nothing"]
