"""Write a run that a subcommand built and print what a user checks first: its size, its time, its metrics."""

from __future__ import annotations

import time

from lightning_rank.datamodules.collections import load_dataset
from lightning_rank.metrics import DEFAULT_MEASURES, JudgedQueries, evaluate
from lightning_rank.runs import Run, write_trec_run


def write_and_report(
    run: Run, output: str, dataset: str, tag: str, started: float, measures: list[str] | None = None,
    evaluated: Run | None = None, qrels: dict[str, dict[str, int]] | None = None,
    judged_queries: JudgedQueries = "all",
) -> dict[str, float]:  # fmt: skip
    """Write ``run`` (atomically, its folder created) and, when ``dataset`` has qrels, print and return the
    measures of ``evaluated`` (default: ``run``); ``started`` is the ``perf_counter`` the work began at.
    ``qrels``: the dataset's, where the caller has read them already; ``judged_queries``: which queries the
    averages are over (:func:`~lightning_rank.metrics.evaluate`), printed with them."""
    write_trec_run(run, output, tag=tag)
    entries = sum(len(v) for v in run.values())
    print(f"wrote {output}: {len(run)} queries, {entries} entries in {time.perf_counter() - started:.1f}s")
    ds = load_dataset(dataset)
    if not ds.has_qrels():
        return {}
    judged = run if evaluated is None else evaluated
    qrels = ds.qrels_dict() if qrels is None else qrels
    evaluation = evaluate(judged, qrels, measures or list(DEFAULT_MEASURES), judged_queries)
    print("  ".join(f"{m}={v:.4f}" for m, v in evaluation.values.items()) + f"  {evaluation.summary()}")
    return evaluation.values
