"""`lightning-rank fuse`: reranker and first-stage scores interpolated per query, the weight tuned on judged
queries; the command end to end on the demo collection and its bad input."""

from __future__ import annotations

import re

import pytest

from lightning_rank.cli import main
from lightning_rank.commands.fuse import interpolate, normalize, tune_weight
from lightning_rank.datamodules.collections import load_dataset
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.metrics import evaluate_run
from lightning_rank.runs import rank_documents, write_trec_run

# q1: the reranker is right and BM25 wrong; q2: BM25 is right and the reranker nearly so.
RERANKER = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"y": 3.0, "x": 2.9, "z": 0.0}}
BM25 = {"q1": {"b": 30.0, "c": 20.0, "a": 10.0}, "q2": {"x": 10.0, "y": 1.0, "z": 0.0}}
QRELS = {"q1": {"a": 1}, "q2": {"x": 1}}


def order(run: dict[str, dict[str, float]], qid: str) -> list[str]:
    return [doc for doc, _ in rank_documents(run[qid])]


def assert_same_run(got: dict[str, dict[str, float]], expected: dict[str, dict[str, float]]) -> None:
    assert got.keys() == expected.keys()
    for qid, docs in expected.items():
        assert got[qid] == pytest.approx(docs), qid


def test_normalize_puts_each_query_on_a_common_scale() -> None:
    z = normalize({"a": 1.0, "b": 3.0}, "zscore")
    assert z == {"a": -1.0, "b": 1.0}
    assert normalize({"a": 5.0, "b": 7.0, "c": 6.0}, "minmax") == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert normalize({"a": 2.0, "b": 2.0}, "zscore") == {"a": 0.0, "b": 0.0}  # flat: no division by 0
    with pytest.raises(ValueError, match="zscore"):
        normalize({"a": 1.0}, "rank")  # type: ignore[arg-type]


def test_the_weight_moves_from_the_first_stage_to_the_reranker() -> None:
    for qid in RERANKER:
        assert order(interpolate(RERANKER, BM25, 1.0), qid) == order(RERANKER, qid)
        assert order(interpolate(RERANKER, BM25, 0.0), qid) == order(BM25, qid)


def test_fusion_ignores_each_runs_scale() -> None:
    """Logits and BM25 scores live on unrelated scales: an affine change of one run's scores for one query
    changes nothing."""
    rescaled = {q: {d: 100 * s - 7 for d, s in docs.items()} for q, docs in BM25.items()}
    for how in ("zscore", "minmax"):
        assert_same_run(interpolate(RERANKER, rescaled, 0.6, how), interpolate(RERANKER, BM25, 0.6, how))


def test_documents_the_first_stage_did_not_score_rank_as_its_lowest() -> None:
    fused = interpolate({"q": {"a": 1.0, "new": 1.0}}, {"q": {"a": 2.0, "b": 1.0}}, 0.5)
    assert fused["q"]["new"] < fused["q"]["a"]
    assert interpolate({"q": {"a": 1.0, "b": 2.0}}, {}, 0.3)["q"] == pytest.approx({"a": -0.3, "b": 0.3})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(RERANKER, BM25, 1.5)


def test_tuning_finds_the_weight_that_gets_both_queries_right() -> None:
    best, values = tune_weight(RERANKER, BM25, QRELS, "nDCG@10")
    assert values[1.0] < 1.0 and values[0.0] < 1.0  # each run alone misranks one query
    assert 0.0 < best < 1.0 and values[best] == pytest.approx(1.0)
    assert order(interpolate(RERANKER, BM25, best), "q1")[0] == "a"
    assert order(interpolate(RERANKER, BM25, best), "q2")[0] == "x"


def test_ties_prefer_the_reranker() -> None:
    best, values = tune_weight(RERANKER, RERANKER, QRELS)
    assert len(set(values.values())) == 1 and best == 1.0


