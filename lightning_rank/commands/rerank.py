"""``lightning-rank rerank``: rerank a run's top candidates with an exported reranker, without a config.

``lightning-rank predict`` reranks with a checkpoint and the fit's config; an export (``lightning-rank
export``) is a plain folder that carries what scoring needs (backbone, head, template and the fit's input
format), so this command takes the folder, a dataset and a run. Pairs are rendered as the fit rendered them;
a template that shows first-stage scores reads the run's own, scaled per query over ``depth`` as in training.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from ir_datasets.formats import GenericScoredDoc

from lightning_rank.commands.report import write_and_report
from lightning_rank.datamodules.collections import register_local, require_dataset
from lightning_rank.datamodules.documents import run_texts
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.datamodules.first_stage_runs import ranked_scores
from lightning_rank.errors import DataError, InputError
from lightning_rank.metrics import JudgedQueries, check_judged_queries
from lightning_rank.runs import Run, check_replaceable
from lightning_rank.text.score_text import score_texts


def rerank(
    model: str,
    dataset: str,
    run: str,
    output: str,
    depth: int = 100,
    batch_size: int = 64,
    device: str | None = None,
    local_collections: dict[str, Any] | None = None,
    measures: list[str] | None = None,
    tag: str = "reranker",
    trust_remote_code: bool = False,
    judged_queries: JudgedQueries = "all",
) -> dict[str, float]:
    """Write ``run``'s top ``depth`` candidates rescored by an exported reranker; with qrels, print metrics.

    Args:
        model: the folder ``lightning-rank export`` wrote, or the Hugging Face hub id it was uploaded to
            (offline: the cached copy).
        dataset: ir_datasets id whose queries and corpus the run is over (a registered ``NAME/test``).
        run: the TREC run to rerank (e.g. ``lightning-rank bm25``'s).
        output: TREC run file to write (atomically; its folder is created); an existing file is replaced
            only when it is a run.
        depth: candidates reranked per query: the run's highest scored (ties: doc id descending), as
            ``predict``'s ``data.rerank_depth``.
        batch_size: pairs scored per forward pass.
        device: torch device (default: CUDA when available, else CPU).
        local_collections: ``{name: folder or files}`` collections to register first (see README).
        measures: ir_measures names to report when the dataset has qrels.
        tag: the run tag (last TREC column).
        trust_remote_code: run Python code the export folder ships (its backbone config's ``auto_map``),
            when its ``reranker.json`` asks for it; read that code first. Off: such an export is refused.
        judged_queries: which queries the printed averages are over: ``all`` judged queries of the
            dataset, one the run has no candidate for scoring 0 (``trec_eval -c``), or ``ranked`` (only
            those the run ranks: trec_eval without ``-c``).
    """
    from lightning_rank.reranker.module import RerankerModule

    if depth < 1 or batch_size < 1:
        raise InputError(f"--depth and --batch_size must be positive, got {depth} and {batch_size}")
    check_judged_queries(judged_queries)
    for name, source in (local_collections or {}).items():
        register_local(name, source)
    require_dataset(dataset, "--dataset", register_option="--local_collections")
    check_replaceable(output, "run")  # before the run is read and the model loads
    start = time.perf_counter()
    listed = read_trec_run(run)
    # each query's top `depth` as predict takes them (ties: doc id descending, as trec_eval)
    pairs, candidates = ranked_scores(
        (GenericScoredDoc(q, d, score) for q, docs in listed.items() for d, score in docs.items()), depth
    )
    if not pairs:
        raise DataError(f"{run}: the run is empty; nothing to rerank")
    queries, texts = run_texts(dataset, candidates, run)  # before the model loads: a wrong run fails at once
    reranker = RerankerModule.from_pretrained(model, trust_remote_code=trust_remote_code).to(
        device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    shown = score_texts(candidates, depth) if reranker.backbone.template.needs_score else None
    scores = reranker.score(
        [queries[q] for q, _ in pairs],
        [texts[d] for _, d in pairs],
        batch_size=batch_size,
        progress=sys.stderr.isatty(),
        first_stage=[shown[q][d] for q, d in pairs] if shown is not None else None,
    )
    reranked: Run = {}
    for (qid, doc), score in zip(pairs, scores.tolist(), strict=True):
        reranked.setdefault(qid, {})[doc] = score
    return write_and_report(reranked, output, dataset, tag, start, measures, judged_queries=judged_queries)
