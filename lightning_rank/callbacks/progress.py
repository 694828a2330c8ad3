"""A rich progress bar that keeps the figures users watch readable in an 80-column terminal."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

SHORT_NAMES = {
    "train/loss": "loss",
    "train/tokens_per_sec": "tok/s",
}


class RankProgressBar(RichProgressBar):
    """RichProgressBar with short metric names (``tok/s``, ``nDCG@10``) and compact numbers."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        shown: dict[str, Any] = {}
        for key, value in items.items():
            if key in SHORT_NAMES:
                shown[SHORT_NAMES[key]] = _compact(value)
            elif key.startswith("val/") and "/" not in key[4:]:
                shown[key[4:]] = _compact(value)
            elif "/" not in key:  # other per-stage figures (padded tokens/s, ...) stay in the logger
                shown[key] = _compact(value)
        return shown


def _compact(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3f}"
