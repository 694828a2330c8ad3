"""What the data cannot give, said once per split on Lightning's console: skipped entries, empty texts,
queries with too few negatives, and evaluations without a relevant document (refused when none has one)."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from lightning_rank.datamodules.eval_split import EvalSplit
from lightning_rank.datamodules.groups import SkipReport, TrainingQuery
from lightning_rank.errors import DataError

_console = logging.getLogger("lightning.pytorch")  # Lightning's own console handler shows it


@rank_zero_only
def warn(message: str) -> None:
    """A warning on Lightning's console, from rank 0 only."""
    _console.warning(message)


def report_skips(what: str, report: SkipReport, training: bool = False) -> None:
    """One line per split: what is used and what was skipped, with counts and reasons (a warning if any)."""
    if not report.counts:
        rank_zero_info(f"{what}; skipped nothing")
        return
    also = " or leave a query nothing to learn from" if training else ""
    warn(
        f"{what}; skipped {report.summary()}. Skipped entries name queries or documents that the collection "
        f"does not hold (are the run and qrels from this collection?){also}; the rest is used."
    )


def check_judged(dataset_id: str, stage: str, split: EvalSplit) -> None:
    """Refuse an evaluation in which no reranked query has a relevant document (every measure would read
    0); warn with counts when some have none."""
    relevant = {q for q, docs in split.qrels.items() if any(grade > 0 for grade in docs.values())}
    without = [q for q in split.query_ids if q not in relevant]
    if len(without) == len(split.query_ids):
        judged = sum(q in split.qrels for q in split.query_ids)
        raise DataError(
            f"{dataset_id}: none of the {len(split.query_ids)} queries data.{stage}_dataset reranks has a "
            f"relevant document in its qrels ({judged} are judged, all with relevance 0 or below), so every "
            f"measure would read 0. Set data.{stage}_dataset to a split whose qrels judge these queries' "
            "relevant documents (relevance >= 1), and check that its qrels belong to this collection."
        )
    if without:
        unjudged = sum(q not in split.qrels for q in without)
        warn(
            f"{dataset_id}: {len(without)} of {len(split.query_ids)} reranked queries have no relevant "
            f"document in the qrels: {unjudged} are not judged at all and are left out of the averages (as "
            f"trec_eval does), {len(without) - unjudged} count 0 in every measure."
        )


def report_empty_texts(dataset_id: str, documents: int, queries: int) -> None:
    """Warn, with counts, about documents and queries of empty text (kept and scored)."""
    if documents or queries:
        warn(
            f"{dataset_id}: {documents} documents and {queries} queries have empty text; they are kept and "
            "scored as they are (an empty document is valid reranker input: the template is rendered with "
            "nothing in its place). Check the collection's files if this is unexpected."
        )


def report_short_runs(
    dataset_id: str, index: list[TrainingQuery], group_size: int, positives_per_group: int = 1
) -> None:
    """Warn, with the count of queries, when a run gives too few negatives for a group (they repeat)."""
    needs = [group_size - min(positives_per_group, len(q.positives)) for q in index]
    short = [len(q.negatives) for q, need in zip(index, needs, strict=True) if len(q.negatives) < need]
    if short:
        fewer = (
            f"fewer than {needs[0]} negatives"
            if len(set(needs)) == 1
            else "fewer negatives than their groups need (data.group_size less their positives)"
        )
        warn(
            f"{dataset_id}: {len(short)} of {len(index)} training queries have {fewer} "
            f"(fewest: {min(short)}) for data.group_size {group_size}; their groups repeat negatives. Use a "
            "deeper run (data.train_run, data.negatives_depth) or a smaller data.group_size to avoid it."
        )
