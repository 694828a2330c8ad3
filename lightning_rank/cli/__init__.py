"""The `lightning-rank` command line: dispatch, pre-flight checks, the LightningCLI trainer."""

from lightning_rank.cli.dispatch import main

__all__ = ["main"]
