"""``lightning-rank compare``: is reranker A better than B? Paired per-query statistics of two or more runs.

Every run is evaluated per query by :func:`~lightning_rank.metrics.evaluate` (trec_eval, ``-c`` by
default). Each system after the first (the baseline) gets, per measure, the mean of its per-query
differences from the baseline with a 95% paired-bootstrap interval (queries resampled with replacement,
seeded), and a paired t-test p-value (``scipy.stats.ttest_rel``), Holm-corrected over the systems compared
with the baseline on that measure (Sakai, "Statistical Significance Testing in Information Retrieval", 2016).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from lightning_rank.datamodules.collections import load_judgements, register_local
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import (
    DataError,
    InputError,
    check_at_least,
)
from lightning_rank.metrics import (
    DEFAULT_MEASURES,
    Evaluation,
    JudgedQueries,
    check_judged_queries,
    evaluate,
    parse_measures,
)
from lightning_rank.runs import check_replaceable, read_per_query, write_per_query

_CHUNK = 1000  # bootstrap samples drawn at once: memory stays at _CHUNK x queries indices


def paired_bootstrap(differences: Sequence[float], samples: int, seed: int) -> tuple[float, float]:
    """The 95% percentile interval of the mean of ``differences`` over ``samples`` resamples of the queries
    (with replacement), drawn by ``numpy.random.default_rng(seed)``."""
    values = np.asarray(differences, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, _CHUNK):
        index = rng.integers(0, len(values), size=(min(_CHUNK, samples - start), len(values)))
        means.append(values[index].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def paired_t_p(system: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of ``system`` against ``baseline`` (``scipy.stats.ttest_rel``); 1.0
    where every per-query difference is 0 (scipy's t is undefined there: no evidence of a difference)."""
    if all(a == b for a, b in zip(system, baseline, strict=True)):
        return 1.0
    return float(stats.ttest_rel(system, baseline).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m is multiplied by
    ``m - k + 1``, kept at least as large as the one before it and at most 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Difference:
    """One system against the baseline on one measure, over ``queries`` paired queries."""

    system: str
    measure: str
    mean: float
    low: float
    high: float
    p: float
    p_holm: float
    queries: int


def system_names(runs: Sequence[str]) -> list[str]:
    """How the table and the per-query file name each run: its file name, or its path where two share one."""
    names = [os.path.basename(path) for path in runs]
    return names if len(set(names)) == len(names) else list(runs)


def _evaluations(
    runs: Sequence[str],
    judged: dict[str, dict[str, int]],
    qrels: str,
    measures: list[str],
    mode: JudgedQueries,
) -> dict[str, Evaluation]:
    """Each run's evaluation, keyed by :func:`system_names`; a run with no judged query is refused."""
    evaluations = {}
    for name, path in zip(system_names(runs), runs, strict=True):
        run = read_trec_run(path)
        if not any(q in judged for q in run):
            raise DataError(
                f"{path}: none of its {len(run)} queries is judged in --qrels {qrels} (e.g. query "
                f"{next(iter(run))!r}): is it a run of another dataset? Pass the qrels of the queries it "
                "ranks, or the run of these qrels"
            )
        evaluations[name] = evaluate(run, judged, measures, mode)
    return evaluations


def _check_inputs(runs: list[str] | None, qrels: str | None, per_query: list[str] | None) -> list[str]:
    """The files compared: ``runs`` (with ``qrels``) or ``per_query`` files, two or more, each once."""
    if (runs is None) == (per_query is None):
        raise InputError(
            "compare takes --runs (with --qrels) or --per_query files, one of the two: e.g. --runs "
            "'[bm25.trec, reranked.trec]' --qrels QRELS, or --per_query '[a.tsv, b.tsv]'"
        )
    option, files = ("--runs", runs) if runs is not None else ("--per_query", per_query)
    if len(files) < 2:
        raise InputError(
            f"compare needs two or more {option} files, the first the baseline; got {len(files)} "
            f"({', '.join(files)}). Pass {option} '[baseline, other]'"
        )
    if len(set(files)) < len(files):
        raise InputError(f"{option} names a file twice ({', '.join(files)}); name each file once")
    if runs is not None and qrels is None:
        raise InputError(
            "--runs needs --qrels: a qrels file or the ir_datasets id whose qrels judge the runs"
        )
    return list(files)


def per_query_evaluations(
    paths: Sequence[str], eval_set: str | None, measures: Sequence[str] | None
) -> tuple[list[str], dict[str, Evaluation]]:
    """The measures compared and each file's values (its ``eval_set``, or its one set) as evaluations."""
    chosen = {name: _one_set(path, eval_set) for name, path in zip(system_names(paths), paths, strict=True)}
    common = [m for m in next(iter(chosen.values())) if all(m in values for values in chosen.values())]
    names = list(measures) if measures is not None else common
    for measure in names:
        for path, values in zip(paths, chosen.values(), strict=True):
            if measure not in values:
                raise DataError(f"{path} has no per-query values of {measure}; it has {', '.join(values)}")
    if not names:
        raise DataError(f"{', '.join(paths)} share no measure: compare files of the same measures")
    evaluations = {}
    for name, values in chosen.items():
        queries = {q for m in names for q in values[m]}
        evaluations[name] = Evaluation(
            values={m: float(np.mean(list(values[m].values()))) for m in names},
            per_query={m: values[m] for m in names},
            judged=len(queries),
            unranked=0,
            judged_queries="all",
        )
    return names, evaluations


def _one_set(path: str, eval_set: str | None) -> dict[str, dict[str, float]]:
    sets = read_per_query(path)
    if not sets:
        raise DataError(f"{path} holds no per-query values")
    if eval_set is not None:
        if eval_set not in sets:
            raise DataError(
                f"{path} has no set {eval_set!r}; it holds {', '.join(sets)}: pass --eval_set one of them"
            )
        return sets[eval_set]
    if len(sets) > 1:
        raise DataError(f"{path} holds several sets ({', '.join(sets)}): choose one with --eval_set NAME")
    return next(iter(sets.values()))


def differences(
    evaluations: dict[str, Evaluation], measures: list[str], samples: int, seed: int
) -> list[Difference]:
    """Every system after the first against the first, per measure, over the queries all of them count."""
    systems = list(evaluations)
    baseline = evaluations[systems[0]]
    rows: list[Difference] = []
    for measure in measures:
        queries = sorted(set.intersection(*(set(e.per_query[measure]) for e in evaluations.values())))
        base = [baseline.per_query[measure][q] for q in queries]
        found = []
        for system in systems[1:]:
            values = [evaluations[system].per_query[measure][q] for q in queries]
            diff = [a - b for a, b in zip(values, base, strict=True)]
            low, high = paired_bootstrap(diff, samples, seed)
            found.append((system, float(np.mean(diff)), low, high, paired_t_p(values, base)))
        adjusted = holm([p for *_, p in found])
        rows += [
            Difference(s, measure, m, lo, hi, p, a, len(queries))
            for (s, m, lo, hi, p), a in zip(found, adjusted, strict=True)
        ]
    return rows


def _table(
    evaluations: dict[str, Evaluation], rows: list[Difference], measures: list[str], samples: int
) -> Table:
    baseline = next(iter(evaluations))
    table = Table(title=f"against {baseline} (95% paired bootstrap, {samples} samples; paired t-test, Holm)")
    for column in ("system", "measure", "mean", "diff", "95% interval", "p", "p (Holm)", "queries"):
        table.add_column(column, justify="left" if column in ("system", "measure") else "right", no_wrap=True)
    for measure in measures:
        table.add_row(baseline, measure, f"{evaluations[baseline].values[measure]:.4f}", "", "", "", "", "")
        for row in (r for r in rows if r.measure == measure):
            table.add_row(
                row.system, measure, f"{evaluations[row.system].values[measure]:.4f}", f"{row.mean:+.4f}",
                f"[{row.low:+.4f}, {row.high:+.4f}]", f"{row.p:.4g}", f"{row.p_holm:.4g}", str(row.queries),
            )  # fmt: skip
    return table


def compare(
    runs: list[str] | None = None,
    qrels: str | None = None,
    measures: list[str] | None = None,
    judged_queries: JudgedQueries = "all",
    samples: int = 10000,
    seed: int = 0,
    output: str | None = None,
    local_collections: dict[str, Any] | None = None,
    per_query: list[str] | None = None,
    eval_set: str | None = None,
) -> list[Difference]:
    """Compare two or more runs on the same queries: means, paired differences, intervals and p-values.

    Args:
        runs: TREC run files, two or more, e.g. ``--runs '[bm25.trec, reranked.trec]'``; the first is the
            baseline the others are compared with. Each is named by its file name (its path where two
            share one).
        qrels: the relevance judgements of ``runs``: a qrels file (TREC ``qid 0 docid grade``, or BEIR TSV)
            or an ir_datasets id with qrels (a registered ``NAME/test``).
        measures: ir_measures names, each compared separately.
        judged_queries: which queries count: ``all`` judged queries, a run's unranked ones scoring 0
            (``trec_eval -c``), or ``ranked`` (those the run ranks; the paired statistics then use the
            queries every run ranks).
        samples: paired-bootstrap resamples of the queries.
        seed: seed of the bootstrap (``numpy.random.default_rng``); each comparison starts from it.
        output: TSV file to write every per-query value to (``system query measure value``, one header line).
        local_collections: ``{name: folder or files}`` collections to register first (see README).
        per_query: instead of runs and qrels, per-query files of ``lightning-rank test --per_query_file``
            (or ``compare --output``), two or more, the first the baseline: their values are compared as
            they are (the averaging rule they were written under holds).
        eval_set: which set (or system) of each per-query file to compare, where a file holds several,
            e.g. ``dl19`` of a test with ``data.test_datasets``.
    """
    inputs = _check_inputs(runs, qrels, per_query)
    check_at_least("--samples", samples, 1)
    check_judged_queries(judged_queries)
    if measures is not None:
        parse_measures(measures)
    if output is not None:
        check_replaceable(output, "per_query")
    if per_query is not None:
        names, evaluations = per_query_evaluations(per_query, eval_set, measures)
    else:
        names = list(measures or DEFAULT_MEASURES)
        parse_measures(names)
        for name, source in (local_collections or {}).items():
            register_local(name, source)
        judged = load_judgements(qrels)
        evaluations = _evaluations(inputs, judged, qrels, names, judged_queries)
    rows = differences(evaluations, names, samples, seed)
    table = _table(evaluations, rows, names, samples)
    console = Console()
    if not console.is_terminal:  # a file or a pipe: rich would fold the table into 80 columns
        console = Console(width=max(console.width, Console(width=400).measure(table).maximum))
    console.print(table)
    for system, evaluation in evaluations.items():
        counted = f"{evaluation.judged} queries, as the file has them"
        said = evaluation.summary() if per_query is None else counted
        console.print(f"{system}: {said}")
    if output is not None:
        per_query = [
            (system, query, measure, value)
            for system, evaluation in evaluations.items()
            for measure in names
            for query, value in evaluation.per_query[measure].items()
        ]
        write_per_query(output, per_query)
        console.print(f"wrote {output}: {len(per_query)} per-query values")
    return rows
