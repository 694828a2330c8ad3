"""Metrics equal to trec_eval (-c by default): hand-computed values, tie rule, DDP-style gathering, TREC run
I/O."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_rank import runs
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import ConfigError
from lightning_rank.metrics import RankingMetrics, evaluate, evaluate_run
from lightning_rank.runs import write_trec_run

# q1: graded judgements, d4 relevant but not retrieved, d9/d5 retrieved but unjudged
# q2: judged, no relevant document (counts, with value 0)
# q3: judged, nothing scored (counts 0, as trec_eval -c; left out with judged_queries="ranked")
# q4: scored, not judged (ignored)
QRELS: dict[str, dict[str, int]] = {
    "q1": {"d1": 2, "d2": 0, "d3": 1, "d4": 1},
    "q2": {"d1": 0, "d2": 0},
    "q3": {"d7": 1},
}
# q1 has a score tie between d1 (relevant) and d2 (not relevant)
RUN: dict[str, dict[str, float]] = {
    "q1": {"d9": 2.0, "d1": 1.0, "d2": 1.0, "d3": 0.5, "d5": 0.2},
    "q2": {"d1": 1.0, "d3": 0.5},
    "q4": {"d1": 1.0},
}
# trec_eval's ranking of q1 (score desc, ties by docid desc): d9, d2, d1, d3, d5 -> grades 0, 0, 2, 1, 0

MEASURES = ["nDCG@10", "nDCG@3", "RR@10", "MRR@10", "RR@2", "P@5", "P@2", "P(rel=2)@5", "R@3", "R@5", "MAP"]


def log2(x: float) -> float:
    return math.log(x, 2)


def expected_values(judged_queries: str = "all") -> dict[str, float]:
    """trec_eval's values, by hand. ``all`` (trec_eval -c): averages over q1, q2 and q3 (unscored: 0);
    ``ranked`` (trec_eval): over q1 and q2. q4 (unjudged) never counts."""
    ideal_q1 = 2 / log2(2) + 1 / log2(3) + 1 / log2(4)  # judged grades 2, 1, 1 (d4 counts though unretrieved)
    ndcg10_q1 = (2 / log2(4) + 1 / log2(5)) / ideal_q1  # d1 at rank 3, d3 at rank 4
    ndcg3_q1 = (2 / log2(4)) / ideal_q1
    num_rel_q1 = 3  # d1, d3, d4
    ap_q1 = (1 / 3 + 2 / 4) / num_rel_q1  # relevant at ranks 3 and 4
    per_q1 = {
        "nDCG@10": ndcg10_q1,
        "nDCG@3": ndcg3_q1,
        "RR@10": 1 / 3,
        "MRR@10": 1 / 3,
        "RR@2": 0.0,
        "P@5": 2 / 5,
        "P@2": 0.0,
        "P(rel=2)@5": 1 / 5,
        "R@3": 1 / 3,
        "R@5": 2 / 3,
        "MAP": ap_q1,
    }
    queries = 3 if judged_queries == "all" else 2
    return {name: (value + 0.0) / queries for name, value in per_q1.items()}  # q2 (and q3) score 0


def test_evaluate_run_matches_trec_eval_by_hand() -> None:
    got = evaluate_run(RUN, QRELS, MEASURES)
    assert list(got) == MEASURES  # keyed as written, in order
    assert got == pytest.approx(expected_values("all"), rel=1e-9)
    assert evaluate_run(RUN, QRELS, MEASURES, "ranked") == pytest.approx(expected_values("ranked"), rel=1e-9)


def test_a_judged_query_without_candidates_scores_0_as_trec_eval_c_and_is_counted() -> None:
    """q3 is judged and the run has nothing for it: -c averages over q1, q2, q3; the counts say so."""
    got = evaluate(RUN, QRELS, ["nDCG@10", "P@5", "NumQ", "NumRel"])
    ideal_q1 = 2 / log2(2) + 1 / log2(3) + 1 / log2(4)
    assert got.values["nDCG@10"] == pytest.approx((2 / log2(4) + 1 / log2(5)) / ideal_q1 / 3, rel=1e-9)
    assert got.per_query["P@5"] == pytest.approx({"q1": 2 / 5, "q2": 0.0, "q3": 0.0})
    # trec_eval -c: num_q counts q3, num_rel its relevant document (q1: 3, q2: 0, q3: 1)
    assert got.values["NumQ"] == 3 and got.values["NumRel"] == 4
    assert (got.queries, got.judged, got.unranked) == (3, 3, 1)
    assert got.summary() == "over 3 judged queries (1 without candidates, scored 0; trec_eval -c)"
    old = evaluate(RUN, QRELS, ["P@5", "NumQ", "NumRel"], judged_queries="ranked")
    assert old.values == pytest.approx({"P@5": (2 / 5) / 2, "NumQ": 2, "NumRel": 3})
    assert set(old.per_query["P@5"]) == {"q1", "q2"} and old.queries == 2
    assert old.summary().startswith("over 2 ranked queries (1 judged queries without candidates left out")


def test_bad_judged_queries_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"judged_queries must be 'all'.*'ranked'.*got 'some'"):
        evaluate(RUN, QRELS, ["P@5"], judged_queries="some")
    with pytest.raises(ConfigError, match="judged_queries must be"):
        RankingMetrics(["P@5"], QRELS, QUERY_IDS, DOC_IDS, judged_queries="every")


def test_only_judged_queries_are_averaged() -> None:
    # a run query without judgements (q4) stays excluded in both modes, as trec_eval (with or without -c)
    for mode in ("all", "ranked"):
        without_q4 = {q: docs for q, docs in RUN.items() if q != "q4"}
        assert evaluate_run(RUN, QRELS, MEASURES, mode) == evaluate_run(without_q4, QRELS, MEASURES, mode)
        assert "q4" not in evaluate(RUN, QRELS, ["P@5"], mode).per_query["P@5"]
    # scoring the unscored q3 changes the ranked average (it now counts, with value 0), not the -c one
    run = {**RUN, "q3": {"d1": 1.0}}
    assert evaluate_run(run, QRELS, ["P@5"], "ranked")["P@5"] == pytest.approx((2 / 5) / 3)
    assert evaluate_run(run, QRELS, ["P@5"])["P@5"] == evaluate_run(RUN, QRELS, ["P@5"])["P@5"]
    # a query judged with an empty dict cannot exist for trec_eval; it is not counted either
    assert evaluate_run(RUN, {**QRELS, "q4": {}}, ["P@5"], "ranked")["P@5"] == pytest.approx(0.2)
    assert evaluate(RUN, {**QRELS, "q5": {}}, ["P@5"]).judged == 3
    # nothing in common: 0, with a warning
    with pytest.warns(UserWarning, match="none of the run's 1 queries has relevance judgements"):
        assert evaluate_run({"qx": {"d1": 1.0}}, QRELS, ["nDCG@10"]) == {"nDCG@10": 0.0}


def test_tie_rule_docid_descending_matters() -> None:
    qrels = {"q": {"a": 1}}
    # "a" (relevant) ties with "b": trec_eval puts "b" first (docid descending) -> RR 1/2
    assert evaluate_run({"q": {"a": 1.0, "b": 1.0}}, qrels, ["RR@10"])["RR@10"] == pytest.approx(0.5)
    # same scores, the other doc renamed so that it sorts below "a": "a" first -> RR 1
    assert evaluate_run({"q": {"a": 1.0, "0": 1.0}}, qrels, ["RR@10"])["RR@10"] == pytest.approx(1.0)
    # the truncation of RR@k follows the same rule: only "b" is in the top 1
    assert evaluate_run({"q": {"a": 1.0, "b": 1.0}}, qrels, ["RR@1"])["RR@1"] == 0.0
    # nDCG@1 too
    assert evaluate_run({"q": {"a": 1.0, "b": 1.0}}, qrels, ["nDCG@1"])["nDCG@1"] == 0.0
    assert evaluate_run({"q": {"a": 1.0, "0": 1.0}}, qrels, ["nDCG@1"])["nDCG@1"] == 1.0


def test_rr_judged_only_drops_unjudged_before_cutoff() -> None:
    # q1 judged docs in order: d2, d1, d3 -> d1 at (condensed) rank 2
    got = evaluate_run(RUN, QRELS, ["RR(judged_only=True)@2"], "ranked")
    assert got["RR(judged_only=True)@2"] == pytest.approx((1 / 2 + 0) / 2)


@pytest.mark.parametrize("bad", ["foo@10", "nDCG@x", "", "ERR@20"])
def test_unknown_measure_error(bad: str) -> None:
    with pytest.raises(ValueError, match=r"nDCG@10.*RR@10.*R@100"):
        RankingMetrics([bad], QRELS, ["q1"], ["d1"])
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        evaluate_run(RUN, QRELS, ["nDCG@10", bad])


# ---------------------------------------------------------------- RankingMetrics

QUERY_IDS = ["q1", "q2", "q3", "q4"]
DOC_IDS = ["d1", "d2", "d3", "d4", "d5", "d7", "d9"]


def as_float32(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The run as the metric stores it (float32 scores)."""
    return {q: {d: float(torch.tensor(s)) for d, s in docs.items()} for q, docs in run.items()}


