"""Callbacks: tokens/sec profiler, TREC run writer, progress bar, stop on SIGTERM."""

from lightning_rank.callbacks.progress import RankProgressBar
from lightning_rank.callbacks.run_writer import TrecRunWriter
from lightning_rank.callbacks.sigterm import StopOnSigterm, StoppedBySigterm
from lightning_rank.callbacks.throughput import TokensPerSecond

__all__ = ["RankProgressBar", "StopOnSigterm", "StoppedBySigterm", "TokensPerSecond", "TrecRunWriter"]
