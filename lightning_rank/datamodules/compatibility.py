"""Model x data compatibility: every rule that a model's settings impose on the data settings, in one place.

The CLI checks them before any data is read (``cli/trainer.py``), ``RerankDataModule.setup`` checks them for
the Python API, and the collator checks the one rule it can see (packing x length buckets) through the same
function, so a rule is written, worded and tested once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_rank.errors import ConfigError

__all__ = ["PACKING_CONFLICT", "check_model_fits_data"]

PACKING_CONFLICT = (
    "model.cuda_graphs needs a fixed set of input shapes, which data.packing does not give: set one of "
    "them (graphs work with data.length_buckets and data.pad_to_multiple_of)"
)


def check_model_fits_data(model: Any | None, data: Mapping[str, Any], stage: str = "fit") -> None:
    """Raise :class:`ConfigError` naming the option to change where ``data`` cannot feed ``model``.

    ``model`` is duck-typed: its ``loss`` (``needs_teacher``, ``min_group_size``), its ``backbone``
    (``packing_unsupported()`` or ``forward_packed``) and its ``hparams`` (``cuda_graphs``) are read where
    present; None checks the data settings alone. ``data``: the data module's settings (its hyper-parameters);
    a rule whose option is absent is skipped. ``stage``: the rules of training (loss, CUDA graphs) apply to
    ``fit`` only."""
    _check_padding_options(data)
    if model is None:
        return
    if stage == "fit":
        _check_loss(getattr(model, "loss", None), data)
    _check_packing_support(getattr(model, "backbone", None), data)
    if stage == "fit":
        _check_cuda_graphs(getattr(model, "hparams", None) or {}, data)


def _check_padding_options(data: Mapping[str, Any]) -> None:
    """Packing and length buckets are two ways to avoid padding, one at a time."""
    if data.get("packing") and (data.get("length_buckets") or 1) > 1:
        raise ConfigError(
            "data.packing and data.length_buckets > 1 are two ways to avoid padding: set one "
            "(packing pads less; length buckets work with every backbone and with model.cuda_graphs)"
        )


def _check_loss(loss: Any, data: Mapping[str, Any]) -> None:
    """A distillation loss needs ``data.teacher_run``; a loss may need groups of a minimum size."""
    if loss is None or "teacher_run" not in data:
        return
    name = type(loss).__name__
    if getattr(loss, "needs_teacher", False) and not data.get("teacher_run"):
        raise ConfigError(
            f"model.loss {name} distils a teacher but data.teacher_run is not set: pass --data.teacher_run "
            "<TREC run scoring the training candidates> (e.g. `lightning-rank bm25` on the training queries, "
            "with --data.teacher_missing lowest for a truncated run), or pick a loss without a teacher"
        )
    needed = getattr(loss, "min_group_size", 1)
    if data.get("group_size", needed) < needed:
        raise ConfigError(
            f"model.loss {name} needs groups of at least {needed} documents, got data.group_size "
            f"{data['group_size']}: set --data.group_size {needed} or more"
        )


def _packing_unsupported(backbone: Any) -> str | None:
    """Why ``backbone`` cannot score packed rows, or None: its own answer, else whether it has the method."""
    unsupported = getattr(backbone, "packing_unsupported", None)
    if unsupported is not None:
        return unsupported()
    if callable(getattr(backbone, "forward_packed", None)):
        return None
    return f"{type(backbone).__name__} does not implement forward_packed"


def _check_packing_support(backbone: Any, data: Mapping[str, Any]) -> None:
    """With ``data.packing``, a backbone that cannot score packed rows is refused, naming why."""
    if backbone is None or not data.get("packing"):
        return
    if reason := _packing_unsupported(backbone):
        raise ConfigError(
            f"data.packing: {type(backbone).__name__} cannot score packed rows ({reason}); "
            "use data.length_buckets instead"
        )


def _check_cuda_graphs(hparams: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Training graphs replay fixed input shapes; packed batches change shape from batch to batch."""
    if hparams.get("cuda_graphs") and data.get("packing"):
        raise ConfigError(PACKING_CONFLICT)
