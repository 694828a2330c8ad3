"""``lightning-rank report``: a fit's logged curves as PNG plots and an HTML page that shows them with the
fit's config.

It reads the CSV logger's ``metrics.csv`` (the logger ``lightning-rank fit`` writes unless the config names
another; TensorBoard and W&B runs are read by their own tools) and draws one plot per group of curves it
holds: training loss, validation metrics, tokens/sec (real and padded) and learning rate, over steps.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_rank.datamodules.collections import load_judgements, register_local
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import ConfigError, DataError, ModelNotFoundError, OutputError
from lightning_rank.metrics import evaluate

PAGE = "index.html"
PER_QUERY = "per_query.png"
MARK = "<title>lightning-rank report</title>"  # in every page the report writes: what marks a folder as ours


@dataclass(frozen=True)
class Panel:
    """One plot: its file name, title, y label and which logged columns it draws."""

    name: str
    title: str
    ylabel: str
    takes: Callable[[str], bool]


PANELS = (
    Panel("loss", "Training loss", "loss", lambda c: c.startswith("train/loss")),
    Panel(
        "validation", "Validation metrics", "value", lambda c: c.startswith("val/") and "_per_sec" not in c
    ),
    Panel(
        "throughput",
        "Throughput (real and padded tokens)",
        "tokens/s",
        lambda c: c.endswith("tokens_per_sec"),
    ),
    Panel("learning_rate", "Learning rate", "lr", lambda c: c == "train/lr" or c.startswith("lr-")),
)


def report(
    run_dir: str,
    output: str | None = None,
    run: str | None = None,
    baseline: str | None = None,
    qrels: str | None = None,
    measure: str = "nDCG@10",
    local_collections: dict[str, Any] | None = None,
) -> Path:
    """Plot the curves a fit logged under ``run_dir`` and write an HTML page of them; returns the page.

    Args:
        run_dir: the fit's ``trainer.default_root_dir`` (its newest ``metrics.csv`` is read), a logger
            version folder, or a ``metrics.csv`` file.
        output: folder for the PNGs and ``index.html`` (default: ``<run_dir>/report``): a new or empty
            folder, or an earlier report, which is replaced; any other folder is refused before anything is
            written.
        run: a run file (e.g. the fit's reranked test run) to plot per query against ``baseline``.
        baseline: the run it is compared with (e.g. the first-stage run it reranked).
        qrels: a qrels file or dataset id judging both runs' queries (trec_eval -c: a judged query
            without candidates scores 0).
        measure: the per-query measure of that plot.
        local_collections: ``{name: folder or files}`` collections to register first (see README).
    """
    if (run is None) != (baseline is None) or (run is not None and qrels is None):
        raise ConfigError(
            "--run, --baseline and --qrels go together: the per-query plot compares --run with --baseline "
            "on --qrels"
        )
    for name, source in (local_collections or {}).items():
        register_local(name, source)
    metrics = find_metrics(Path(run_dir))
    series = read_series(metrics)
    drawn = [(panel, cols) for panel in PANELS if (cols := [c for c in series if panel.takes(c)])]
    if not drawn:
        raise DataError(
            f"{metrics}: no curve to plot (columns: {', '.join(series) or 'none'}); it should hold "
            "train/loss, val/* or train/tokens_per_sec, as lightning-rank fit logs them"
        )
    folder = check_report_target(Path(output) if output else metrics_root(Path(run_dir)) / "report")
    folder.mkdir(parents=True, exist_ok=True)
    images = [
        draw(panel, {c: series[c] for c in cols}, folder / f"{panel.name}.png") for panel, cols in drawn
    ]
    if run is not None and baseline is not None and qrels is not None:
        images.append(draw_per_query(run, baseline, qrels, measure, folder / PER_QUERY))
    page = folder / PAGE
    page.write_text(render_page(metrics, images, find_config(metrics)), encoding="utf-8")
    print(f"wrote {len(images)} plots of {metrics} and {page}")
    return page


def check_report_target(folder: Path) -> Path:
    """``folder`` when a report may be written there: absent, empty, or an earlier report (its page is
    ours and it holds nothing else than a report writes); anything else is an :class:`OutputError`."""
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise OutputError(f"--output {folder} is a file; pass a folder for the plots")
    names = {p.name for p in folder.iterdir()}
    ours = {PAGE, PER_QUERY, *(f"{panel.name}.png" for panel in PANELS)}
    page = folder / PAGE
    if names and not (names <= ours and page.is_file() and MARK in page.read_text(errors="replace")):
        shown = ", ".join(sorted(names)[:5])
        raise OutputError(
            f"--output {folder} is not an earlier report (it holds {shown}) and is never replaced; pass a "
            "new or empty folder"
        )
    return folder


def metrics_root(path: Path) -> Path:
    return path.parent if path.is_file() else path


def find_metrics(path: Path) -> Path:
    """``path`` itself when it is a file, else the newest ``metrics.csv`` below it."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} does not exist; pass the fit's trainer.default_root_dir")
    found = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        events = next(path.rglob("events.out.tfevents.*"), None)
        hint = (
            f" This run was logged to TensorBoard ({events.parent}): Lightning picks it when tensorboard is "
            "installed. Read it with `tensorboard --logdir`, or log to CSV with trainer.logger: "
            "{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: DIR}}"
            if events is not None
            else ""
        )
        raise DataError(
            f"{path}: no metrics.csv below it. `lightning-rank report` reads the CSV logger's file, which "
            f"fit writes by default; a run logged to TensorBoard or W&B is read by those tools.{hint}"
        )
    return found[-1]


