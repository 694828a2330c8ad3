"""Retrieval metrics identical to trec_eval, and TREC run file I/O.

Validation and test rerank the top-k of a first-stage run. Every scored (query, document) pair is collected
by :class:`RankingMetrics` (gathered across DDP ranks), and the reranked run is evaluated by
:func:`evaluate_run`, which calls trec_eval's own code through ``ir_measures``' pytrec_eval provider, so the
numbers are the ones ``trec_eval`` prints for the same run file.

trec_eval semantics that matter here (and that :func:`evaluate_run` keeps):

* documents are ranked by score, descending; ties are broken by docid, descending (``strcmp``), and the
  rank column of a run file is ignored. :func:`write_trec_run` writes ranks in that same order.
* averages are over every judged query of the qrels by default (``judged_queries="all"``, ``trec_eval -c``):
  a judged query with no scored document scores what an empty ranking scores (0; ``NumQ`` 1 and ``NumRel``
  its relevant documents, as trec_eval). ``judged_queries="ranked"`` averages over the queries in both the
  run and the qrels (trec_eval without ``-c``). Either way a run query without qrels is ignored, and a
  query that is judged but has no relevant document counts, with value 0. :class:`Evaluation` says how
  many queries were averaged and how many judged queries had no candidates.
* nDCG uses gain = relevance grade (linear) and a log2 discount; relevance for binary measures (P, R, RR,
  AP) is grade >= 1 unless the measure says otherwise (e.g. ``P(rel=2)@5``).

``RR@k`` (MRR@k) is the one common measure pytrec_eval has no cutoff for; it is computed by pytrec_eval's
``recip_rank`` on the run truncated to its top k documents in trec_eval's order (what ``trec_eval -M k``
does).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ir_measures
import torch
from ir_measures.providers.base import NOT_PROVIDED
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_rank.errors import ConfigError
from lightning_rank.runs import Run, rank_documents

__all__ = ["Evaluation", "RankingMetrics", "evaluate", "evaluate_run", "parse_measures"]

Qrels = Mapping[str, Mapping[str, int]]

_EXAMPLES = '"nDCG@10", "RR@10" (or "MRR@10"), "R@100", "MAP", "P@5", "AP@100", "Success@1", "P(rel=2)@5"'


#: what evaluation reports unless told otherwise (validation, test, bm25, fuse)
DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@100")

#: which queries an average is over: every judged one (``trec_eval -c``) or those the run ranks too
JudgedQueries = Literal["all", "ranked"]
JUDGED_QUERIES: tuple[str, ...] = ("all", "ranked")


def _provider() -> Any:
    """The pytrec_eval provider of ir_measures (trec_eval's own code)."""
    return ir_measures.pytrec_eval


def _rr_without_cutoff(measure: Any) -> Any | None:
    """For ``RR@k``: the same RR measure without its cutoff (pytrec_eval has no RR cutoff); else None."""
    if measure.NAME != "RR" or measure.params.get("cutoff", NOT_PROVIDED) is NOT_PROVIDED:
        return None
    return ir_measures.RR(**{k: v for k, v in measure.params.items() if k != "cutoff"})


def parse_measures(measures: Sequence[str] | str) -> dict[str, Any]:
    """Parse ir_measures strings into ``{string: Measure}``, keeping the strings as written.

    Raises a :class:`ConfigError` naming the bad string, with examples, for an unknown or malformed measure or
    one that trec_eval (the pytrec_eval provider) cannot compute.
    """
    if isinstance(measures, str):
        measures = [measures]
    if len(measures) == 0:
        raise ConfigError(f"no measures given; name at least one, e.g. {_EXAMPLES}")
    provider = _provider()
    parsed: dict[str, Any] = {}
    for name in measures:
        if not isinstance(name, str):
            raise ConfigError(f"measures must be strings such as {_EXAMPLES}; got {name!r}")
        try:
            measure = ir_measures.parse_measure(name)
        except Exception as err:  # ir_measures raises NameError/ValueError/SyntaxError
            raise ConfigError(
                f"unknown or malformed measure {name!r} ({err}); use ir_measures names such as {_EXAMPLES}"
            ) from err
        checked = _rr_without_cutoff(measure) or measure
        if not provider.supports(checked):
            raise ConfigError(
                f"measure {name!r} is not computed by trec_eval (ir_measures' pytrec_eval provider); "
                f"supported measures include {_EXAMPLES}"
            )
        parsed[name] = measure
    return parsed


@dataclass(frozen=True)
class Evaluation:
    """A run's measures: aggregated (``values``), per counted query (``per_query[measure][query]``), and
    which queries count: ``judged`` queries in the qrels, ``unranked`` of them with no candidate."""

    values: dict[str, float]
    per_query: dict[str, dict[str, float]]
    judged: int
    unranked: int
    judged_queries: JudgedQueries

    @property
    def queries(self) -> int:
        """How many queries the values average over."""
        return self.judged if self.judged_queries == "all" else self.judged - self.unranked

    def summary(self) -> str:
        """The line printed beside the values: the query count and what became of unranked queries."""
        if self.judged_queries == "all":
            return (
                f"over {self.queries} judged queries ({self.unranked} without candidates, scored 0; "
                "trec_eval -c)"
            )
        return (
            f"over {self.queries} ranked queries ({self.unranked} judged queries without candidates left "
            "out; judged_queries: all counts them)"
        )


def check_judged_queries(judged_queries: str) -> None:
    """Refuse a ``judged_queries`` value other than ``all`` and ``ranked``."""
    if judged_queries not in JUDGED_QUERIES:
        raise ConfigError(
            f"judged_queries must be 'all' (every judged query counts, trec_eval -c) or 'ranked' (only the "
            f"queries the run ranks), got {judged_queries!r}"
        )


def _empty_ranking_value(measure: Any, judgments: Mapping[str, int]) -> float:
    """What trec_eval -c gives a judged query that has no retrieved document."""
    if measure.NAME == "NumQ":
        return 1.0
    if measure.NAME == "NumRel":
        level = measure.params.get("rel", NOT_PROVIDED)
        level = 1 if level is NOT_PROVIDED else int(level)
        return float(sum(grade >= level for grade in judgments.values()))
    return 0.0


def _per_query(measures: Sequence[Any], qrels: Qrels, run: Run) -> dict[Any, dict[str, float]]:
    """``{measure: {query: value}}`` from trec_eval for the queries of ``qrels`` (all of them in ``run``)."""
    provider = _provider()
    values: dict[Any, dict[str, float]] = {m: {} for m in measures}
    native = [m for m in measures if _rr_without_cutoff(m) is None]
    if native:
        for metric in provider.iter_calc(native, qrels, run):
            values[metric.measure][metric.query_id] = float(metric.value)
    for measure in [m for m in measures if m not in native]:
        base = _rr_without_cutoff(measure)
        cutoff = int(measure["cutoff"])
        judged_only = bool(measure["judged_only"])
        truncated: Run = {}
        for qid, docs in run.items():
            judged = qrels.get(qid, {})
            ranked = [(d, s) for d, s in rank_documents(docs) if not judged_only or d in judged]
            truncated[qid] = dict(ranked[:cutoff])
        for metric in provider.iter_calc([base], qrels, truncated):
            values[measure][metric.query_id] = float(metric.value)
    return values


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    measures: Sequence[str] | str,
    judged_queries: JudgedQueries = "all",
) -> Evaluation:
    """Evaluate a run against qrels with trec_eval (pytrec_eval): the one rule of every evaluation here.

    Args:
        run: ``{query_id: {doc_id: score}}``; ranks come from the scores (ties: docid descending).
        qrels: ``{query_id: {doc_id: relevance grade}}``.
        measures: ir_measures strings, e.g. ``["nDCG@10", "RR@10", "R@100"]``; results keep them as keys.
        judged_queries: ``all`` averages over every judged query, an unranked one scoring 0 (``trec_eval
            -c``); ``ranked`` over the judged queries the run ranks (trec_eval's default).

    With no query to average over every measure is 0.0, with a warning.
    """
    check_judged_queries(judged_queries)
    parsed = parse_measures(measures)
    run = {qid: {did: float(score) for did, score in docs.items()} for qid, docs in run.items() if docs}
    judged = {qid: dict(grades) for qid, grades in qrels.items() if grades}  # trec_eval has no empty query
    ranked = {qid: grades for qid, grades in judged.items() if qid in run}
    unranked = [qid for qid in judged if qid not in run]
    unique = list(dict.fromkeys(parsed.values()))  # deterministic order, e.g. "RR@10" and "MRR@10" once
    per_query = _per_query(unique, ranked, run) if ranked else {m: {} for m in unique}
    if judged_queries == "all":
        for measure in unique:
            values = per_query[measure]
            per_query[measure] = {q: values.get(q, _empty_ranking_value(measure, judged[q])) for q in judged}
    if not ranked:
        reason = (
            "the run is empty"
            if not run
            else f"none of the run's {len(run)} queries has relevance judgements (do the query ids match?)"
        )
        warnings.warn(f"{reason}; every measure is 0.0", stacklevel=2)
    aggregated: dict[Any, float] = {}
    for measure in unique:
        aggregator = measure.aggregator()
        for value in per_query[measure].values():
            aggregator.add(value)
        aggregated[measure] = float(aggregator.result()) if per_query[measure] else 0.0
    return Evaluation(
        values={name: aggregated[measure] for name, measure in parsed.items()},
        per_query={name: dict(per_query[measure]) for name, measure in parsed.items()},
        judged=len(judged),
        unranked=len(unranked),
        judged_queries=judged_queries,
    )


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    measures: Sequence[str] | str,
    judged_queries: JudgedQueries = "all",
) -> dict[str, float]:
    """The aggregated values of :func:`evaluate`, keyed by the measure strings as given."""
    return evaluate(run, qrels, measures, judged_queries).values


