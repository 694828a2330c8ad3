"""``lightning-rank compare``: per-query values (trec_eval -c), the paired t-test equal to scipy's, the
paired-bootstrap interval equal to an independent numpy one within Monte-Carlo noise, Holm's correction,
the per-query TSV, and bad input refused with ``error:`` and exit 2."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tsv_collection
from scipy import stats

from lightning_rank.cli import main
from lightning_rank.commands.compare import compare, holm, paired_bootstrap
from lightning_rank.errors import DataError
from lightning_rank.metrics import evaluate

QUERIES = 40
_NAMES = (f"compare{i}" for i in itertools.count())  # ids register once per process: one name per test


def write_runs(folder: Path, systems: int = 2) -> tuple[Path, list[Path]]:
    """A qrels file (query q judges d<q>-0 with grade 2 and d<q>-1 with grade 1) and ``systems`` runs of 10
    random candidates per query, each system a little better than the one before (its positives score
    higher); the first run lacks query 0 (judged, no candidates)."""
    folder.mkdir(parents=True, exist_ok=True)
    qrels = folder / "qrels.txt"
    qrels.write_text("".join(f"q{q} 0 d{q}-0 2\nq{q} 0 d{q}-1 1\n" for q in range(QUERIES)))
    rng = np.random.default_rng(7)
    runs = []
    for system in range(systems):
        lines = []
        for q in range(1 if system == 0 else 0, QUERIES):
            scores = rng.normal(size=10) + np.array([0.6 * system, 0.3 * system] + [0.0] * 8)
            lines += [f"q{q} Q0 d{q}-{d} {d + 1} {s:.6f} sys{system}" for d, s in enumerate(scores)]
        runs.append(folder / f"sys{system}.trec")
        runs[-1].write_text("\n".join(lines) + "\n")
    return qrels, runs


def read_tsv(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(system, measure): {query: value}}`` of a per-query file."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            values.setdefault((row["system"], row["measure"]), {})[row["query"]] = float(row["value"])
    return values


def test_t_test_and_per_query_file_match_scipy_and_trec_eval_c(tmp_path, capsys) -> None:
    qrels, runs = write_runs(tmp_path)
    output = tmp_path / "per_query.tsv"
    argv = ["compare", "--runs", json.dumps([str(r) for r in runs]), "--qrels", str(qrels)]
    assert main([*argv, "--measures", '["nDCG@10", "RR@10"]', "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "sys0.trec: over 40 judged queries (1 without candidates, scored 0; trec_eval -c)" in out, out
    per_query = read_tsv(output)
    assert output.read_text().splitlines()[0] == "system\tquery\tmeasure\tvalue"
    assert per_query[("sys0.trec", "nDCG@10")]["q0"] == 0.0 and len(per_query[("sys0.trec", "nDCG@10")]) == 40
    rows = compare([str(r) for r in runs], str(qrels), ["nDCG@10", "RR@10"], samples=2000)
    for row in rows:
        base, other = per_query[("sys0.trec", row.measure)], per_query[("sys1.trec", row.measure)]
        queries = sorted(base)
        a, b = [other[q] for q in queries], [base[q] for q in queries]
        assert row.p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        assert row.mean == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
        assert row.p_holm == row.p and row.queries == 40  # one comparison: Holm changes nothing
        # the per-query file holds what evaluate gives (every judged query, q0 scoring 0)
        assert base == evaluate(_read(runs[0]), _qrels(qrels), [row.measure]).per_query[row.measure]
    assert rows[0].p < 0.05  # sys1's positives score higher: a real difference is found


def _read(path: Path):
    from lightning_rank.datamodules.files import read_trec_run

    return read_trec_run(path)


def _qrels(path: Path):
    from lightning_rank.datamodules.files import read_qrels

    return read_qrels(path)


def test_bootstrap_interval_equals_an_independent_resampling_within_its_noise(tmp_path) -> None:
    qrels, runs = write_runs(tmp_path)
    (row,) = compare([str(r) for r in runs], str(qrels), ["nDCG@10"], samples=10000, seed=3)
    again = compare([str(r) for r in runs], str(qrels), ["nDCG@10"], samples=10000, seed=3)[0]
    assert (row.low, row.high) == (again.low, again.high)  # seeded: the same interval every time
    evaluations = [evaluate(_read(r), _qrels(qrels), ["nDCG@10"]).per_query["nDCG@10"] for r in runs]
    queries = sorted(evaluations[0])
    diff = np.array([evaluations[1][q] - evaluations[0][q] for q in queries])
    rng = np.random.default_rng(12345)  # another generator, another way of drawing
    means = np.array([rng.choice(diff, size=diff.size, replace=True).mean() for _ in range(10000)])
    low, high = np.quantile(means, [0.025, 0.975])
    # Monte-Carlo noise of a 2.5% quantile of 10000 means: well under 0.1 standard errors of the mean
    noise = 0.1 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(row.low - low) < noise and abs(row.high - high) < noise, (row, low, high, noise)
    assert row.low < row.mean < row.high
    other_seed = paired_bootstrap(diff, 10000, seed=4)
    assert other_seed != (row.low, row.high) and abs(other_seed[0] - row.low) < noise


def test_holm_on_known_p_values() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_three_systems_are_holm_corrected_per_measure(tmp_path) -> None:
    qrels, runs = write_runs(tmp_path, systems=3)
    rows = compare([str(r) for r in runs], str(qrels), ["nDCG@10", "RR@10"], samples=500)
    assert [(r.system, r.measure) for r in rows] == [
        ("sys1.trec", "nDCG@10"), ("sys2.trec", "nDCG@10"), ("sys1.trec", "RR@10"), ("sys2.trec", "RR@10"),
    ]  # fmt: skip
    for measure in ("nDCG@10", "RR@10"):
        family = [r for r in rows if r.measure == measure]
        assert [r.p_holm for r in family] == pytest.approx(holm([r.p for r in family]))
        assert all(r.p_holm >= r.p for r in family)


def test_qrels_may_be_a_registered_dataset_and_ranked_keeps_the_common_queries(tmp_path) -> None:
    qrels, runs = write_runs(tmp_path)
    name = next(_NAMES)
    entry = tsv_collection(tmp_path / "c", [line for line in qrels.read_text().splitlines()])
    by_file = compare([str(r) for r in runs], str(qrels), ["nDCG@10"], samples=200)
    by_id = compare([str(r) for r in runs], f"{name}/dev", ["nDCG@10"], samples=200,
                    local_collections={name: entry})  # fmt: skip
    assert by_id == by_file
    (ranked,) = compare([str(r) for r in runs], str(qrels), ["nDCG@10"], "ranked", samples=200)
    assert ranked.queries == 39  # q0 is ranked by sys1 only: the paired statistics leave it out
    assert ranked.mean != by_file[0].mean


def error_of(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    return err


def test_bad_input_is_an_error_with_exit_2(tmp_path, capsys) -> None:
    qrels, runs = write_runs(tmp_path)
    both = json.dumps([str(r) for r in runs])
    err = error_of(capsys, "compare", "--runs", json.dumps([str(runs[0])]), "--qrels", str(qrels))
    assert "two or more --runs files" in err
    other = tmp_path / "other.trec"
    other.write_text("x1 Q0 d1 1 2.0 t\nx2 Q0 d2 1 1.0 t\n")
    err = error_of(capsys, "compare", "--runs", json.dumps([str(runs[0]), str(other)]), "--qrels", str(qrels))
    assert f"{other}: none of its 2 queries is judged" in err and "another dataset" in err
    err = error_of(
        capsys, "compare", "--runs", json.dumps([str(runs[0]), "gone.trec"]), "--qrels", str(qrels)
    )
    assert "run file gone.trec does not exist" in err
    err = error_of(capsys, "compare", "--runs", both, "--qrels", str(tmp_path / "nope.txt"))
    assert "no such qrels file" in err
    err = error_of(capsys, "compare", "--runs", both, "--qrels", str(qrels), "--samples", "0")
    assert "--samples must be >= 1" in err
    err = error_of(capsys, "compare", "--runs", both, "--qrels", str(qrels), "--output", str(runs[0]))
    assert "is not a per-query results file" in err and runs[0].read_text().startswith("q1 Q0")
    twice = json.dumps([str(runs[0]), str(runs[0])])
    assert "names a file twice" in error_of(capsys, "compare", "--runs", twice, "--qrels", str(qrels))
    doubled = tmp_path / "doubled.txt"
    doubled.write_text("q1 0 d1-0 1\nq1 0 d1-0 2\n")
    err = error_of(capsys, "compare", "--runs", both, "--qrels", str(doubled))
    assert f"{doubled}:2: document 'd1-0' is judged twice for query 'q1'" in err


def test_per_query_files_compare_as_the_runs_they_came_from(tmp_path) -> None:
    """compare --output's file of two runs, split into one file per system, compares to the same rows."""
    qrels, runs = write_runs(tmp_path)
    both = tmp_path / "both.tsv"
    from_runs = compare(
        [str(r) for r in runs], str(qrels), ["nDCG@10", "RR@10"], samples=2000, output=str(both)
    )
    header, *lines = both.read_text().splitlines()
    files = []
    for system in ("sys0.trec", "sys1.trec"):
        files.append(tmp_path / f"{system}.tsv")
        files[-1].write_text("\n".join([header, *(x for x in lines if x.startswith(system + "\t"))]) + "\n")
    from_files = compare(per_query=[str(f) for f in files], samples=2000)
    assert [(r.measure, r.mean, r.low, r.high, r.p, r.queries) for r in from_files] == [
        (r.measure, r.mean, r.low, r.high, r.p, r.queries) for r in from_runs
    ]
    # a file of several sets (as test --per_query_file with data.test_datasets writes) needs --eval_set
    with pytest.raises(DataError, match=r"holds several sets \(sys0.trec, sys1.trec\): choose one with"):
        compare(per_query=[str(both), str(files[1])])
    chosen = compare(per_query=[str(both), str(files[0])], eval_set="sys0.trec", measures=["nDCG@10"])
    assert chosen[0].mean == 0.0 and chosen[0].p == 1.0  # sys0 of both files: the same values
    with pytest.raises(DataError, match=r"has no set 'dl19'; it holds sys0\.trec, sys1\.trec"):
        compare(per_query=[str(both), str(files[1])], eval_set="dl19")


def test_bad_per_query_input_is_refused(tmp_path, capsys) -> None:
    qrels, runs = write_runs(tmp_path)
    good = tmp_path / "good.tsv"
    compare([str(r) for r in runs], str(qrels), ["nDCG@10"], samples=10, output=str(good))
    err = error_of(capsys, "compare", "--per_query", json.dumps([str(runs[0]), str(good)]), "--eval_set", "x")
    assert f"{runs[0]}: line 1 is" in err and "not the header" in err
    broken = tmp_path / "broken.tsv"
    broken.write_text("system\tquery\tmeasure\tvalue\nsys\tq1\tnDCG@10\n")
    err = error_of(capsys, "compare", "--per_query", json.dumps([str(broken), str(good)]))
    assert f"{broken}:2:" in err and "is not 'system<TAB>query<TAB>measure<TAB>value'" in err
    err = error_of(capsys, "compare", "--per_query", json.dumps([str(good)]))
    assert "two or more --per_query files" in err
    err = error_of(capsys, "compare", "--per_query", json.dumps([str(good), str(good)]), "--runs", "[a, b]")
    assert "one of the two" in err
    assert "--runs needs --qrels" in error_of(capsys, "compare", "--runs", json.dumps([str(r) for r in runs]))
