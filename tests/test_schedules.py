"""Learning-rate schedules through transformers.get_scheduler (model.scheduler); the default is unchanged."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers import DEMO

from lightning_rank.cli import main
from lightning_rank.reranker.optim import warmup_schedule


def _lrs(warmup: float, total: int, scheduler: str = "linear") -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_schedule(optimizer, warmup, total, scheduler)["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def _before(warmup_steps: int, total: int, step: int) -> float:
    """The hand-written linear warm-up/decay the default schedule replaced."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total - step) / max(1, total - warmup_steps))


@pytest.mark.parametrize(("warmup", "total"), [(0.1, 50), (0.0, 7), (3, 10), (12, 10), (0.5, 1)])
def test_the_default_linear_schedule_is_the_one_before(warmup, total):
    steps = int(warmup * total) if warmup < 1 else int(warmup)
    assert _lrs(warmup, total) == [_before(steps, total, s) for s in range(total)]


def test_cosine_follows_its_closed_form():
    assert _lrs(0.0, 10, "cosine") == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)]
    )
    assert _lrs(2, 6, "constant_with_warmup") == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--model.scheduler", "reduce_lr_on_plateau"], "is not a schedule of transformers.get_scheduler"),
        (
            ["--model.scheduler", "cosine", "--model.scheduler_args", "{power: 2}"],
            "do not fit model.scheduler",
        ),
    ],
)
def test_a_schedule_that_cannot_run_is_refused_at_configuration(options, says, capsys):
    assert main(["fit", "--config", DEMO, *options, "--trainer.max_steps", "1"]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.slow
def test_a_fit_logs_the_lr_of_each_step(tmp_path):
    root = tmp_path / "fit"
    code = main([
        "fit", "--config", DEMO, "--validate_before_fit", "false", "--validate_after_fit", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.limit_train_batches", "4",
        "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", "--data.val_dataset", "null",
        "--model.warmup", "2", "--trainer.default_root_dir", str(root),
    ])  # fmt: skip
    assert code == 0

    (metrics,) = root.rglob("metrics.csv")
    logged = [float(r["train/lr"]) for r in csv.DictReader(metrics.open()) if r.get("train/lr")]
    assert logged == pytest.approx([0.001 * _before(2, 4, s) for s in range(4)])
