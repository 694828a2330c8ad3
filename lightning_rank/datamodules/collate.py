"""Turn (query, document) texts into padded tensors in the DataLoader workers, not in the training step.

With ``length_buckets > 1`` a batch's pairs are sorted by length and cut into that many buckets, each
padded to its own longest pair: short passages are not padded to long ones, and the order of the data, hence
sharding and exact resume, is unchanged. With ``packing``, pairs share rows of up to ``max_length`` tokens
instead (:mod:`.packing`): almost no padding. With ``passages`` (other than FirstP) each document becomes
several rows, one a window, and ``passage_owner`` names each row's pair. The keys of each shape are declared
in :mod:`.batch`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lightning_rank.datamodules.batch import CollatedBatch, PaddedRows
from lightning_rank.datamodules.compatibility import check_model_fits_data
from lightning_rank.datamodules.packing import pack
from lightning_rank.text.input_format import check_passages
from lightning_rank.text.passages import Passages
from lightning_rank.text.templates import EncodedPair, PairTemplate

TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class PairCollator:
    """Render with the backbone's template, tokenize, right-pad (optionally to a multiple of
    ``pad_to_multiple_of``), bucket by length or pack, and count real and padded tokens."""

    tokenizer: PreTrainedTokenizerBase
    template: PairTemplate
    max_length: int = 256
    max_query_length: int = 64
    pad_to_multiple_of: int | None = None
    length_buckets: int = 1
    excerpt: str = "first"  # which part of a long document is kept: lightning_rank.text.excerpts
    packing: bool = False  # pairs share rows of up to max_length tokens (lightning_rank.datamodules.packing)
    passages: Passages | None = None  # documents as windows: lightning_rank.text.passages

    def __post_init__(self) -> None:
        check_model_fits_data(None, {"packing": self.packing, "length_buckets": self.length_buckets})
        check_passages(self.excerpt, self.passages)

    def __call__(
        self, queries: list[str], documents: list[str], scores: list[str] | None = None
    ) -> CollatedBatch:
        """``scores``: each pair's first-stage score as text, for templates that show it."""
        if self.passages is not None:
            return self._windows(queries, documents, scores)
        return self.collate(
            self.template.encode(
                self.tokenizer,
                queries,
                documents,
                self.max_length,
                self.max_query_length,
                scores,
                self.excerpt,
            )
        )

    def _windows(self, queries: list[str], documents: list[str], scores: list[str] | None) -> CollatedBatch:
        """One row a window; with several windows a document, ``passage_owner`` maps rows to pairs."""
        windows = self.template.encode_windows(
            self.tokenizer, queries, documents, self.max_length, self.max_query_length, self.passages, scores
        )
        batch = self.collate([w for pair in windows for w in pair])
        if self.passages.mode != "firstp":
            owner = [i for i, pair in enumerate(windows) for _ in pair]
            batch["passage_owner"] = torch.tensor(owner, dtype=torch.long)
            batch["passage_mode"] = self.passages.mode
        return batch

    def collate(self, encoded: list[EncodedPair]) -> CollatedBatch:
        """Pad (and bucket) already encoded pairs; benchmarks feed synthetic token ids through here."""
        n = len(encoded)
        buckets = min(max(self.length_buckets, 1), n)
        if self.packing:
            batch = pack(encoded, self.max_length, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        elif buckets == 1:
            batch = self._pad(encoded)
        else:
            order = sorted(range(n), key=lambda i: len(encoded[i].input_ids))
            bounds = [round(k * n / buckets) for k in range(buckets + 1)]
            batch = {"buckets": []}
            for lo, hi in itertools.pairwise(bounds):
                rows = order[lo:hi]
                part = self._pad([encoded[i] for i in rows])
                part["rows"] = torch.tensor(rows, dtype=torch.long)
                batch["buckets"].append(part)
        parts = batch.get("buckets", [batch])
        batch["real_tokens"] = sum(int(p["attention_mask"].sum()) for p in parts)
        batch["padded_tokens"] = sum(p["input_ids"].numel() for p in parts)
        batch["num_sequences"] = n
        return batch

    def _pad(self, encoded: list[EncodedPair]) -> PaddedRows:
        longest = max(len(e.input_ids) for e in encoded)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(encoded)
        input_ids = torch.full((n, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        with_types = encoded[0].token_type_ids is not None
        token_type_ids = torch.zeros((n, longest), dtype=torch.long) if with_types else None
        for i, e in enumerate(encoded):
            length = len(e.input_ids)
            input_ids[i, :length] = torch.tensor(e.input_ids)
            attention_mask[i, :length] = 1
            if token_type_ids is not None:
                token_type_ids[i, :length] = torch.tensor(e.token_type_ids)
        out: PaddedRows = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            out["token_type_ids"] = token_type_ids
        return out
