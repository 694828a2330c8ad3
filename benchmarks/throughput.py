"""Training and reranking throughput per backbone: this project's Lightning loop against a plain PyTorch loop.

    python benchmarks/throughput.py                         # a GPU: paper sizes, both data shapes
    python benchmarks/throughput.py --size tiny --steps 3   # any machine: tiny models (a smoke run)

For each backbone at its paper size (random initialisation, no download), in one process:

- train, plain: the same RerankerModule stepped by hand (autocast, group CE, backward, AdamW, scheduler);
- train, lightning: ``Trainer.fit`` with this project's TokensPerSecond profiler, as ``lightning-rank fit``;
- rerank, plain / lightning: ``torch.inference_mode`` forward against ``Trainer.predict``.

Both loops see the same batches (moved from CPU memory each step), precision and optimizer. Two shapes:
``dense`` (B sequences of exactly L tokens, as ../shared/gpu/README.md's anchors), ``realistic``
(MS MARCO-like pairs, mean ~80 tokens, cut into length buckets by the project's collator, the batch sized to
about the same token budget), where the figure is real (non-pad) tokens/sec, and ``packed`` (the same pairs
packed into rows of L tokens, ``data.packing``; backbones that support it). Each figure is the rate over
``--steps`` steps after ``--warmup`` steps (CUDA synchronised at both ends); memory is peak allocated.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from rich.console import Console
from rich.table import Table
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from lightning_rank.callbacks.throughput import TokensPerSecond
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.templates import EncodedPair

#: Paper-size shapes (random init; vocab sizes as the real tokenizers') and tiny ones for CPU smoke runs.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "mamba1": {"d_model": 768, "n_layer": 24, "vocab_size": 50280},
        "mamba2": {"d_model": 768, "n_layer": 24, "vocab_size": 50280},
        "bert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "intermediate_size": 3072, "vocab_size": 30522},
        "roberta": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "vocab_size": 50265, "max_position_embeddings": 514},
        "pythia": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "intermediate_size": 3072, "vocab_size": 50304, "rotary_pct": 0.25,
                   "max_position_embeddings": 2048},
        "llama": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                  "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 8192},
    },
    "tiny": {
        "mamba1": {"d_model": 64, "n_layer": 2, "vocab_size": 8192},
        "mamba2": {"d_model": 64, "n_layer": 2, "vocab_size": 8192, "headdim": 16, "d_state": 16,
                   "chunk_size": 32},
        "bert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 128, "vocab_size": 8192},
        "roberta": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 8192, "max_position_embeddings": 514},
        "pythia": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "intermediate_size": 128, "vocab_size": 8192, "max_position_embeddings": 2048},
        "llama": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 8192,
                  "max_position_embeddings": 2048},
    },
}  # fmt: skip
BACKBONES = list(SIZES["paper"])
GROUP = 8


@dataclass
class Measurement:
    backbone: str
    shape: str
    task: str  # train | rerank
    loop: str  # plain | lightning
    params_m: float
    tokens_per_sec: float  # real (non-pad) tokens
    padded_tokens_per_sec: float
    step_ms: float
    peak_gib: float
    profiler_tokens_per_sec: float = math.nan  # what TokensPerSecond logged (lightning train only)


# ------------------------------------------------------------------------------------------------ batches


def build_module(
    name: str, size: str, device: torch.device, extra: dict[str, Any], cuda_graphs: bool = False
) -> RerankerModule:
    torch.manual_seed(0)
    args = {"config": dict(SIZES[size][name]), "tokenizer": "builtin:words", **extra.get(name, {})}
    with device:  # initialise on the device: a 1B model's CPU init alone takes many seconds
        return RerankerModule(backbone=name, backbone_args=args, cuda_graphs=cuda_graphs)


def _pair(
    collator: PairCollator, rng: random.Random, vocab: int, query_len: int, doc_len: int
) -> EncodedPair:
    """Random token ids with the template's special-token layout left out: only lengths matter here."""
    n = query_len + doc_len
    ids = [rng.randrange(10, vocab) for _ in range(n)]
    types = [0] * query_len + [1] * doc_len if collator.template.is_pair else None
    return EncodedPair(input_ids=ids, token_type_ids=types)


