"""First-stage scores rendered as text, for templates that show them to the reranker (``pair+score``,
``{score}``; Askari et al., "Injecting the BM25 Score as Text Improves BERT-Based Re-rankers", ECIR 2023).

A run's raw scores do not compare across queries or systems (BM25's grow with the query's length, a dense
run's may be negative), so each query's scores are min-max scaled over its top ``depth`` (the candidates a
reranker sees) to whole numbers: the top candidate reads ``100``, the ``depth``-th ``0``. Training and
reranking scale the same way; a training positive ranked below the ``depth``-th (scored by
``lightning-rank bm25 --judged true``) reads below 0, a value no reranked candidate shows.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping


def score_texts(scores: Mapping[str, Mapping[str, float]], depth: int) -> dict[str, dict[str, str]]:
    """``{query: {doc: text}}``: each query's scores scaled to 0-100 over its top ``depth``."""
    texts: dict[str, dict[str, str]] = {}
    for qid, docs in scores.items():
        if not docs:
            continue
        top = heapq.nlargest(depth, docs.values())
        high, low = top[0], top[-1]
        span = high - low
        texts[qid] = {
            doc: str(round(100 * (score - low) / span)) if span > 0 else ("100" if score >= high else "0")
            for doc, score in docs.items()
        }
    return texts