def run_as_indices(run: dict[str, dict[str, float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [(QUERY_IDS.index(q), DOC_IDS.index(d), s) for q, docs in run.items() for d, s in docs.items()]
    qi, di, sc = zip(*rows, strict=True)
    return torch.tensor(qi), torch.tensor(di), torch.tensor(sc)


def new_metric() -> RankingMetrics:
    return RankingMetrics(MEASURES, QRELS, QUERY_IDS, DOC_IDS)


def test_metric_equals_trec_eval_values() -> None:
    metric = new_metric()
    qi, di, sc = run_as_indices(RUN)
    metric.update(qi[:4], di[:4], sc[:4])
    metric.update(qi[4:], di[4:], sc[4:])
    got = metric.compute()
    assert list(got) == MEASURES
    assert all(isinstance(v, float) for v in got.values())
    assert got == pytest.approx(expected_values(), rel=1e-6)
    assert metric.run() == as_float32(RUN)
    metric.reset()
    assert metric.run() == {}


def test_metric_accepts_groups_and_bf16_scores() -> None:
    metric = RankingMetrics(["P@5"], QRELS, QUERY_IDS, DOC_IDS)
    # a [Q, G] batch: one group per query
    qi = torch.tensor([[0, 0], [1, 1]])
    di = torch.tensor([[0, 1], [0, 2]])
    metric.update(qi, di, torch.tensor([[1.0, 0.5], [0.25, 2.0]], dtype=torch.bfloat16))
    assert metric.run() == {"q1": {"d1": 1.0, "d2": 0.5}, "q2": {"d1": 0.25, "d3": 2.0}}
    assert metric.compute()["P@5"] == pytest.approx((1 / 5) / 3)  # q3 is judged: it counts, 0


def test_ddp_halves_merged_with_duplicates() -> None:
    qi, di, sc = run_as_indices(RUN)
    # rank 0 gets the first 5 pairs, rank 1 the rest plus 2 repeated pairs (DistributedSampler padding)
    rank0, rank1 = new_metric(), new_metric()
    rank0.update(qi[:5], di[:5], sc[:5])
    rank1.update(torch.cat([qi[5:], qi[:2]]), torch.cat([di[5:], di[:2]]), torch.cat([sc[5:], sc[:2]]))
    rank0.merge_state(rank1)
    assert rank0.run() == as_float32(RUN)
    assert rank0.compute() == pytest.approx(expected_values(), rel=1e-6)
    # updating one metric with both halves, duplicates included, is the same
    both = new_metric()
    both.update(qi, di, sc)
    both.update(qi[:3], di[:3], sc[:3])
    assert both.compute() == pytest.approx(expected_values(), rel=1e-6)


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        qi, di, sc = run_as_indices(RUN)
        metric = new_metric()
        # interleaved, uneven shards (each rank alone gets q1 wrong); rank 0 repeats a pair of rank 1
        shard = torch.tensor([0, 2, 4, 6, 3]) if rank == 0 else torch.tensor([1, 3, 5, 7])
        metric.update(qi[shard], di[shard], sc[shard])
        values = metric.compute()  # syncs the states across ranks (sync_on_compute)
        torch.save({"values": values}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_real_gather_across_two_gloo_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules (spawn would re-import torch, ~10 s on 2 cores)
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["values"] == pytest.approx(expected_values(), rel=1e-6)


def test_metric_input_errors() -> None:
    metric = new_metric()
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="integer tensors"):
        metric.update(torch.tensor([0.0]), torch.tensor([0]), torch.tensor([1.0]))
    metric.update(torch.tensor([0]), torch.tensor([len(DOC_IDS)]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="doc_index out of range"):
        metric.compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # torchmetrics: compute before update
def test_metric_without_updates_returns_zeros() -> None:
    metric = new_metric()
    with pytest.warns(UserWarning, match="the run is empty"):
        assert metric.compute() == dict.fromkeys(MEASURES, 0.0)


# ---------------------------------------------------------------- TREC run files


def test_write_read_round_trip(tmp_path: Path) -> None:
    run = {**RUN, "q5": {"d1": 0.1 + 0.2, "d2": -1e-12, "d3": float(torch.tensor(0.3))}}
    path = tmp_path / "runs" / "dev.run"
    write_trec_run(run, path, tag="mamba")
    assert read_trec_run(path) == run  # exact floats
    lines = path.read_text().splitlines()
    assert lines[:5] == [
        "q1 Q0 d9 1 2.0 mamba",
        "q1 Q0 d2 2 1.0 mamba",  # tie with d1: docid descending, as trec_eval ranks it
        "q1 Q0 d1 3 1.0 mamba",
        "q1 Q0 d3 4 0.5 mamba",
        "q1 Q0 d5 5 0.2 mamba",
    ]
    assert evaluate_run(read_trec_run(path), QRELS, MEASURES) == evaluate_run(run, QRELS, MEASURES)
    assert [p.name for p in path.parent.iterdir()] == ["dev.run"]  # no temp file left behind


def test_read_ignores_rank_column_and_checks_format(tmp_path: Path) -> None:
    path = tmp_path / "x.run"
    path.write_text("q1 Q0 d1 7 1.5 t\n\nq1 Q0 d2 1 0.5 t\nq2 Q0 d1 1 3 t\n")
    assert read_trec_run(path) == {"q1": {"d1": 1.5, "d2": 0.5}, "q2": {"d1": 3.0}}
    path.write_text("q1 Q0 d1 1\n")
    with pytest.raises(ValueError, match=r"x.run:1: expected"):
        read_trec_run(path)
    path.write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d1 2 0.5 t\n")
    with pytest.raises(ValueError, match=r"x.run:2: document 'd1' appears twice"):
        read_trec_run(path)
    path.write_text("q1 Q0 d1 1 high t\n")
    with pytest.raises(ValueError, match="not a number"):
        read_trec_run(path)


def test_failed_write_leaves_existing_file_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "test.run"
    path.write_text("q0 Q0 d0 1 1.0 previous\n")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_trec_run(RUN, path)
    assert path.read_text() == "q0 Q0 d0 1 1.0 previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["test.run"]  # temp file removed
    monkeypatch.undo()
    # bad input fails before anything is written
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run({"q 1": {"d1": 1.0}}, path)
    with pytest.raises(ValueError, match="NaN"):
        write_trec_run({"q1": {"d1": float("nan")}}, path)
    assert path.read_text() == "q0 Q0 d0 1 1.0 previous\n"
    write_trec_run(RUN, path)
    assert read_trec_run(path) == RUN