def make_batches(
    module: RerankerModule,
    shape: str,
    count: int,
    sequences: int,
    length: int,
    buckets: int,
    seed: int,
    pad_to_multiple_of: int | None = None,
) -> list[dict[str, Any]]:
    """``count`` distinct batches of ``sequences`` pairs (groups of 8, positive first), collated on CPU."""
    backbone = module.backbone
    vocab = next(m for m in backbone.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    collator = PairCollator(
        backbone.tokenizer,
        backbone.template,
        max_length=length,
        length_buckets=buckets if shape == "realistic" else 1,
        pad_to_multiple_of=pad_to_multiple_of,
        packing=shape == "packed",
    )
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if shape == "dense":
            pairs = [_pair(collator, rng, vocab, 16, length - 16) for _ in range(sequences)]
        else:  # MS MARCO-like: short queries, passages ~ log-normal around 70 tokens, capped at `length`
            # (realistic and packed draw the same pairs)
            pairs = []
            for _ in range(sequences):
                query = rng.randint(6, 14)
                doc = min(max(int(rng.lognormvariate(math.log(62), 0.45)), 12), length - query)
                pairs.append(_pair(collator, rng, vocab, query, doc))
        batch = collator.collate(pairs)
        labels = torch.zeros(sequences // GROUP, GROUP)
        labels[:, 0] = 1.0
        batch["labels"] = labels
        batch["query_index"] = torch.arange(sequences) // GROUP
        batch["doc_index"] = torch.arange(sequences)
        out.append(batch)
    return out


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


# ------------------------------------------------------------------------------------------------ loops


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def _counts(batches: list[dict[str, Any]], first: int, n: int) -> tuple[int, int, int]:
    chosen = [batches[i % len(batches)] for i in range(first, first + n)]
    return (
        sum(b["real_tokens"] for b in chosen),
        sum(b["padded_tokens"] for b in chosen),
        sum(b["num_sequences"] for b in chosen),
    )


class _Window(Callback):
    """Clock reads (after a CUDA sync) at the end of step ``warmup`` and of step ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.end = math.nan

    def _tick(self, trainer: Trainer, index: int) -> None:
        if index + 1 == self.warmup:
            self.start = _sync(trainer.strategy.root_device)
        elif index + 1 == self.warmup + self.steps:
            self.end = _sync(trainer.strategy.root_device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tick(trainer, batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick(trainer, batch_idx)


def _loader(batches: list[dict[str, Any]], n: int) -> DataLoader:
    return DataLoader([batches[i % len(batches)] for i in range(n)], batch_size=None, shuffle=False)


def _precision_context(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def plain_train(module: RerankerModule, batches, device, precision, warmup, steps) -> tuple[float, float]:
    """Returns (elapsed seconds over the measured steps, peak GiB)."""
    module.to(device).train()
    optimizer = module.default_optimizer()
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    _reset_memory(device)
    start = math.nan
    for i in range(warmup + steps):
        batch = to_device(batches[i % len(batches)], device)
        labels = batch["labels"]
        with _precision_context(device, precision):
            loss = module.loss(module(batch).view_as(labels), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=not module.hparams.cuda_graphs)  # as RerankerModule does
        if i + 1 == warmup:
            start = _sync(device)
    return _sync(device) - start, _peak(device)


@torch.inference_mode()
def plain_rerank(module: RerankerModule, batches, device, precision, warmup, steps) -> tuple[float, float]:
    module.to(device).eval()
    _reset_memory(device)
    start = math.nan
    for i in range(warmup + steps):
        batch = to_device(batches[i % len(batches)], device)
        with _precision_context(device, precision):
            module(batch)
        if i + 1 == warmup:
            start = _sync(device)
    return _sync(device) - start, _peak(device)


def _trainer(device: torch.device, precision: str, steps: int, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


class _LoggedRate(Callback):
    """Keeps the last ``train/tokens_per_sec`` the profiler logged."""

    value = math.nan

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rate = trainer.callback_metrics.get("train/tokens_per_sec")
        if rate is not None:
            self.value = float(rate)


def lightning_train(module, batches, device, precision, warmup, steps, profiler: bool):
    window, logged = _Window(warmup, steps), _LoggedRate()
    callbacks: list[Callback] = [window, logged]
    if profiler:
        callbacks.insert(0, TokensPerSecond(window_size=steps, warmup_steps=warmup, log_every_n_steps=steps))
    trainer = _trainer(device, precision, warmup + steps, callbacks)
    _reset_memory(device)
    trainer.fit(module, train_dataloaders=_loader(batches, warmup + steps))
    return window.end - window.start, _peak(device), logged.value


def lightning_rerank(module, batches, device, precision, warmup, steps):
    window = _Window(warmup, steps)
    trainer = _trainer(device, precision, 1, [window])
    _reset_memory(device)
    trainer.predict(module, dataloaders=_loader(batches, warmup + steps), return_predictions=False)
    return window.end - window.start, _peak(device)


# ------------------------------------------------------------------------------------------------ driver


def measure(args: argparse.Namespace, name: str, shape: str, device: torch.device) -> list[Measurement]:
    extra = json.loads(args.backbone_args)
    factory: Callable[[], RerankerModule] = lambda: build_module(  # noqa: E731
        name, args.size, device, extra, args.cuda_graphs
    )
    probe = factory()
    if shape == "packed" and (reason := probe.backbone.packing_unsupported()):
        print(f"{name}: no packed rows: {reason}")
        return []
    params = sum(p.numel() for p in probe.parameters()) / 1e6
    train_sequences = args.batch if shape == "dense" else args.realistic_batch
    pad = args.pad_to_multiple_of
    train = make_batches(probe, shape, 4, train_sequences, args.length, args.buckets, 1, pad)
    rerank = make_batches(probe, shape, 4, 2 * train_sequences, args.length, args.buckets, 2, pad)
    del probe
    results = []

    def record(task: str, loop: str, elapsed: float, peak: float, logged: float = math.nan) -> None:
        warm = args.warmup if task == "train" else args.rerank_warmup
        real, padded, _ = _counts(train if task == "train" else rerank, warm, args.steps)
        results.append(
            Measurement(name, shape, task, loop, round(params, 1), real / elapsed, padded / elapsed,
                        1000 * elapsed / args.steps, peak, logged)
        )  # fmt: skip

    for loop in args.loops:
        if "train" in args.tasks:
            module = factory()
            if loop == "plain":
                elapsed, peak = plain_train(module, train, device, args.precision, args.warmup, args.steps)
                record("train", loop, elapsed, peak)
            else:
                elapsed, peak, logged = lightning_train(
                    module, train, device, args.precision, args.warmup, args.steps, not args.no_profiler
                )
                record("train", loop, elapsed, peak, logged)
            del module
        if "rerank" in args.tasks:
            module = factory()
            run = plain_rerank if loop == "plain" else lightning_rerank
            elapsed, peak = run(module, rerank, device, args.precision, args.rerank_warmup, args.steps)
            record("rerank", loop, elapsed, peak)
            del module
        _reset_memory(device)
    return results


def table(results: list[Measurement], title: str) -> Table:
    out = Table(title=title)
    for column in ("backbone", "shape", "task", "params M", "plain tok/s", "lightning tok/s", "ratio",
                   "pad tok/s (L)", "step ms (P / L)", "peak GiB (P / L)", "profiler tok/s"):  # fmt: skip
        out.add_column(column, justify="right")
    keyed = {(r.backbone, r.shape, r.task, r.loop): r for r in results}
    for backbone, shape, task in dict.fromkeys((r.backbone, r.shape, r.task) for r in results):
        plain, light = (
            keyed.get((backbone, shape, task, "plain")),
            keyed.get((backbone, shape, task, "lightning")),
        )
        ref = light or plain
        assert ref is not None
        ratio = light.tokens_per_sec / plain.tokens_per_sec if plain and light else math.nan
        out.add_row(
            backbone, shape, task, f"{ref.params_m:.1f}",
            f"{plain.tokens_per_sec:,.0f}" if plain else "-",
            f"{light.tokens_per_sec:,.0f}" if light else "-",
            f"{ratio:.3f}",
            f"{light.padded_tokens_per_sec:,.0f}" if light else "-",
            " / ".join(f"{r.step_ms:.1f}" if r else "-" for r in (plain, light)),
            " / ".join(f"{r.peak_gib:.2f}" if r else "-" for r in (plain, light)),
            f"{light.profiler_tokens_per_sec:,.0f}" if light and task == "train" else "",
        )  # fmt: skip
    return out


def markdown(results: list[Measurement]) -> str:
    """The same comparison as a Markdown table, for benchmarks/RESULTS.md."""
    lines = [
        "| backbone | shape | task | params M | plain tok/s | lightning tok/s | ratio | step ms (plain / L) "
        "| peak GiB (plain / L) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r.backbone, r.shape, r.task, r.loop): r for r in results}
    for backbone, shape, task in dict.fromkeys((r.backbone, r.shape, r.task) for r in results):
        plain = keyed.get((backbone, shape, task, "plain"))
        light = keyed.get((backbone, shape, task, "lightning"))
        if plain is None or light is None:
            continue
        lines.append(
            f"| {backbone} | {shape} | {task} | {light.params_m:.1f} | {plain.tokens_per_sec:,.0f} "
            f"| {light.tokens_per_sec:,.0f} | {light.tokens_per_sec / plain.tokens_per_sec:.3f} "
            f"| {plain.step_ms:.1f} / {light.step_ms:.1f} | {plain.peak_gib:.2f} / {light.peak_gib:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=BACKBONES, choices=BACKBONES)
    shapes = ["dense", "realistic", "packed"]
    parser.add_argument("--shapes", nargs="+", default=shapes, choices=shapes)
    parser.add_argument("--tasks", nargs="+", default=["train", "rerank"], choices=["train", "rerank"])
    parser.add_argument("--loops", nargs="+", default=["plain", "lightning"], choices=["plain", "lightning"])
    parser.add_argument("--size", default="paper", choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=32, help="dense: sequences per training batch")
    parser.add_argument("--length", type=int, default=512, help="dense length; realistic maximum")
    parser.add_argument("--realistic-batch", type=int, default=192, help="realistic: sequences per batch")
    parser.add_argument("--buckets", type=int, default=4, help="realistic: length buckets per batch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=8, help="training warm-up steps (kernel autotuning)")
    parser.add_argument("--rerank-warmup", type=int, default=4)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    parser.add_argument("--no-profiler", action="store_true", help="fit without TokensPerSecond")
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="model.cuda_graphs in both loops (training, CUDA only)"
    )
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, help="collator padding multiple")
    parser.add_argument("--backbone-args", default="{}", help='JSON per backbone, e.g. {"mamba2": {...}}')
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results: list[Measurement] = []
    console = Console(width=200)  # logs and CI are not terminals: keep the columns readable
    for shape in args.shapes:
        for name in args.backbones:
            results += measure(args, name, shape, device)
            if shown := [r for r in results if r.backbone == name and r.shape == shape]:
                console.print(table(shown, name))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    console.print(
        table(results, f"{device_name}, {args.size} sizes, {args.precision}, dense B={args.batch} "
              f"L={args.length}, realistic {args.realistic_batch} pairs / {args.buckets} buckets, "
              f"{args.steps} steps after warm-up{', CUDA graphs' if args.cuda_graphs else ''}")
    )  # fmt: skip
    console.print(markdown(results), soft_wrap=True, markup=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device_name, "args": vars(args), "results": [asdict(r) for r in results]},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
