"""Training groups: P positives + (G-P) hard negatives per query, from qrels and a first-stage run.

Positives are the judged documents at or above ``min_relevance``, each labelled with its qrels grade (at
least 1); negatives are the run's top-``depth`` documents minus every judged positive, labelled 0 whatever
their qrels say (a grade below ``min_relevance``, or a negative "junk" grade, is not relevant for training).
Both are sampled per group with a seeded RNG. What cannot be used (queries without positives or without
negatives, run entries or positives naming missing documents) is skipped and counted, and the counts are
reported once.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

NegativeSampling = Literal["uniform", "top"]
TeacherMissing = Literal["skip", "lowest"]


@dataclass(frozen=True)
class TrainingQuery:
    """One trainable query: its positives with their grades, and its candidate negatives (run order)."""

    query_id: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    grades: tuple[int, ...]  # one per positive: its qrels grade, at least 1

    def label(self, doc_id: str) -> float:
        """The training label of ``doc_id``: a positive's grade, 0 for anything else."""
        for positive, grade in zip(self.positives, self.grades, strict=True):
            if positive == doc_id:
                return float(grade)
        return 0.0


@dataclass
class SkipReport:
    """What the index left out and why; logged once when the index is built."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items())) or "nothing"


def group_by_query(run: Iterable[tuple[str, str]], depth: int) -> dict[str, list[str]]:
    """The first ``depth`` documents of each query of a run (``(query_id, doc_id)`` pairs, best first)."""
    grouped: dict[str, list[str]] = {}
    for qid, did in run:
        ranked = grouped.setdefault(qid, [])
        if len(ranked) < depth:
            ranked.append(did)
    return grouped


def build_training_index(
    qrels: Mapping[str, Mapping[str, int]],
    run: Iterable[tuple[str, str]],
    queries: Mapping[str, str],
    document_exists: Callable[[Iterable[str]], set[str]],
    min_relevance: int = 1,
    depth: int = 100,
    teacher: Mapping[str, Mapping[str, float]] | None = None,
    first_stage: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[list[TrainingQuery], SkipReport]:
    """Join qrels with a run (``(query_id, doc_id)`` pairs, best first per query) into trainable queries.

    ``document_exists`` takes doc ids and returns the subset present in the corpus (one bulk lookup). With
    ``teacher`` scores (for distillation) or ``first_stage`` score texts (for templates that show them),
    documents without one are left out and counted.
    """
    report = SkipReport()
    candidates = group_by_query(run, depth)
    wanted = {d for ranked in candidates.values() for d in ranked}
    wanted |= {d for rels in qrels.values() for d, r in rels.items() if r >= min_relevance}
    present = document_exists(wanted)

    index: list[TrainingQuery] = []
    for qid in sorted(set(qrels) | set(candidates), key=_natural_key):
        if qid not in queries:
            report.add(
                "run/qrels entries for unknown queries",
                len(qrels.get(qid, {})) + len(candidates.get(qid, [])),
            )
            continue
        judged_positive = {d for d, r in qrels.get(qid, {}).items() if r >= min_relevance}
        positives = tuple(d for d in sorted(judged_positive) if d in present)
        report.add("positives missing from the corpus", len(judged_positive) - len(positives))
        if not positives:
            report.add("queries without positives")
            continue
        ranked = candidates.get(qid, [])
        negatives = tuple(d for d in ranked if d not in judged_positive and d in present)
        report.add("run entries naming missing documents", sum(d not in present for d in ranked))
        for what, scored_by in (("teacher", teacher), ("first-stage", first_stage)):
            if scored_by is None:
                continue
            scored = scored_by.get(qid, {})
            kept_pos = tuple(d for d in positives if d in scored)
            kept_neg = tuple(d for d in negatives if d in scored)
            report.add(
                f"documents without a {what} score",
                len(positives) + len(negatives) - len(kept_pos) - len(kept_neg),
            )
            positives, negatives = kept_pos, kept_neg
        if not positives:
            report.add("queries without a positive that has every score needed")
            continue
        if not negatives:
            report.add("queries without negatives in the run")
            continue
        rels = qrels[qid]  # a positive is judged; with min_relevance <= 0 a judged 0 counts as grade 1
        index.append(TrainingQuery(qid, positives, negatives, tuple(max(int(rels[d]), 1) for d in positives)))
    return index, report


def fill_unscored(
    teacher: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    run: Iterable[tuple[str, str]],
) -> dict[str, dict[str, float]]:
    """A truncated run as teacher: each judged or run document it left out of a query it did score gets that
    query's lowest score (what the run ranked below its last entry). Queries it did not score stay absent."""
    filled = {qid: dict(scores) for qid, scores in teacher.items()}
    wanted: dict[str, set[str]] = {qid: set(docs) for qid, docs in qrels.items()}
    for qid, did in run:
        wanted.setdefault(qid, set()).add(did)
    for qid, docs in wanted.items():
        scores = filled.get(qid)
        if scores:
            lowest = min(scores.values())
            for did in docs - scores.keys():
                scores[did] = lowest
    return filled


def docpairs_as_qrels_and_run(
    docpairs: Iterable[tuple[str, str, str]], qrels: Mapping[str, Mapping[str, int]] | None = None
) -> tuple[dict[str, dict[str, int]], list[tuple[str, str]]]:
    """Docpairs ``(query, doc_a, doc_b)`` (a preferred over b, as MS MARCO's triples) as qrels (every doc_a is
    a positive) and a run (the doc_b's, in file order) for :func:`build_training_index`. Judged positives
    from ``qrels`` are kept too, so a doc_b that is judged relevant never becomes a negative."""
    merged: dict[str, dict[str, int]] = {q: dict(r) for q, r in (qrels or {}).items()}
    run: list[tuple[str, str]] = []
    for qid, doc_a, doc_b in docpairs:
        merged.setdefault(qid, {})[doc_a] = max(merged.get(qid, {}).get(doc_a, 1), 1)
        run.append((qid, doc_b))
    return merged, run


def sample_group(
    query: TrainingQuery,
    group_size: int,
    rng: random.Random,
    sampling: NegativeSampling = "uniform",
    positives: int = 1,
) -> tuple[list[str], bool]:
    """Up to ``positives`` positives (drawn uniformly, then highest grade first; a query with fewer keeps
    all it has), then negatives up to ``group_size``; returns the doc ids and whether negatives had to be
    repeated because the run offered too few."""
    if positives == 1:
        chosen = [rng.choice(query.positives)]
    else:
        chosen = rng.sample(query.positives, min(positives, len(query.positives)))
        chosen.sort(key=query.label, reverse=True)  # stable: equal grades keep their drawn order
    need = group_size - len(chosen)
    pool = query.negatives
    repeated = len(pool) < need
    if sampling == "top":
        negatives = [pool[i % len(pool)] for i in range(need)]
    elif repeated:
        negatives = [rng.choice(pool) for _ in range(need)]
    else:
        negatives = rng.sample(pool, need)
    return [*chosen, *negatives], repeated


def _natural_key(qid: str) -> tuple[int, int | str]:
    return (0, int(qid)) if qid.isdigit() else (1, qid)