def read_series(metrics: Path) -> dict[str, list[tuple[float, float]]]:
    """Each logged column's ``(step, value)`` points, in the file's order (empty cells skipped)."""
    series: dict[str, list[tuple[float, float]]] = {}
    with metrics.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise DataError(f"{metrics}: not a Lightning CSV logger file (no 'step' column in its header)")
        for row in reader:
            step = _number(row.get("step"))
            if step is None:
                continue
            for column, cell in row.items():
                value = _number(cell)
                if column not in ("step", "epoch") and value is not None:
                    series.setdefault(column, []).append((step, value))
    return series


def _number(cell: str | None) -> float | None:
    try:
        value = float(cell) if cell not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def draw(panel: Panel, curves: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    """One PNG of ``curves`` over steps (markers where a curve has few points, as validation has)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for column, points in sorted(curves.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="o" if len(points) <= 20 else None, label=column)
    axes.set(title=panel.title, xlabel="step", ylabel=panel.ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def per_query_gains(run: str, baseline: str, qrels: str, measure: str) -> list[float]:
    """``measure`` of ``run`` minus ``baseline``'s for every judged query (trec_eval -c), highest first."""
    judged = load_judgements(qrels)
    values = [evaluate(read_trec_run(path), judged, [measure]).per_query[measure] for path in (run, baseline)]
    return sorted((values[0].get(q, 0.0) - values[1].get(q, 0.0) for q in judged), reverse=True)


def draw_per_query(run: str, baseline: str, qrels: str, measure: str, path: Path) -> Path:
    """Bars of each query's gain of ``run`` over ``baseline``, sorted: wins left, losses right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = per_query_gains(run, baseline, qrels, measure)
    wins, losses = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.bar(range(len(gains)), gains, width=1.0, color=["tab:green" if g > 0 else "tab:red" for g in gains])
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set(
        title=f"{Path(run).name} vs {Path(baseline).name}: {wins} better, {losses} worse, "
        f"{len(gains) - wins - losses} tied",
        xlabel=f"{len(gains)} judged queries, sorted by gain",
        ylabel=f"{measure} difference",
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def find_config(metrics: Path) -> Path | None:
    """The fit's saved ``config.yaml`` (LightningCLI writes it beside the logger's files), if any."""
    for folder in (metrics.parent, *metrics.parents[:3]):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def render_page(metrics: Path, images: list[Path], config: Path | None) -> str:
    """The HTML page: every plot (by relative file name) and the config's text, escaped."""
    figures = "\n".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></figure>' for p in images
    )
    shown = "<p>No config.yaml was found beside the logs.</p>"
    if config is not None:
        text = html.escape(config.read_text(encoding="utf-8"))
        shown = f"<h2>Config ({html.escape(str(config))})</h2>\n<pre>{text}</pre>"
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8">{MARK}</head><body>\n'
        f"<h1>lightning-rank report</h1>\n<p>Curves of {html.escape(str(metrics))}</p>\n{figures}\n{shown}\n"
        "</body></html>\n"
    )
