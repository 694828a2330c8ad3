"""The batches the collators hand the reranker, declared once: every key a batch may hold, and who adds it.

A batch is a plain ``dict`` (Lightning moves it to the device as it is), typed here so that collation,
packing, the training stream, the evaluation split, the module and the callbacks agree on one set of keys.
A collated batch is one of three shapes: padded rows (:class:`PaddedRows`), several length buckets each
padded on its own (:class:`BucketedRows`), or packed rows in which several pairs share a row
(:class:`PackedRows`). Training adds labels (:class:`TrainFields`); evaluation adds the pair indices
(:class:`EvalFields`).
"""

from typing import NotRequired, TypedDict

from torch import Tensor


class TokenCounts(TypedDict):
    """What every collated batch counts, for the tokens/sec profiler."""

    real_tokens: int  # tokens that are not padding
    padded_tokens: int  # every position of every row, padding included
    num_sequences: int  # (query, document) pairs; with data.passages, windows
    passage_owner: NotRequired[Tensor]  # [rows], the pair of each window, with data.passages but FirstP
    passage_mode: NotRequired[str]  # how the windows' scores make the pair's: text.passages.MODES


class PaddedRows(TypedDict):
    """One pair per row, right-padded to the longest pair (or a multiple of ``pad_to_multiple_of``)."""

    input_ids: Tensor  # [rows, length]
    attention_mask: Tensor  # [rows, length], 1 on real tokens
    token_type_ids: NotRequired[Tensor]  # [rows, length], for backbones whose tokenizer gives them


class Bucket(PaddedRows):
    """Padded rows of one length bucket, and the batch rows they hold (scores go back in row order)."""

    rows: Tensor  # [rows of this bucket], indices into the batch's pairs


class BucketedRows(TypedDict):
    """``data.length_buckets > 1``: the pairs sorted by length and padded bucket by bucket."""

    buckets: list[Bucket]


class PackedRows(TypedDict):
    """``data.packing``: several pairs share each row and none sees another (a block-diagonal mask)."""

    input_ids: Tensor  # [rows, row_length]
    attention_mask: Tensor  # [rows, row_length], 1 on real tokens (for the counts)
    position_ids: Tensor  # [rows, row_length], restarting at 0 at each pair
    sequence_ids: Tensor  # [rows, row_length], the pair each token belongs to; -1 on padding
    sequence_starts: Tensor  # [pairs], flat index of each pair's first token
    sequence_lengths: Tensor  # [pairs]
    token_type_ids: NotRequired[Tensor]


class TrainFields(TypedDict):
    """What the training stream adds: groups of positives then negatives, flattened row-major."""

    labels: Tensor  # [groups, group_size]: each positive's qrels grade (highest first), 0 for negatives
    query_ids: list[str]  # one per group, named when a loss turns non-finite
    repeated_negatives: int  # negatives repeated because a run had too few candidates
    teacher_scores: NotRequired[Tensor]  # [groups, group_size], with data.teacher_run (distillation losses)


class EvalFields(TypedDict):
    """What the evaluation split adds: each row's (query, document) as indices into the split's id tables."""

    query_index: Tensor  # [pairs]
    doc_index: Tensor  # [pairs]


# A collated batch: one of the three shapes, with its token counts.
PairBatch = PaddedRows | BucketedRows | PackedRows


class PaddedBatch(PaddedRows, TokenCounts):
    """Padded rows with their token counts."""


class BucketedBatch(BucketedRows, TokenCounts):
    """Length buckets with their token counts."""


class PackedBatch(PackedRows, TokenCounts):
    """Packed rows with their token counts."""


# What the collator returns: a collated batch of one of the three shapes, counted.
CollatedBatch = PaddedBatch | BucketedBatch | PackedBatch


class PaddedTrainBatch(PaddedBatch, TrainFields):
    """A training batch of padded rows."""


class BucketedTrainBatch(BucketedBatch, TrainFields):
    """A training batch in length buckets."""


class PackedTrainBatch(PackedBatch, TrainFields):
    """A training batch of packed rows."""


# What the training stream yields.
TrainBatch = PaddedTrainBatch | BucketedTrainBatch | PackedTrainBatch


class PaddedEvalBatch(PaddedBatch, EvalFields):
    """An evaluation batch of padded rows."""


class BucketedEvalBatch(BucketedBatch, EvalFields):
    """An evaluation batch in length buckets."""


class PackedEvalBatch(PackedBatch, EvalFields):
    """An evaluation batch of packed rows."""


# What the evaluation split's collator yields (validation, test, predict).
EvalBatch = PaddedEvalBatch | BucketedEvalBatch | PackedEvalBatch
