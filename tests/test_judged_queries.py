"""Every evaluation averages as ``trec_eval -c`` by default: a judged query without candidates scores 0 and is
counted, and the printed metrics say over how many queries; ``judged_queries: ranked`` restores the mean over
the ranked queries alone. Through validate/test, bm25 and fuse."""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import pytest
from helpers import TINY_BERT, tsv_collection

from lightning_rank.cli import main

# six judged queries (0-5), each with its one positive p<q>; query 5 has no candidate in the run
QRELS = [f"{q} 0 p{q} 1" for q in range(6)]
RUN_WITHOUT_5 = [f"{q} Q0 p{q} 1 9 bm25" for q in range(5)]
_NAMES = (f"judged{i}" for i in itertools.count())  # ids register once per process: one name per test


def local(tmp_path: Path, queries: list[str] | None = None) -> tuple[str, str]:
    """A fresh collection id and its ``--local_collections`` value; ``queries`` replace the query texts."""
    name = next(_NAMES)
    entry = tsv_collection(tmp_path / name, QRELS, RUN_WITHOUT_5)
    if queries is not None:
        Path(entry["queries"]).write_text("".join(f"{q}\t{t}\n" for q, t in enumerate(queries)))
    return name, json.dumps({name: entry})


@pytest.mark.parametrize(
    ("stage", "option", "expected", "line"),
    [
        ("validate", [], 5 / 6, "val metrics over 6 judged queries (1 without candidates, scored 0"),
        ("test", [], 5 / 6, "test metrics over 6 judged queries (1 without candidates, scored 0"),
        (
            "validate",
            ["--model.judged_queries", "ranked"],
            1.0,
            "val metrics over 5 ranked queries (1 judged",
        ),
    ],
)
def test_validate_and_test_count_a_judged_query_without_candidates(
    tmp_path, caplog, stage, option, expected, line
) -> None:
    """trec_eval -c by hand: queries 0-4 score 1 in every measure (their positive is their only candidate,
    whatever the model scores) and query 5 scores 0, so each measure is 5/6; ranked-only: 1."""
    name, collection = local(tmp_path)
    split = "val" if stage == "validate" else "test"
    metrics_file = tmp_path / "metrics.json"
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        status = main([
            stage, "--model.backbone", "bert", "--model.backbone_args", json.dumps(TINY_BERT), *option,
            f"--data.{split}_dataset", f"{name}/dev", "--data.local_collections", collection,
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--metrics_file", str(metrics_file),
        ])  # fmt: skip
    assert status == 0
    written = json.loads(metrics_file.read_text())
    assert written == pytest.approx({f"{split}/{m}": expected for m in ("nDCG@10", "RR@10", "R@100")})
    assert line in caplog.text, caplog.text


def printed_values(out: str, label: str = "") -> dict[str, float]:
    """``{measure: value}`` of the printed metrics line (``label:`` first where given)."""
    (row,) = [line for line in out.splitlines() if "nDCG@10=" in line and line.strip().startswith(label)]
    return {m: float(v) for m, v in re.findall(r"(\S+)=([0-9.]+)", row)}


def test_bm25_counts_a_query_that_matches_nothing(tmp_path, capsys) -> None:
    """Query 5 shares no term with the corpus: BM25 ranks nothing for it. -c: the other five's sum over 6;
    ranked: over 5."""
    name, collection = local(tmp_path, [f"passage {q}" for q in range(5)] + ["zzzq"])
    common = ["bm25", "--dataset", f"{name}/dev", "--local_collections", collection]
    assert main([*common, "--output", str(tmp_path / "all.trec")]) == 0
    out = capsys.readouterr().out
    assert "over 6 judged queries (1 without candidates, scored 0; trec_eval -c)" in out, out
    every = printed_values(out)
    assert main([*common, "--output", str(tmp_path / "ranked.trec"), "--judged_queries", "ranked"]) == 0
    out = capsys.readouterr().out
    assert "over 5 ranked queries (1 judged queries without candidates left out" in out, out
    ranked = printed_values(out)
    assert ranked["nDCG@10"] > 0
    for measure, value in ranked.items():
        assert every[measure] == pytest.approx(value * 5 / 6, abs=1e-4)  # printed to 4 decimals


def test_fuse_prints_the_query_count_of_each_system(tmp_path, capsys) -> None:
    name, collection = local(tmp_path)
    runs = {}
    for system, lines in (("first", RUN_WITHOUT_5), ("reranked", RUN_WITHOUT_5[:4])):  # the reranker lacks 4
        runs[system] = tmp_path / f"{system}.trec"
        runs[system].write_text("\n".join(lines) + "\n")
    status = main([
        "fuse", "--run", str(runs["reranked"]), "--first_stage", str(runs["first"]), "--qrels", f"{name}/dev",
        "--local_collections", collection, "--output", str(tmp_path / "fused.trec"),
    ])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    # evaluated over the fused queries (0-3): 4 of 6 judged queries ranked, each scoring 1
    for label in ("first stage", "reranker", "fused"):
        assert printed_values(out, label)["nDCG@10"] == pytest.approx(4 / 6, abs=1e-4)
    assert out.count("over 6 judged queries (2 without candidates, scored 0; trec_eval -c)") == 3, out


@pytest.mark.parametrize("command", ["bm25", "fuse"])
def test_an_unknown_judged_queries_value_is_an_error(tmp_path, capsys, command) -> None:
    name, collection = local(tmp_path)
    run = json.loads(collection)[name]["runs"]["dev"]
    inputs = ["--dataset", f"{name}/dev"] if command == "bm25" else ["--run", run, "--first_stage", run]
    with pytest.raises(SystemExit) as done:
        main([command, *inputs, "--output", str(tmp_path / "o.trec"), "--judged_queries", "some"])
    assert done.value.code == 2
    assert "judged_queries" in capsys.readouterr().err
