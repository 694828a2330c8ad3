"""What Lightning costs: the demo's model and batches through a plain PyTorch loop and through the CLI's fit.

    python benchmarks/overhead.py [--steps 300] [--config configs/demo.yaml]

Both sides use the same config (model, data, optimizer settings), the same DataLoader (tokenization in the
loop's process, as num_workers=0) and count real tokens per second between batch ends after a warm-up. The
Lightning side is the real command, progress bar and profiler included. Target: ratio >= 0.90 on CPU.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_rank.cli.trainer import LightningRankCLI

REPO = Path(__file__).resolve().parents[1]


def cli(config: str, steps: int, root: Path, *extra: str, run: bool = True) -> LightningRankCLI:
    args = [
        "--config", config, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--validate_before_fit", "false", "--validate_after_fit", "false",
        "--trainer.default_root_dir", str(root), "--trainer.log_every_n_steps", "10",
        "--tokens_per_sec.window_size", "10", *extra,
    ]  # fmt: skip
    return LightningRankCLI(args=["fit", *args] if run else args, run=run)


def plain_loop(config: str, steps: int, warmup: int) -> float:
    """The same module, loader and optimizer settings, stepped by hand; real tokens/s after ``warmup``."""
    with tempfile.TemporaryDirectory() as tmp:
        built = cli(config, steps, Path(tmp), run=False)  # instantiate exactly what `fit` would
    torch.manual_seed(0)
    model, datamodule = built.model, built.datamodule
    datamodule.use_backbone(model.backbone)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader._epoch_fn, loader._shard_fn = (lambda: 0), (lambda: (0, 1))
    optimizer = model.default_optimizer()  # what configure_optimizers builds for `fit`
    model.train()
    tokens, start, step = 0, 0.0, 0
    while step < steps:
        for batch in loader:
            labels = batch["labels"]
            loss = model.loss(model(batch).view_as(labels), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup:
                start = time.perf_counter()
            elif step > warmup:
                tokens += batch["real_tokens"]
            if step >= steps:
                break
    return tokens / (time.perf_counter() - start)


def lightning_fit(config: str, steps: int, warmup: int) -> float:
    """`lightning-rank fit` itself; the profiler's logged real tokens/s, windows after ``warmup``."""
    with tempfile.TemporaryDirectory() as tmp:
        cli(config, steps, Path(tmp), "--tokens_per_sec.warmup_steps", str(warmup))
        (metrics,) = Path(tmp).rglob("metrics.csv")
        with metrics.open() as f:
            rates = [
                float(r["train/tokens_per_sec"]) for r in csv.DictReader(f) if r.get("train/tokens_per_sec")
            ]
    return statistics.mean(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two sides this many times")
    args = parser.parse_args()
    plain, fit = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both sides alike
        plain.append(plain_loop(args.config, args.steps, args.warmup))
        fit.append(lightning_fit(args.config, args.steps, args.warmup))
    table = Table(
        title=f"{Path(args.config).name}: {args.steps} steps, real tokens/s after {args.warmup} warm-up"
    )
    for column in ("loop", "runs", "median tokens/s"):
        table.add_column(column, justify="right")
    table.add_row("plain PyTorch", ", ".join(f"{r:,.0f}" for r in plain), f"{statistics.median(plain):,.0f}")
    table.add_row("lightning-rank fit", ", ".join(f"{r:,.0f}" for r in fit), f"{statistics.median(fit):,.0f}")
    console = Console()
    console.print(table)
    console.print(f"ratio lightning-rank / plain = {statistics.median(fit) / statistics.median(plain):.3f}")


if __name__ == "__main__":
    main()
