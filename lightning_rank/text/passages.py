"""Long documents as windows of tokens (``data.passages``): FirstP, MaxP, SumP, MeanP (Dai & Callan, 2019).

A cross-encoder reads ``max_length`` tokens per pair. With passages, a document is cut into windows of
``length`` tokens (default: all the query and template leave), each starting ``stride`` tokens after the last
(default: ``length``, no overlap), at most ``max_windows`` of them. Reranking scores every window and gives
the document the first, the highest, the sum or the mean of its windows' scores; training reads the first
window of each document (FirstP). ``firstp`` with the default length is plain truncation, token for token.
"""

from __future__ import annotations

import dataclasses
import zlib
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from lightning_rank.errors import ConfigError

Mode = Literal["firstp", "maxp", "sump", "meanp"]
MODES: tuple[str, ...] = get_args(Mode)
Training = Literal["first", "sampled"]
TRAININGS: tuple[str, ...] = get_args(Training)


@dataclasses.dataclass(frozen=True)
class Passages:
    """How a long document is split into windows and its windows' scores combined.

    Args:
        mode: ``firstp`` (the first window only), ``maxp`` (the best window), ``sump`` or ``meanp`` (all
            windows' scores summed or averaged).
        length: document tokens per window; default (and at most): what ``max_length`` leaves after the
            template and the query.
        stride: tokens from one window's start to the next; default ``length`` (no overlap). A window never
            skips tokens: where the query leaves fewer than ``stride`` tokens, windows follow each other.
        max_windows: most windows per document (its first ones); default all.
        training: the window training reads of each document: ``first`` (FirstP) or ``sampled`` (one of its
            windows, drawn per pair from a hash of its tokens: the same in every worker and after a resume).
    """

    mode: Mode = "firstp"
    length: int | None = None
    stride: int | None = None
    max_windows: int | None = None
    training: Training = "first"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"data.passages.mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name in ("length", "stride", "max_windows"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.passages.{name} must be a positive integer or null, got {value!r}")
        if self.training not in TRAININGS:
            raise ConfigError(
                f"data.passages.training {self.training!r} is not one of {', '.join(TRAININGS)}: the window "
                "training reads of each document"
            )
        if self.stride is not None and self.stride > (self.length or self.stride):
            raise ConfigError(
                f"data.passages.stride {self.stride} is longer than data.passages.length {self.length}: the "
                "tokens between windows would never be read. Set a stride of at most the length."
            )
        if self.stride is not None and self.length is None:
            raise ConfigError(
                "data.passages.stride needs data.passages.length (the window it steps over), e.g. "
                "{mode: maxp, length: 64, stride: 32}"
            )

    @classmethod
    def of(cls, value: Passages | Mapping[str, Any] | None) -> Passages | None:
        """A setting as jsonargparse, a checkpoint or a manifest gives it (a dataclass, a dict or None)."""
        if value is None or isinstance(value, Passages):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"data.passages must be a mapping such as {{mode: maxp}}, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(
                f"data.passages: unknown keys {unknown}; the keys are mode, length, stride, max_windows, "
                "training"
            )
        return cls(**value)

    @property
    def for_training(self) -> Passages:
        """One window a document, whatever the reranking mode: the first (FirstP), or a sampled one."""
        if self.training == "sampled":
            return SampledWindow(**{**dataclasses.asdict(self), "mode": "firstp"})
        return dataclasses.replace(self, mode="firstp", max_windows=1)

    @property
    def reads_whole_documents(self) -> bool:
        """Whether every token of a document may fall in a window (else only its first window's)."""
        return self.mode != "firstp" and self.max_windows is None

    def starts(self, tokens: int, budget: int, key: int = 0) -> tuple[int, list[int]]:
        """The window length and the start of each window of a ``tokens``-long document in ``budget``
        (``key``: a number of the pair, which a sampled window is drawn by)."""
        window = max(min(self.length or budget, budget), 0)
        if self.mode == "firstp" or window == 0:
            return window, [0]
        return window, self._all_starts(tokens, window)

    def _all_starts(self, tokens: int, window: int) -> list[int]:
        step = min(self.stride or window, window)
        starts = [0]
        while starts[-1] + window < tokens and (self.max_windows is None or len(starts) < self.max_windows):
            starts.append(starts[-1] + step)
        return starts

    def combine(self, scores: Tensor, owner: Tensor) -> Tensor:
        """Each document's score from its windows' (``owner``: the document of each window, in order)."""
        return combine_windows(self.mode, scores, owner)


@dataclasses.dataclass(frozen=True)
class SampledWindow(Passages):
    """Training's reading of ``training: sampled``: one window a document (one row a pair, as FirstP), the
    window drawn by the pair's key among all the windows the settings give."""

    @property
    def reads_whole_documents(self) -> bool:
        return self.max_windows is None

    def starts(self, tokens: int, budget: int, key: int = 0) -> tuple[int, list[int]]:
        window = max(min(self.length or budget, budget), 0)
        if window == 0:
            return window, [0]
        every = self._all_starts(tokens, window)
        return window, [every[key % len(every)]]

    def combine(self, scores: Tensor, owner: Tensor) -> Tensor:
        return scores


def pair_key(query_ids: Sequence[int], doc_ids: Sequence[int]) -> int:
    """A number of a (query, document) pair from its tokens, the same in every process (unlike ``hash``)."""
    return zlib.crc32(array("q", [*query_ids, -1, *doc_ids]).tobytes())


def combine_windows(mode: str, scores: Tensor, owner: Tensor) -> Tensor:
    """Per document, the first, highest, summed or mean score of its windows; ``owner``: each window's
    document (0, 0, 1, 2, 2, ...: every document has a window, in order)."""
    if mode not in MODES:
        raise ValueError(f"passage mode {mode!r} is not one of {', '.join(MODES)}")
    documents = int(owner[-1]) + 1
    if mode == "maxp":
        out = scores.new_full((documents,), float("-inf"))
        return out.scatter_reduce(0, owner, scores, reduce="amax", include_self=True)
    total = scores.new_zeros(documents).index_add(0, owner, scores)
    if mode == "sump":
        return total
    if mode == "meanp":
        return total / torch.bincount(owner, minlength=documents).to(scores.dtype)
    first = torch.ones_like(owner, dtype=torch.bool)
    first[1:] = owner[1:] != owner[:-1]
    return scores[first]
