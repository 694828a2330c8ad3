"""CPU training-step time of the Mamba backbones' PyTorch path, next to transformers' Mamba-1 torch path.

One step = forward + backward of a reranker-like loss (last-token pooling, a linear score) on a random
batch, at hidden 256, 4 layers, batch 8 x 256 tokens by default. Ours: the median of ``--steps`` steps
after ``--warmup``; transformers' MambaModel (per-time-step loop): one step, as it takes tens of seconds.

    python benchmarks/mamba_cpu_step.py                  # the full table
    python benchmarks/mamba_cpu_step.py --skip-transformers
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from lightning_rank.backbones.mamba import Mamba1Backbone, Mamba2Backbone


def step_loss(hidden: Tensor, mask: Tensor, head: Tensor) -> Tensor:
    """Score = last real token's state . head; a squared-score loss so every position gets gradient."""
    last = mask.sum(1) - 1
    pooled = hidden[torch.arange(hidden.shape[0]), last]
    return (pooled.float() @ head).pow(2).mean()


def _cpu_times() -> tuple[int, int]:
    """Total and idle (idle + iowait) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of CPU time used by (other) processes over ``seconds`` while we sleep; None off Linux."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def time_steps(run: Callable[[], Tensor], model: nn.Module, steps: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``steps`` forward+backward steps after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        run().backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--skip-transformers", action="store_true", help="skip transformers' slow Mamba-1")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    busy_before = busy_fraction()
    torch.manual_seed(0)

    config = {"d_model": args.hidden, "n_layer": args.layers}
    tokens = args.batch * args.seq_len
    table = Table(
        title=(
            f"Forward+backward step on CPU ({torch.get_num_threads()} threads): hidden {args.hidden}, "
            f"{args.layers} layers, batch {args.batch} x {args.seq_len} tokens"
        )
    )
    for column in ("model", "path", "params", "steps timed", "median s/step", "min s/step", "tokens/s"):
        table.add_column(column, justify="left" if column in ("model", "path") else "right")

    def add_row(name: str, path: str, model: nn.Module, times: list[float]) -> None:
        median = statistics.median(times)
        params = sum(p.numel() for p in model.parameters())
        table.add_row(
            name, path, f"{params / 1e6:.2f}M", str(len(times)), f"{median:.3f}", f"{min(times):.3f}",
            f"{tokens / median:,.0f}",
        )  # fmt: skip

    head = torch.randn(args.hidden)
    for name, cls in (("Mamba-1", Mamba1Backbone), ("Mamba-2", Mamba2Backbone)):
        model = cls(config=config, tokenizer="builtin:words", use_kernels="never").train()
        ids = torch.randint(10, len(model.tokenizer), (args.batch, args.seq_len))
        mask = torch.ones_like(ids)

        def run(model: nn.Module = model, ids: Tensor = ids, mask: Tensor = mask) -> Tensor:
            return step_loss(model(ids, mask), mask, head)

        add_row(name, "lightning-rank, PyTorch path", model, time_steps(run, model, args.steps, args.warmup))

    if not args.skip_transformers:
        from transformers import MambaConfig, MambaModel

        reference = Mamba1Backbone(config=config, tokenizer="builtin:words")
        hf = MambaModel(MambaConfig(**reference.config.to_transformers())).train()
        hf.load_state_dict({k.removeprefix("backbone.").replace("embedding.", "embeddings."): v
                            for k, v in reference.state_dict().items()})  # fmt: skip
        ids = torch.randint(10, len(reference.tokenizer), (args.batch, args.seq_len))
        mask = torch.ones_like(ids)

        def run_hf() -> Tensor:
            return step_loss(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask, head)

        add_row("Mamba-1", "transformers MambaModel, torch path", hf, time_steps(run_hf, hf, 1, 0))

    console = Console(width=150)
    console.print(table)
    busy = busy_fraction(0.5)  # after the run: are other processes still busy?
    shown = ", ".join(f"{b:.0%}" for b in (busy_before, busy) if b is not None) or "unknown"
    console.print(f"CPU used by other processes just before / after the run: {shown} ({os.cpu_count()} CPUs)")
    if max(b or 0.0 for b in (busy_before, busy)) > 0.2:
        console.print(
            "[yellow]Other processes were using the CPU: when they keep the cores busy, multi-threaded "
            "(OpenMP) ops slow down by up to an order of magnitude. Rerun on an idle machine, or compare "
            "with --threads 1.[/]"
        )


if __name__ == "__main__":
    main()