class RankingMetrics(Metric):
    """Reranking metrics over every scored (query, document) pair, equal to trec_eval's.

    Query and document string ids live in the metric (``query_ids``, ``doc_ids``); batches pass integer
    indices into these tables, so all states are tensors that gather across DDP ranks (``cat``). At
    ``compute`` the pairs are de-duplicated (DistributedSampler repeats samples to pad the last batch; the
    first occurrence is kept), turned into a run and evaluated by :func:`evaluate` (a judged query with no
    scored document counts 0 with ``judged_queries="all"``, as ``trec_eval -c``; ``"ranked"`` leaves it out).

    Call ``update`` per batch and ``compute`` once per epoch (then ``reset``); calling the metric itself
    (``forward``) would also evaluate every batch on its own, which costs a trec_eval run per step.

    Args:
        measures: ir_measures strings, e.g. ``["nDCG@10", "RR@10", "R@100"]``; ``compute`` returns them as
            keys exactly as written. Unknown measures raise a ValueError here, at construction.
        qrels: ``{query_id: {doc_id: relevance grade}}``.
        query_ids: table of query ids; ``update`` receives indices into it.
        doc_ids: table of document ids; ``update`` receives indices into it.
        judged_queries: ``all`` (every judged query counts) or ``ranked`` (those with scored documents).
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``compute_on_cpu``, ``sync_on_compute``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    query_index: list[Tensor] | Tensor
    doc_index: list[Tensor] | Tensor
    score: list[Tensor] | Tensor

    def __init__(
        self,
        measures: Sequence[str],
        qrels: dict[str, dict[str, int]],
        query_ids: Sequence[str],
        doc_ids: Sequence[str],
        judged_queries: JudgedQueries = "all",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_judged_queries(judged_queries)
        self.measures = list(parse_measures(measures))
        self.judged_queries: JudgedQueries = judged_queries
        self.qrels = qrels
        self.query_ids = list(query_ids)
        self.doc_ids = list(doc_ids)
        self.add_state("query_index", default=[], dist_reduce_fx="cat")
        self.add_state("doc_index", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")

    def update(self, query_index: Tensor, doc_index: Tensor, scores: Tensor) -> None:
        """Add scored pairs: ``query_index[i]``, ``doc_index[i]`` index the id tables; any equal shapes."""
        if not (query_index.shape == doc_index.shape == scores.shape):
            raise ValueError(
                "query_index, doc_index and scores must have the same shape; got "
                f"{tuple(query_index.shape)}, {tuple(doc_index.shape)}, {tuple(scores.shape)}"
            )
        if query_index.is_floating_point() or doc_index.is_floating_point():
            raise ValueError("query_index and doc_index must be integer tensors (indices into the id tables)")
        self.query_index.append(query_index.detach().reshape(-1).long())
        self.doc_index.append(doc_index.detach().reshape(-1).long())
        self.score.append(scores.detach().reshape(-1).float())

    def run(self) -> Run:
        """The de-duplicated run ``{query_id: {doc_id: score}}`` from the (gathered) states."""
        if isinstance(self.query_index, list) and not self.query_index:
            return {}
        qidx = dim_zero_cat(self.query_index).cpu()
        didx = dim_zero_cat(self.doc_index).cpu()
        score = dim_zero_cat(self.score).cpu()
        if qidx.numel() == 0:
            return {}
        for name, idx, table in (("query", qidx, self.query_ids), ("doc", didx, self.doc_ids)):
            if int(idx.min()) < 0 or int(idx.max()) >= len(table):
                raise ValueError(
                    f"{name}_index out of range: values in [{int(idx.min())}, {int(idx.max())}] but the "
                    f"{name} id table has {len(table)} entries"
                )
        # keep the first occurrence of each (query, doc) pair
        key = qidx * len(self.doc_ids) + didx
        order = torch.argsort(key, stable=True)
        key_sorted = key[order]
        first = torch.ones_like(key_sorted, dtype=torch.bool)
        first[1:] = key_sorted[1:] != key_sorted[:-1]
        keep = order[first]
        run: Run = {}
        for q, d, s in zip(qidx[keep].tolist(), didx[keep].tolist(), score[keep].tolist(), strict=True):
            run.setdefault(self.query_ids[q], {})[self.doc_ids[d]] = s
        return run

    def evaluate(self) -> Evaluation:
        """The reranked run's :class:`Evaluation` over the pairs of every rank (gathered here, as ``compute``
        gathers them): values, per-query values and the queries counted."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            return self._evaluation()

    def _evaluation(self) -> Evaluation:
        return evaluate(self.run(), self.qrels, self.measures, self.judged_queries)

    def compute(self) -> dict[str, float]:
        """trec_eval's values of the measures on the reranked run, keyed by the measure strings."""
        return self._evaluation().values
