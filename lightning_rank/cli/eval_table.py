"""The end of ``validate`` / ``test`` with several evaluation sets: one table, a row per set, a column per
measure, and the metrics ``--metrics_file`` writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def eval_metrics(logged: Mapping[str, Any], stage: str) -> dict[str, float]:
    """The measures ``stage`` logged (``<stage>/<measure>`` and ``<stage>/<set>/<measure>``) as floats."""
    return {k: float(v) for k, v in logged.items() if k.startswith(f"{stage}/") and "@" in k}


def print_eval_table(
    metrics: Mapping[str, float],
    stage: str,
    set_names: Sequence[str],
    measures: Sequence[str],
    queries: Mapping[str, str] | None = None,
) -> None:
    """Print each set's measures, in the configured order, and what they average over (``queries``: a set's
    count, e.g. ``300 (2 unranked)``); a measure a set did not log shows as ``-``."""
    counts = queries or {}
    rows = [
        [name, *(_shown(metrics.get(f"{stage}/{name}/{m}")) for m in measures), counts.get(name, "-")]
        for name in set_names
    ]
    header = [f"{stage} set", *measures, "queries"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if row is header:
            print(line)
    print(line)


def _shown(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
