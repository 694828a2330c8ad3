"""lightning-rank: cross-encoder rerankers on pluggable backbones, trained and evaluated with Lightning."""

__version__ = "0.1.0"
