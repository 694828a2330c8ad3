"""LightningRankCLI: LightningCLI with our module, datamodule, profiler and progress bar wired in."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn

from lightning_rank.callbacks import RankProgressBar, TokensPerSecond, TrecRunWriter
from lightning_rank.callbacks.sigterm import StopOnSignal
from lightning_rank.cli.checkpointing import best_checkpoint, last_checkpoint, monitored_metric
from lightning_rank.cli.eval_table import eval_metrics, print_eval_table
from lightning_rank.cli.folder_lock import lock_checkpoint_folder
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.datamodules.compatibility import check_model_fits_data
from lightning_rank.errors import ConfigError, CudaGraphError, NonFiniteLossError
from lightning_rank.reranker.checkpoints import (
    is_url,
    missing_best,
    named_checkpoint,
    read_checkpoint,
    settle_model_settings,
)
from lightning_rank.reranker.cuda_graphs import check_cuda_graphs
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.runs import check_replaceable, write_metrics_file, write_per_query

OOM_HINT = (
    "out of GPU memory. Knobs, roughly in order: a smaller --data.batch_size (groups per step) or "
    "--data.group_size, a shorter --data.max_length, --data.length_buckets 4 (less padding), "
    "--model.backbone_args.gradient_checkpointing true, --trainer.precision bf16-mixed, "
    "--trainer.accumulate_grad_batches N to keep the effective batch, or sharding with "
    "--config configs/strategy/fsdp.yaml"
)


class LightningRankCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with LightningCLI conventions (``--config``, dotted
    overrides, ``--print_config``), a tokens/sec profiler always on, and optional validation runs before
    and after ``fit`` so the effect of training is visible in one command."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        self._argv = list(args or [])
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
            "--checkpoint_every_n_steps",
            type=int,
            default=0,
            help="fit: also checkpoint every N optimizer steps (0: at epoch ends); "
            "<default_root_dir>/checkpoints/last.ckpt is always the latest, so after a crash "
            "`--ckpt_path last` resumes exactly (weights, optimizer, schedule, RNG and data stream)",
        )
        parser.add_argument(
            "--checkpoint_monitor",
            type=str | None,
            default=None,
            help="fit: the validation metric <default_root_dir>/checkpoints/best.ckpt is chosen by (highest "
            "wins), e.g. val/nDCG@10 or val/<set name>/RR@10 of data.val_datasets; default: the first "
            "measure of the first validation set. `--ckpt_path best` then uses it",
        )
        parser.add_argument(
            "--metrics_file",
            type=str | None,
            default=None,
            help="validate/test (and fit with --validate_after_fit): write the final metrics to this JSON "
            "file (atomically: a failed write leaves an existing file as it was)",
        )
        parser.add_argument(
            "--per_query_file",
            type=str | None,
            default=None,
            help="validate/test (and fit with --validate_after_fit): write every query's value of every "
            "measure to this TSV file (set, query, measure, value; the queries the metrics average over), "
            "for `lightning-rank compare --per_query`",
        )
        parser.add_argument(
            "--validate_after_fit",
            type=bool,
            default=False,
            help="fit only: run validation once more after training and print the table",
        )

    def before_instantiate_classes(self) -> None:
        """An output that must not be replaced (``--metrics_file``, predict's ``--run_writer.output``) is
        refused before the model, the data or a checkpoint is loaded."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("metrics_file"):
            check_replaceable(config["metrics_file"], "metrics", option="--metrics_file")
        if config.get("per_query_file"):
            check_replaceable(config["per_query_file"], "per_query", option="--per_query_file")
        output = (config.get("run_writer") or {}).get("output")
        if self.subcommand == "predict" and output:
            check_replaceable(output, "run", option="--run_writer.output")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        """Every subcommand reads checkpoints with ``weights_only=True`` (no pickled code), from files and
        URLs alike (Lightning's default for a URL is False); ``--weights_only false`` is the user's own
        choice for a checkpoint they trust."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.set_defaults(weights_only=True)
        return parser

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` (a file, a URL, or ``last`` / ``best`` in our checkpoint folder) safely and
        build the
        model with its settings, except those the user gave: sound ones win with a warning naming each
        difference, unsound ones are refused (:func:`settle_model_settings`). Lightning's own version
        silently replaced every ``--model.*`` the user gave by the checkpoint's."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        shown = config.get("ckpt_path")
        path = self._our_checkpoint(config, "last") if shown == "last" else shown
        if shown == "best" and self._uses_our_checkpoints(config):
            path = self._our_best_checkpoint(config, subcommand)
            config["ckpt_path"] = path  # Lightning's own "best" is the best of this process's fit only
        if not path or path in ("best", "last", "hpc") or str(path).startswith("registry:"):
            return
        if not is_url(path) and os.path.isdir(path):
            return  # a sharded checkpoint (FSDP): its strategy reads it
        checkpoint = read_checkpoint(str(path), weights_only=config.get("weights_only") is not False)
        saved = checkpoint.get("hyper_parameters") or {}
        if not saved:
            return
        explicit = self.parser.parse_args(self._argv, defaults=False)[subcommand].get("model")
        given = explicit.as_dict() if explicit is not None else {}
        settings, notes = settle_model_settings(saved, given, subcommand, shown=str(shown))
        if notes:
            rank_zero_warn(
                f"--ckpt_path {shown}: your model settings differ from the checkpoint's: {'; '.join(notes)}"
            )
        try:
            self.config = self.parser.parse_object({subcommand: {"model": settings}}, self.config)
        except SystemExit:
            sys.stderr.write(f"error: --ckpt_path {shown}: its model settings do not parse (see above)\n")
            raise

    @staticmethod
    def _uses_our_checkpoints(config: Any) -> bool:
        """Whether our default checkpoint callbacks are in use (not off, and no ModelCheckpoint of the user's:
        theirs find their own ``last``, through Lightning, after the model is built)."""
        trainer = config.get("trainer") or {}
        chosen = trainer.get("callbacks") or []
        return trainer.get("enable_checkpointing") is not False and not any(
            "ModelCheckpoint" in str(getattr(c, "class_path", c)) for c in chosen
        )

    def _our_checkpoint(self, config: Any, name: str) -> str | None:
        """``last.ckpt`` or ``best.ckpt`` in our checkpoint folder, if it is in use and holds one."""
        if not self._uses_our_checkpoints(config):
            return None
        path = named_checkpoint((config.get("trainer") or {}).get("default_root_dir") or os.getcwd(), name)
        return str(path) if path.is_file() else None

    def _our_best_checkpoint(self, config: Any, subcommand: str) -> str:
        """``best.ckpt`` for validate/test/predict; its absence is explained (a fit without validation)."""
        if subcommand == "fit":
            raise ConfigError(
                "--ckpt_path best: fit resumes from where training stopped, not from its best validation: "
                "use --ckpt_path last (best.ckpt is for validate, test, predict and export)"
            )
        path = self._our_checkpoint(config, "best")
        if path is None:
            root = (config.get("trainer") or {}).get("default_root_dir") or os.getcwd()
            raise missing_best(named_checkpoint(root, "best").parent, subcommand)
        return path

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """LightningCLI's trainer, plus a rich progress bar, a resumable checkpoint callback and a stop at the
        next batch on SIGTERM, unless the user disabled or chose their own."""
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        chosen = [*(trainer_config.get("callbacks") or []), *extra]
        wants_bar = trainer_config.get("enable_progress_bar", True) is not False
        if wants_bar and not any(isinstance(c, ProgressBar) for c in chosen):
            extra.append(RankProgressBar(leave=True))
        if not any(isinstance(c, StopOnSignal) for c in chosen):
            extra.append(StopOnSignal())
        wants_checkpoints = trainer_config.get("enable_checkpointing", True) is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in chosen):
            extra += self._default_checkpoints(trainer_config)
        return self._instantiate_trainer(trainer_config, extra)

    def _default_checkpoints(self, trainer_config: dict[str, Any]) -> list[ModelCheckpoint]:
        """``last.ckpt`` (and the periodic checkpoints) for ``--ckpt_path last``; in a fit that validates,
        ``best.ckpt`` by ``--checkpoint_monitor`` (:mod:`.checkpointing`)."""
        root = trainer_config.get("default_root_dir")
        every = self._get(self.config_init, "checkpoint_every_n_steps", default=0) or 0
        callbacks = [last_checkpoint(root, every)]
        if self.subcommand != "fit":
            return callbacks
        validates = trainer_config.get("limit_val_batches") not in (0, 0.0)
        sets = [s.name for s in self.datamodule.eval_sets("val")] if validates else []
        chosen = self._get(self.config_init, "checkpoint_monitor", default=None)
        monitor = monitored_metric(chosen, self.model.measures, sets, self.datamodule.logs_by_name("val"))
        if monitor is not None:
            callbacks.append(best_checkpoint(root, monitor))
        return callbacks

    def _flag(self, name: str) -> bool:
        return bool(self.config[self.subcommand].get(name, False))

    def _check_model_fits_data(self) -> None:
        """Every model x data rule (``datamodules/compatibility.py``), in a second and before any data is
        read, not at the first step after minutes of reading (``RerankDataModule.setup`` checks again)."""
        data = getattr(self.datamodule, "hparams", None)
        if data is not None:
            check_model_fits_data(self.model, data, self.subcommand)

    def _check_ckpt_path_last(self) -> None:
        """``--ckpt_path last`` with no checkpoint: validate/test/predict refuse (Lightning would score an
        untrained model); fit says it on one line and starts from scratch. A warning, not a refusal, for fit:
        preemptible jobs are started with ``--ckpt_path last`` from their first run on, as Lightning means
        it to be set and forgotten."""
        if self.config[self.subcommand].get("ckpt_path") != "last":
            return
        callbacks = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        if any(c._find_last_checkpoints(self.trainer) for c in callbacks):
            return
        folders = sorted({str(c.dirpath) for c in callbacks if c.dirpath}) or ["(checkpointing is off)"]
        where = ", ".join(folders)
        if self.subcommand != "fit":
            raise ConfigError(
                f"--ckpt_path last: no checkpoint under {where} (looked for last*.ckpt), so there is no "
                f"trained model to {self.subcommand}: train one with `lightning-rank fit` and the same "
                "--trainer.default_root_dir, or pass --ckpt_path FILE"
            )
        if rank_zero_only.rank == 0:
            print(
                f"warning: --ckpt_path last: no checkpoint under {where}: starting from scratch",
                file=sys.stderr,
            )
        if self.subcommand in self.config_init:  # Lightning's own, longer warning is moot
            self.config_init[self.subcommand]["ckpt_path"] = None

    def _before_evaluation(self) -> None:
        self._check_ckpt_path_last()
        self._check_model_fits_data()
        stage = {"validate": "val", "test": "test"}.get(self.subcommand or "")
        if stage and self._several_sets(stage):
            self.config_init[self.subcommand]["verbose"] = False

    before_validate = before_test = before_predict = _before_evaluation

    def _lock_checkpoint_folders(self) -> None:
        """One fit per checkpoint folder (``folder_lock``), taken by rank 0 before anything runs."""
        if rank_zero_only.rank != 0:
            return
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                lock_checkpoint_folder(callback.dirpath)

    def before_fit(self) -> None:
        self._lock_checkpoint_folders()
        self._check_ckpt_path_last()
        self._check_model_fits_data()
        if self.model.hparams.get("cuda_graphs"):  # before any data is read or model moved
            check_cuda_graphs(self.trainer.strategy.root_device, self.trainer.strategy)
        if self._flag("validate_before_fit"):
            if isinstance(self.trainer.strategy, FSDPStrategy):
                # validate() then fit() sets the model up twice; the second setup keeps the block units but
                # drops the root unit, and the first checkpoint then fails deep inside FSDP.
                rank_zero_warn(
                    "--validate_before_fit is skipped under FSDP (a second model setup breaks FSDP "
                    "checkpoints): run `lightning-rank validate` with the same configs first instead"
                )
                return
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=True)

    def after_fit(self) -> None:
        self._say_if_no_best()
        if self._flag("validate_after_fit") and not self.trainer.interrupted:
            self.trainer.validate(
                self.model, datamodule=self.datamodule, verbose=not self._several_sets("val")
            )
            self._after_evaluation("val")

    def _say_if_no_best(self) -> None:
        """A fit with a validation set that never validated (it stopped first) has no best.ckpt: say so."""
        if self.trainer.global_rank != 0:
            return
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor and not callback.best_model_path:
                print(
                    f"note: no validation ran in this fit, so {callback.dirpath} holds no best.ckpt "
                    "(only last.ckpt); validate more often (--trainer.val_check_interval N) to keep one",
                    file=sys.stderr,
                )

    def _several_sets(self, stage: str) -> bool:
        """Whether ``stage`` evaluates several sets (its table replaces Lightning's, which would list every
        set's metrics under every dataloader)."""
        data = self.datamodule
        return (
            isinstance(data, RerankDataModule) and len(data.eval_sets(stage)) > 1 and data.logs_by_name(stage)
        )

    def after_validate(self) -> None:
        self._after_evaluation("val")

    def after_test(self) -> None:
        self._after_evaluation("test")

    def _after_evaluation(self, stage: str) -> None:
        """The table of every set's metrics (with several sets) and ``--metrics_file`` with all of them."""
        if self.trainer.global_rank != 0:
            return
        metrics = eval_metrics(self.trainer.callback_metrics, stage)
        if self._several_sets(stage):
            sets = self.datamodule.eval_sets(stage)
            evaluations = self.model.evaluations.get(stage, {})
            left = {"all": "unranked, scored 0", "ranked": "unranked, left out"}
            queries = {
                n: f"{e.queries} ({e.unranked} {left[e.judged_queries]})" for n, e in evaluations.items()
            }
            print_eval_table(metrics, stage, [s.name for s in sets], self.model.measures, queries)
        path = self.config[self.subcommand].get("metrics_file")
        if path:
            write_metrics_file(path, metrics)
        per_query = self.config[self.subcommand].get("per_query_file")
        if per_query:
            rows = [
                (name, query, measure, value)
                for name, evaluation in self.model.evaluations.get(stage, {}).items()
                for measure, values in evaluation.per_query.items()
                for query, value in values.items()
            ]
            write_per_query(per_query, rows)


def run_trainer_cli(args: Sequence[str]) -> LightningRankCLI:
    """Run a trainer subcommand; a non-finite loss, an out-of-memory error or a CUDA graph that cannot run
    ends it with one clear message and exit status 1 (checkpoints already written are left as they are)."""
    logging.getLogger("ir_datasets").setLevel(logging.WARNING)
    # main() hands LightningCLI the argv it was started with: the "both args and sys.argv" warning is moot
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
    # The training stream's __len__ is exact per rank and worker (it shards itself), unlike the generic case
    # Lightning warns about.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    # validate/test/predict from best.ckpt have no use for the fit's best-checkpoint callback state
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`.*'monitor': 'val/")
    try:
        return LightningRankCLI(args=list(args))
    except (NonFiniteLossError, CudaGraphError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except torch.OutOfMemoryError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
        print(f"error: {first_line}\n{OOM_HINT}", file=sys.stderr)
        raise SystemExit(1) from None
