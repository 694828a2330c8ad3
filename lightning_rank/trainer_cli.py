"""LightningRankCLI: LightningCLI with our module, datamodule, profiler and progress bar wired in."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_rank.callbacks import RankProgressBar, TokensPerSecond, TrecRunWriter
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.module import RerankerModule


class LightningRankCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with LightningCLI conventions (``--config``, dotted
    overrides, ``--print_config``), a tokens/sec profiler always on, and optional validation runs before
    and after ``fit`` so the effect of training is visible in one command."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(
            RerankerModule,
            RerankDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf"},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TokensPerSecond, "tokens_per_sec")
        parser.add_lightning_class_args(TrecRunWriter, "run_writer")
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=False,
            help="fit only: run validation before training, to show the starting point",
        )
        parser.add_argument(
            "--validate_after_fit",
            type=bool,
            default=False,
            help="fit only: run validation once more after training and print the table",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """LightningCLI's trainer, plus a rich progress bar unless the user disabled or chose one."""
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        chosen = [*(trainer_config.get("callbacks") or []), *extra]
        wants_bar = trainer_config.get("enable_progress_bar", True) is not False
        if wants_bar and not any(isinstance(c, ProgressBar) for c in chosen):
            extra.append(RankProgressBar(leave=True))
        return self._instantiate_trainer(trainer_config, extra)

    def _flag(self, name: str) -> bool:
        return bool(self.config[self.subcommand].get(name, False))

    def before_fit(self) -> None:
        if self._flag("validate_before_fit"):
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=True)

    def after_fit(self) -> None:
        if self._flag("validate_after_fit") and not self.trainer.interrupted:
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=True)


def run_trainer_cli(args: Sequence[str]) -> LightningRankCLI:
    logging.getLogger("ir_datasets").setLevel(logging.WARNING)
    return LightningRankCLI(args=list(args))
