"""How training rendered (query, document) pairs, kept with checkpoints and exports.

A cross-encoder scores best on input shaped as in training: the same token budget per pair and per query, the
same part of a long document (``data.excerpt``) and the same windows of it (``data.passages``). These are
data-module settings, so without this record a model scored outside the trainer (``RerankerModule.score``,
an export) would silently read its input differently, e.g. the first 256 tokens where it was trained on
128-token query-biased excerpts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lightning_rank.errors import ConfigError
from lightning_rank.text.excerpts import Excerpt, check_excerpt
from lightning_rank.text.passages import Passages


@dataclasses.dataclass(frozen=True)
class InputFormat:
    """The data settings that shape a pair's tokens; the defaults are ``RerankDataModule``'s."""

    max_length: int = 256
    max_query_length: int = 64
    excerpt: Excerpt = "first"
    passages: Passages | None = None

    def __post_init__(self) -> None:
        check_excerpt(self.excerpt)
        object.__setattr__(self, "passages", Passages.of(self.passages))  # a dict from a checkpoint
        check_passages(self.excerpt, self.passages)
        for name in ("max_length", "max_query_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"input format: {name} must be a positive integer, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> InputFormat | None:
        """The format named by a data module's hyper-parameters; None where they name none of its fields
        (another data module, or a checkpoint written without one)."""
        names = [field.name for field in dataclasses.fields(cls)]
        if not settings or not any(name in settings for name in names):
            return None
        return cls(**{name: settings[name] for name in names if name in settings})

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints (``weights_only`` loading) and export manifests; ``passages`` only
        when set, so a fit without windows records what it did before they existed."""
        values = dataclasses.asdict(self)
        if values["passages"] is None:
            del values["passages"]
        return values

    def differences(self, other: InputFormat) -> list[str]:
        """``data.<name>: <self> -> <other>`` for each setting that differs."""
        return [
            f"data.{field.name}: {getattr(self, field.name)!r} -> {getattr(other, field.name)!r}"
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(other, field.name)
        ]


def check_passages(excerpt: str, passages: Passages | None) -> None:
    """Refuse windows of a query-biased excerpt: each reads a different part of a long document."""
    if passages is not None and excerpt != "first":
        raise ConfigError(
            f"data.passages and data.excerpt {excerpt!r} each choose which part of a long document is read: "
            "set data.excerpt: first to score windows, or drop data.passages to read an excerpt"
        )
