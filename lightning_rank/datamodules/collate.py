"""Turn (query, document) texts into a padded batch in the DataLoader workers, not in the training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lightning_rank.templates import PairTemplate


@dataclass
class PairCollator:
    """Render with the backbone's template, tokenize, right-pad to the longest pair of the batch (optionally
    to a multiple of ``pad_to_multiple_of``) and count real and padded tokens."""

    tokenizer: PreTrainedTokenizerBase
    template: PairTemplate
    max_length: int = 256
    max_query_length: int = 64
    pad_to_multiple_of: int | None = None

    def __call__(self, queries: list[str], documents: list[str]) -> dict:
        encoded = self.template.encode(
            self.tokenizer, queries, documents, self.max_length, self.max_query_length
        )
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
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "real_tokens": int(attention_mask.sum()),
            "padded_tokens": n * longest,
            "num_sequences": n,
        }
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return batch
