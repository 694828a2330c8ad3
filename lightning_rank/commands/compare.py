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
from lightning_rank.runs import check_replaceable, write_per_query

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
    runs: list[str],
    qrels: str,
    measures: list[str] | None = None,
    judged_queries: JudgedQueries = "all",
    samples: int = 10000,
    seed: int = 0,
    output: str | None = None,
    local_collections: dict[str, Any] | None = None,
) -> list[Difference]:
    """Compare two or more runs on the same queries: means, paired differences, intervals and p-values.

    Args:
        runs: TREC run files, two or more, e.g. ``--runs '[bm25.trec, reranked.trec]'``; the first is the
            baseline the others are compared with. Each is named by its file name (its path where two
            share one).
        qrels: the relevance judgements: a qrels file (TREC ``qid 0 docid grade``, or BEIR TSV) or an
            ir_datasets id with qrels (a registered ``NAME/test``).
        measures: ir_measures names, each compared separately.
        judged_queries: which queries count: ``all`` judged queries, a run's unranked ones scoring 0
            (``trec_eval -c``), or ``ranked`` (those the run ranks; the paired statistics then use the
            queries every run ranks).
        samples: paired-bootstrap resamples of the queries.
        seed: seed of the bootstrap (``numpy.random.default_rng``); each comparison starts from it.
        output: TSV file to write every per-query value to (``system query measure value``, one header line).
        local_collections: ``{name: folder or files}`` collections to register first (see README).
    """
    if len(runs) < 2:
        raise InputError(
            f"compare needs two or more runs, the first the baseline; got {len(runs)} ({', '.join(runs)}). "
            "Pass --runs '[baseline.trec, other.trec]'"
        )
    if len(set(runs)) < len(runs):
        raise InputError(f"--runs names a file twice ({', '.join(runs)}); name each run once")
    check_at_least("--samples", samples, 1)
    check_judged_queries(judged_queries)
    names = list(measures or DEFAULT_MEASURES)
    parse_measures(names)
    if output is not None:
        check_replaceable(output, "per_query")
    for name, source in (local_collections or {}).items():
        register_local(name, source)
    judged = load_judgements(qrels)
    evaluations = _evaluations(runs, judged, qrels, names, judged_queries)
    rows = differences(evaluations, names, samples, seed)
    table = _table(evaluations, rows, names, samples)
    console = Console()
    if not console.is_terminal:  # a file or a pipe: rich would fold the table into 80 columns
        console = Console(width=max(console.width, Console(width=400).measure(table).maximum))
    console.print(table)
    for system, evaluation in evaluations.items():
        console.print(f"{system}: {evaluation.summary()}")
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
