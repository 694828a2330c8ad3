"""Evaluation data: every (query, candidate) pair in the top-k of a first-stage run, to be reranked.

Queries and documents are referred to by integer indices into the split's id tables, so that scores can be
gathered across ranks as tensors and mapped back to ids for ir_measures (see ``metrics.RankingMetrics``).
Pairs are ordered by document length (long first) so each batch pads little; order does not affect metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from lightning_rank.datamodules.batch import EvalBatch
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.groups import SkipReport, group_by_query


@dataclass
class EvalSplit:
    """The pairs to score for one split, with the id tables and qrels the metrics need."""

    query_ids: list[str]
    doc_ids: list[str]
    query_texts: list[str]
    doc_texts: list[str]
    pairs: list[tuple[int, int]]
    qrels: dict[str, dict[str, int]]
    report: SkipReport = field(default_factory=SkipReport)
    score_texts: dict[tuple[int, int], str] | None = None  # per pair, for templates that show scores


def build_eval_split(
    run: Iterable[tuple[str, str]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    doc_texts: dict[str, str],
    depth: int,
    first_stage: dict[str, dict[str, str]] | None = None,
) -> EvalSplit:
    """Top-``depth`` candidates per query of ``run``; unknown queries and missing documents are counted.
    ``first_stage`` score texts (``{query: {doc: text}}``) are kept per pair for templates that show them."""
    report = SkipReport()
    per_query = group_by_query(run, depth)
    query_index: dict[str, int] = {}
    doc_index: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    shown: dict[tuple[int, int], str] | None = {} if first_stage is not None else None
    for qid, ranked in per_query.items():
        if qid not in queries:
            report.add("run entries for unknown queries", len(ranked))
            continue
        for did in ranked:
            if did not in doc_texts:
                report.add("run entries naming missing documents")
                continue
            qi = query_index.setdefault(qid, len(query_index))
            di = doc_index.setdefault(did, len(doc_index))
            pairs.append((qi, di))
            if shown is not None:
                shown[qi, di] = first_stage[qid][did]
    query_ids = list(query_index)
    doc_ids = list(doc_index)
    texts = [doc_texts[d] for d in doc_ids]
    pairs.sort(key=lambda p: -len(texts[p[1]]))
    query_texts = [queries[q] for q in query_ids]
    return EvalSplit(query_ids, doc_ids, query_texts, texts, pairs, qrels, report, shown)


class RerankPairs(Dataset):
    """Map-style over the pairs of an :class:`EvalSplit` (Lightning adds a DistributedSampler under DDP)."""

    def __init__(self, split: EvalSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.pairs)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return self.split.pairs[i]


@dataclass
class RerankCollator:
    """Collate pair indices into a tokenized batch that remembers which (query, doc) each row is
    (:data:`.batch.EvalBatch`)."""

    split: EvalSplit
    collator: PairCollator

    def __call__(self, items: list[tuple[int, int]]) -> EvalBatch:
        qi = [q for q, _ in items]
        di = [d for _, d in items]
        shown = self.split.score_texts
        batch = self.collator(
            [self.split.query_texts[q] for q in qi],
            [self.split.doc_texts[d] for d in di],
            [shown[pair] for pair in items] if shown is not None else None,
        )
        batch["query_index"] = torch.tensor(qi, dtype=torch.long)
        batch["doc_index"] = torch.tensor(di, dtype=torch.long)
        return batch
