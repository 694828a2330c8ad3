"""``lightning-rank fuse``: interpolate a reranked run with its first-stage run, the weight set or tuned.

A cross-encoder and BM25 make different mistakes: ``w * norm(reranker) + (1 - w) * norm(first stage)``,
per query, is a standard final stage of a reranking pipeline (Lin et al., "Pretrained Transformers for
Text Ranking", section 3.2.2). Scores are normalised per query first, since a cross-encoder's logits and
BM25's scores live on unrelated scales. The weight is tuned on held-out judged queries (never the queries
it is then applied to): ``--weight tune --qrels NAME/dev``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, Literal

from lightning_rank.datamodules.collections import load_judgements, register_local
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import ConfigError, DataError, check_between
from lightning_rank.metrics import (
    DEFAULT_MEASURES,
    JudgedQueries,
    check_judged_queries,
    evaluate,
    evaluate_run,
    parse_measures,
)
from lightning_rank.runs import Run, check_replaceable, write_trec_run

Normalization = Literal["zscore", "minmax"]
GRID = tuple(i / 20 for i in range(21))  # 0.0, 0.05, ..., 1.0


def normalize(scores: Mapping[str, float], how: Normalization) -> dict[str, float]:
    """One query's scores on a common scale: ``zscore`` (mean 0, deviation 1) or ``minmax`` (0 to 1).
    Equal scores (one document, or a flat run) all map to 0."""
    values = list(scores.values())
    if how == "zscore":
        center, spread = statistics.fmean(values), statistics.pstdev(values)
    elif how == "minmax":
        center, spread = min(values), max(values) - min(values)
    else:
        raise ConfigError(f"normalization must be 'zscore' or 'minmax', got {how!r}")
    if spread == 0:
        return dict.fromkeys(scores, 0.0)
    return {doc: (value - center) / spread for doc, value in scores.items()}


def interpolate(reranked: Run, first_stage: Run, weight: float, how: Normalization = "zscore") -> Run:
    """``weight * reranker + (1 - weight) * first stage`` over each query's reranked documents, both
    normalised per query. A document the first stage did not score gets that query's lowest first-stage
    score; queries the first stage lacks keep their reranker scores (normalised)."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"the weight of the reranker must be in [0, 1], got {weight}")
    fused: Run = {}
    for qid, docs in reranked.items():
        if not docs:
            continue
        model = normalize(docs, how)
        lexical = normalize(first_stage[qid], how) if first_stage.get(qid) else {}
        floor = min(lexical.values(), default=0.0)
        fused[qid] = {d: weight * model[d] + (1 - weight) * lexical.get(d, floor) for d in docs}
    return fused


def tune_weight(
    reranked: Run,
    first_stage: Run,
    qrels: Mapping[str, Mapping[str, int]],
    measure: str = "nDCG@10",
    how: Normalization = "zscore",
    grid: tuple[float, ...] = GRID,
    judged_queries: JudgedQueries = "all",
) -> tuple[float, dict[float, float]]:
    """The grid weight with the best ``measure`` on ``qrels`` (ties: the larger weight, closer to the
    reranker alone), and the measure at every weight."""
    values = {
        w: evaluate_run(interpolate(reranked, first_stage, w, how), qrels, [measure], judged_queries)[measure]
        for w in grid
    }
    best = max(values, key=lambda w: (round(values[w], 12), w))
    return best, values


def fuse(
    run: str,
    first_stage: str,
    output: str,
    weight: float | Literal["tune"] = 0.5,
    qrels: str | None = None,
    measure: str = "nDCG@10",
    normalization: Normalization = "zscore",
    local_collections: dict[str, Any] | None = None,
    measures: list[str] | None = None,
    tag: str = "fused",
    judged_queries: JudgedQueries = "all",
) -> float:
    """Write the interpolation of a reranked run with its first-stage run; returns the weight used.

    Args:
        run: the reranked TREC run (``lightning-rank predict``'s run_writer output).
        first_stage: the TREC run it reranked (e.g. ``lightning-rank bm25``'s).
        output: TREC run file to write (atomically); an existing file is replaced only when it is a run.
        weight: the reranker's share in [0, 1] (1: the reranker alone, 0: the first stage alone), or
            ``tune``: the best of 0, 0.05, ..., 1 for ``measure`` on ``qrels``. Tune on held-out queries,
            then pass the printed weight when fusing the test queries.
        qrels: a qrels file, or the ir_datasets id whose qrels judge the queries (``NAME/dev``); needed to
            tune, else only used to print the measures of the inputs and the fused run.
        measure: what tuning maximises (an ir_measures name).
        normalization: per-query score normalisation, ``zscore`` or ``minmax``.
        local_collections: ``{name: folder or files}`` collections to register first (see README).
        measures: ir_measures names to print when ``qrels`` is given.
        tag: the run tag (last TREC column).
        judged_queries: which queries tuning and the printed averages are over: ``all`` judged queries of
            ``qrels``, one without candidates scoring 0 (``trec_eval -c``), or ``ranked`` (only those the
            run ranks: trec_eval without ``-c``).
    """
    if weight != "tune":
        check_between("--weight", weight, 0, 1)
    check_judged_queries(judged_queries)
    for name, source in (local_collections or {}).items():
        register_local(name, source)
    if weight == "tune" and qrels is None:
        raise ConfigError(
            "--weight tune needs --qrels: the qrels file or dataset id of held-out judged queries (NAME/dev)"
        )
    parse_measures([measure, *(measures or [])])  # unknown names fail before any file is read
    check_replaceable(output, "run")
    reranked, lexical = read_trec_run(run), read_trec_run(first_stage)
    if not reranked:
        raise DataError(f"{run}: the reranked run is empty")
    if not set(reranked) & set(lexical):
        raise DataError(
            f"{run} and {first_stage} share no query id: pass the first-stage run that {run} reranked"
        )
    judged = None
    if qrels is not None:
        judged = load_judgements(qrels)
    if weight == "tune":
        weight, values = tune_weight(
            reranked, lexical, judged, measure, normalization, judged_queries=judged_queries
        )
        print(f"{measure} on {qrels} by reranker weight:")
        print("  ".join(f"{w:.2f}={v:.4f}" for w, v in values.items()))
    fused = interpolate(reranked, lexical, float(weight), normalization)
    write_trec_run(fused, output, tag=tag)
    print(f"wrote {output}: {len(fused)} queries, reranker weight {float(weight):.2f} ({normalization})")
    if judged is not None:
        names = measures or list(DEFAULT_MEASURES)
        for label, candidate in (("first stage", lexical), ("reranker", reranked), ("fused", fused)):
            evaluation = evaluate({q: candidate.get(q, {}) for q in fused}, judged, names, judged_queries)
            values = "  ".join(f"{m}={v:.4f}" for m, v in evaluation.values.items())
            print(f"{label:>12}: {values}  {evaluation.summary()}")
    print(f"weight={float(weight):.2f}")
    return float(weight)
