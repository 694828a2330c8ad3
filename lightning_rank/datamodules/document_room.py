"""Whether ``data.max_length`` leaves the documents room: the template and the query take their tokens
first, and a pair left no document token is scored without its document."""

from __future__ import annotations

from typing import Any

from lightning_rank.datamodules.reports import warn
from lightning_rank.errors import ConfigError


def check_document_room(backbone: Any, hp: Any) -> None:
    """Refuse a ``max_length`` in which the template alone (with an empty query) leaves no document token
    (every document would be left out), or a passage window longer than what is left. Reads no data."""
    score = ["100"] if backbone.template.needs_score else None
    (room,) = backbone.template.document_budgets(
        backbone.tokenizer, [""], hp.max_length, hp.max_query_length, score
    )
    if room < 1:
        taken = hp.max_length - room
        raise ConfigError(
            f"data.max_length {hp.max_length} leaves no token for the document: the backbone's template "
            f"takes {taken} tokens by itself. Set data.max_length to at least {taken + 1} "
            f"({taken + hp.max_query_length + 1} keeps room with queries of data.max_query_length "
            f"{hp.max_query_length} tokens)."
        )
    length = (hp.get("passages") or {}).get("length")
    if length is not None and length > room:
        raise ConfigError(
            f"data.passages.length {length} is longer than the {room} document tokens data.max_length "
            f"{hp.max_length} leaves even with an empty query: windows would be cut. Set "
            f"data.passages.length to at most {room}, or data.max_length to at least "
            f"{hp.max_length + length - room}."
        )


def report_no_room(
    backbone: Any, hp: Any, dataset_id: str, queries: list[str], scores: list[str] | None, what: str
) -> None:
    """Warn, with counts, when the template and the query leave some pairs no document token."""
    budgets = backbone.template.document_budgets(
        backbone.tokenizer, queries, hp.max_length, hp.max_query_length, scores
    )
    short = [b for b in budgets if b < 1]
    if short:
        warn(
            f"{dataset_id}: {len(short)} of {len(budgets)} {what} leave no token of data.max_length "
            f"{hp.max_length} for the document (the template and the query, kept up to "
            f"data.max_query_length {hp.max_query_length} tokens, take them all): they are scored "
            f"without their document. Set data.max_length to at least {hp.max_length - min(short) + 1}, "
            "or lower data.max_query_length."
        )