@pytest.fixture
def demo_runs(tmp_path):
    """BM25 on the demo dev queries, and a 'reranker' run that reverses BM25's order for half the queries."""
    bm25 = tmp_path / "bm25.trec"
    assert main(["bm25", "--dataset", "lightning-rank/demo/dev", "--depth", "20", "--output", str(bm25)]) == 0
    lexical = read_trec_run(bm25)
    reranked = {
        q: ({d: -s for d, s in docs.items()} if i % 2 else {d: s + 1 for d, s in docs.items()})
        for i, (q, docs) in enumerate(sorted(lexical.items()))
    }
    model = tmp_path / "reranker.trec"
    write_trec_run(reranked, model)
    return model, bm25


def test_fuse_command_tunes_on_qrels_then_applies_the_weight(demo_runs, tmp_path, capsys) -> None:
    model, bm25 = demo_runs
    tuned, fixed = tmp_path / "tuned.trec", tmp_path / "fixed.trec"
    common = ["fuse", "--run", str(model), "--first_stage", str(bm25)]
    capsys.readouterr()
    assert (
        main([*common, "--weight", "tune", "--qrels", "lightning-rank/demo/dev", "--output", str(tuned)]) == 0
    )
    printed = capsys.readouterr().out
    assert "nDCG@10 on lightning-rank/demo/dev by reranker weight:" in printed and "0.50=" in printed
    weight = float(printed.strip().splitlines()[-1].removeprefix("weight="))
    qrels = load_dataset("lightning-rank/demo/dev").qrels_dict()
    measure = {name: evaluate_run(read_trec_run(p), qrels, ["nDCG@10"])["nDCG@10"] for name, p in
               (("model", model), ("bm25", bm25), ("tuned", tuned))}  # fmt: skip
    assert measure["tuned"] >= max(measure["model"], measure["bm25"])
    # the printed weight, passed back, writes the same run (as for the test queries after tuning on dev)
    assert main([*common, "--weight", str(weight), "--output", str(fixed)]) == 0
    assert_same_run(read_trec_run(fixed), read_trec_run(tuned))
    # the same qrels as a file tune to the same run
    qrels_file = tmp_path / "dev-qrels.tsv"
    qrels_file.write_text("".join(f"{q}\t{d}\t{g}\n" for q, docs in qrels.items() for d, g in docs.items()))
    from_file = tmp_path / "from-file.trec"
    assert main([*common, "--weight", "tune", "--qrels", str(qrels_file), "--output", str(from_file)]) == 0
    assert_same_run(read_trec_run(from_file), read_trec_run(tuned))
    assert main([*common, "--weight", "1", "--output", str(fixed)]) == 0
    fused, original = read_trec_run(fixed), read_trec_run(model)
    assert all(order(fused, q) == order(original, q) for q in original)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weight", "tune"], "--weight tune needs --qrels"),
        (["--weight", "1.5"], r"must be in \[0, 1\], got 1.5"),
        (["--measure", "nDGC@10", "--weight", "tune", "--qrels", "lightning-rank/demo/dev"], "nDGC@10"),
        (["--qrels", "nope/dev"], "unknown ir_datasets id 'nope/dev'.* with `--local_collections`"),
    ],
)
def test_fuse_bad_input_is_one_error_line(demo_runs, tmp_path, capsys, args, message) -> None:
    model, bm25 = demo_runs
    output = tmp_path / "fused.trec"
    code = main(["fuse", "--run", str(model), "--first_stage", str(bm25), "--output", str(output), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not output.exists()


def test_fuse_refuses_runs_of_different_queries(demo_runs, tmp_path, capsys) -> None:
    model, _ = demo_runs
    other = tmp_path / "other.trec"
    write_trec_run({"unrelated": {"d": 1.0}}, other)
    code = main(["fuse", "--run", str(model), "--first_stage", str(other), "--output", str(tmp_path / "f")])
    assert code == 2 and "share no query id" in capsys.readouterr().err


def test_bm25_unknown_dataset_names_its_own_register_option(tmp_path, capsys) -> None:
    output = tmp_path / "bm25.trec"
    code = main(["bm25", "--dataset", "nope/test", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --dataset: unknown ir_datasets id 'nope/test'"), err
    assert "`--local_collections`" in err and "data.local_collections" not in err
    assert not output.exists()
