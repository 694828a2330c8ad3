"""A backbone that fails on purpose, to test how training reacts (named by path: tests.faulty_backbones)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_rank.backbones.mamba import Mamba1Backbone


class FaultyMamba(Mamba1Backbone):
    """Mamba-1 whose ``fail_at``-th training forward pass returns NaN states or raises CUDA out-of-memory."""

    def __init__(self, fail_at: int = 1, failure: Literal["nan", "oom"] = "nan", **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_at, self.failure, self.calls = fail_at, failure, 0

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        hidden = super().forward(input_ids, attention_mask, token_type_ids)
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.fail_at:
                if self.failure == "oom":
                    raise torch.OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"
                    )
                return hidden * float("nan")
        return hidden
