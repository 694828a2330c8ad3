"""Callbacks: tokens/sec profiler and TREC run writer."""

from lightning_rank.callbacks.run_writer import TrecRunWriter
from lightning_rank.callbacks.throughput import TokensPerSecond

__all__ = ["TokensPerSecond", "TrecRunWriter"]
