"""Write ``lightning-rank predict`` scores as a TREC run file (``qid Q0 docid rank score tag``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_rank.runs import check_replaceable, write_trec_run


class TrecRunWriter(BasePredictionWriter):
    """Collects every rank's (query, document, score) predictions and writes one run file from rank 0.

    The file is written atomically, so an interrupted predict never leaves a truncated run behind, and an
    existing file is only replaced once the new one is complete. An existing file that is not a run, or a
    folder, is refused at setup, before anything is scored.
    """

    def __init__(self, output: str | None = None, tag: str = "lightning-rank") -> None:
        """
        Args:
            output: run file to write; default ``<trainer.default_root_dir>/predict.trec``.
            tag: run tag (last column).
        """
        super().__init__(write_interval="epoch")
        self.output = output
        self.tag = tag
        self.written: Path | None = None

    def path(self, trainer: pl.Trainer) -> Path:
        """The run file this writer writes for ``trainer``."""
        return Path(self.output or Path(trainer.default_root_dir) / "predict.trec").expanduser()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict":
            check_replaceable(self.path(trainer), "run", option="--run_writer.output")

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        rows = _flatten(predictions)
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if not trainer.is_global_zero:
            return
        split = trainer.datamodule.eval_split("predict")
        run: dict[str, dict[str, float]] = {}
        for qi, di, score in rows:
            run.setdefault(split.query_ids[qi], {}).setdefault(split.doc_ids[di], score)
        path = self.path(trainer)
        write_trec_run(run, path, tag=self.tag)
        self.written = path
        print(f"wrote {path}: {len(run)} queries, {sum(len(d) for d in run.values())} entries")


def _flatten(predictions: Sequence[Any]) -> list[tuple[int, int, float]]:
    """Predict outputs (one list per dataloader, or one flat list) as (query index, doc index, score)."""
    if predictions and isinstance(predictions[0], list):
        predictions = [p for per_loader in predictions for p in per_loader]
    rows: list[tuple[int, int, float]] = []
    for out in predictions:
        scores = out["scores"].detach().float().cpu()
        q = out["query_index"].cpu().tolist()
        d = out["doc_index"].cpu().tolist()
        rows.extend(zip(q, d, scores.tolist(), strict=True))
    return rows
