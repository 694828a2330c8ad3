"""The evaluation sets of a stage: ``data.val_datasets`` / ``data.test_datasets`` (or the singular forms).

Each set is an ir_datasets id with its own first-stage run and a name that its metrics are logged under
(``val/<name>/nDCG@10``); the first set's metrics are also logged under the plain name (``val/nDCG@10``).
Checked at configuration, before any data is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_rank.errors import ConfigError

#: a set as configured: an id, or ``{dataset: id, run: file, name: label}`` (run and name optional)
EvalSetSpec = str | dict[str, str | None]
_KEYS = ("dataset", "run", "name")


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: what to rerank (``dataset``, ``run``) and the ``name`` its metrics carry."""

    name: str
    dataset: str
    run: str | None = None


def eval_sets(
    stage: str, dataset: str | None, run: str | None, datasets: Sequence[EvalSetSpec] | None
) -> list[EvalSet]:
    """The sets of ``stage`` from ``data.<stage>_dataset``/``_run`` or ``data.<stage>_datasets``; both at
    once are refused (which would come first is no one's guess)."""
    if datasets is None:
        return [EvalSet(dataset, dataset, run)] if dataset is not None else []
    if dataset is not None or run is not None:
        given = f"data.{stage}_dataset" if dataset is not None else f"data.{stage}_run"
        raise ConfigError(
            f"{given} and data.{stage}_datasets are both set: give the sets in one place, e.g. only "
            f"data.{stage}_datasets (its entries take a run each: {{dataset: ID, run: FILE}}), and set "
            f"{given} to null"
        )
    if isinstance(datasets, str) or not datasets:
        raise ConfigError(
            f"data.{stage}_datasets must be a non-empty list of ir_datasets ids or {{dataset: ID, run: FILE, "
            f"name: LABEL}} mappings; got {datasets!r}"
        )
    sets = [_one_set(stage, i, spec) for i, spec in enumerate(datasets)]
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"data.{stage}_datasets names {', '.join(twice)} more than once, so their metrics would share "
            f"one name: give each entry its own name, e.g. {{dataset: {twice[0]}, run: FILE, name: "
            f"{twice[0]}-dense}}"
        )
    return sets


def _one_set(stage: str, index: int, spec: Any) -> EvalSet:
    where = f"data.{stage}_datasets[{index}]"
    if isinstance(spec, str):
        return EvalSet(spec, spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where} must be an ir_datasets id or a mapping {{dataset, run, name}}; got {spec!r}"
        )
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(_KEYS)}")
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"{where} has no dataset: give its ir_datasets id, e.g. {{dataset: ID, run: FILE}}")
    return EvalSet(str(spec.get("name") or dataset), dataset, spec.get("run"))
