"""lightning-rank: cross-encoder rerankers on pluggable backbones, trained and evaluated with Lightning."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Lazy: `lightning-rank` checks its command line before torch and Lightning are imported (seconds).
_LAZY = {
    "RerankerModule": "lightning_rank.reranker.module",
    "RerankDataModule": "lightning_rank.datamodules",
    "Backbone": "lightning_rank.backbones.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_rank' has no attribute {name!r}")


__all__ = ["Backbone", "RerankDataModule", "RerankerModule", "__version__"]
