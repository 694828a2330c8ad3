"""Sequence packing: several short pairs share one row, so a batch of mixed passage lengths costs about its
real tokens instead of ``rows x longest``.

Pairs are placed first-fit by decreasing length, in rows as short as costs about the fewest tokens. Each
packed token carries its pair's index (``sequence_ids``; ``-1`` for padding) and its position within the
pair (``position_ids``), from which a backbone that supports packing (``Backbone.packing_unsupported`` is
None) builds a block-diagonal attention mask so that no pair sees another; each pair's score is read at
``sequence_starts`` / ``sequence_lengths``. The keys of a packed batch: :class:`.batch.PackedRows`.
"""

from __future__ import annotations

import torch

from lightning_rank.datamodules.batch import PackedRows
from lightning_rank.text.templates import EncodedPair


def pack_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """Assign sequences (by index) to rows of ``row_length`` tokens, first-fit by decreasing length;
    within a row they keep that order."""
    too_long = [n for n in lengths if n > row_length]
    if too_long:
        raise ValueError(f"a sequence of {max(too_long)} tokens does not fit a packed row of {row_length}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, space in enumerate(free) if space >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(row_length)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


#: a longer row may cost this much more in tokens than the cheapest before it is passed over for a shorter one
ROW_TOKEN_SLACK = 0.02


def best_rows(
    lengths: list[int], max_row_length: int, multiple: int | None = None
) -> tuple[int, list[list[int]]]:
    """The row length and rows for ``lengths``: of the candidates (the longest sequence times 1 to 4, no
    longer than ``max_row_length``, and ``max_row_length`` itself; rounded up to a multiple of ``multiple``),
    the shortest whose rows x length is within :data:`ROW_TOKEN_SLACK` of the fewest tokens. Attention
    costs grow with the row length, so pairs of mixed lengths get short rows unless long ones save tokens,
    and pairs of one length fill rows exactly as padding would."""

    def round_up(n: int) -> int:
        return (n + multiple - 1) // multiple * multiple if multiple else n

    longest = max(lengths)
    ceiling = round_up(max(max_row_length, longest))
    candidates = sorted({round_up(longest * k) for k in range(1, 5) if longest * k <= ceiling} | {ceiling})
    packed = [(row_length, pack_rows(lengths, row_length)) for row_length in candidates]
    fewest = min(len(rows) * row_length for row_length, rows in packed)
    return next(
        (row_length, rows)
        for row_length, rows in packed
        if len(rows) * row_length <= fewest * (1 + ROW_TOKEN_SLACK)
    )


def pack(
    encoded: list[EncodedPair], max_row_length: int, pad_token_id: int, multiple: int | None = None
) -> PackedRows:
    """Packed tensors of ``encoded`` pairs in rows of at most ``max_row_length`` tokens (:func:`best_rows`;
    see the module docstring), keyed as :class:`.batch.PackedRows`."""
    lengths = [len(e.input_ids) for e in encoded]
    row_length, rows = best_rows(lengths, max_row_length, multiple)
    shape = (len(rows), row_length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    with_types = encoded[0].token_type_ids is not None
    token_type_ids = torch.zeros(shape, dtype=torch.long) if with_types else None
    starts = torch.empty(len(encoded), dtype=torch.long)
    for r, members in enumerate(rows):
        offset = 0
        for i in members:
            n, e = lengths[i], encoded[i]
            input_ids[r, offset : offset + n] = torch.tensor(e.input_ids)
            position_ids[r, offset : offset + n] = torch.arange(n)
            sequence_ids[r, offset : offset + n] = i
            if token_type_ids is not None:
                token_type_ids[r, offset : offset + n] = torch.tensor(e.token_type_ids)
            starts[i] = r * row_length + offset
            offset += n
    out: PackedRows = {
        "input_ids": input_ids,
        "attention_mask": (sequence_ids >= 0).long(),
        "position_ids": position_ids,
        "sequence_ids": sequence_ids,
        "sequence_starts": starts,
        "sequence_lengths": torch.tensor(lengths, dtype=torch.long),
    }
    if token_type_ids is not None:
        out["token_type_ids"] = token_type_ids
    return out
