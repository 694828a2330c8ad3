"""Callbacks: tokens/sec profiler, TREC run writer, progress bar."""

from lightning_rank.callbacks.progress import RankProgressBar
from lightning_rank.callbacks.run_writer import TrecRunWriter
from lightning_rank.callbacks.throughput import TokensPerSecond

__all__ = ["RankProgressBar", "TokensPerSecond", "TrecRunWriter"]
