"""Why does Mamba-2 train slower than Mamba-1, and what fixes it? Variants of our 130M backbones, one process.

    python benchmarks/mamba_speed.py                       # needs CUDA (+ mamba-ssm/causal-conv1d kernels)
    python benchmarks/mamba_speed.py --variants m1 m2 m2-torchnorm --profile m2 m2-torchnorm

A plain PyTorch step as ../shared/gpu/README.md's anchors (B=32, L=512, bf16 autocast over fp32 weights,
group CE over groups of 8, fused AdamW; rate over ``--steps`` steps after ``--warmup``), on our own
Mamba backbones at the 130M shape (d_model 768, 24 layers). Variants:

- ``m1``: Mamba-1, fused kernels (``mamba_inner_fn``).
- ``m2``: Mamba-2, fused kernels as mamba_ssm's Mamba2 calls them (``mamba_split_conv1d_scan_combined`` with
  its Triton gated RMSNorm and the out-projection inside), chunk 256.
- ``m2-c128`` / ``m2-c64``: the same with a smaller chunk.
- ``m2-torchnorm``: the fused conv + SSD scan (gate applied inside the scan), then the grouped RMSNorm and
  out-projection in PyTorch (``norm_impl="torch"``).
- ``m2-torch``: the pure-PyTorch SSD path (no kernels); ``m2-torch-compile``: the same under torch.compile.
- any name + ``+cnorm``: the block's pre-norm and mask as one compiled function (``block_norm="compiled"``).
- any name + ``+graph``: the whole training step captured once and replayed as a CUDA graph (no host launch
  overhead): against the plain variant it shows how launch-bound a step is. Inference stays eager.

``--profile`` prints the top CUDA kernels of a few steps of the named variants (torch.profiler).
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lightning_rank.backbones.mamba import Mamba1Backbone, Mamba2Backbone

SHAPE = {"d_model": 768, "n_layer": 24, "vocab_size": 50280}
GROUP = 8
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a smoke run (--tiny)


def build(variant: str) -> torch.nn.Module:
    base, *extras = variant.split("+")
    config: dict[str, Any] = dict(SHAPE)
    kwargs: dict[str, Any] = {"use_kernels": "always" if DEVICE.type == "cuda" else "never"}
    if base == "m1":
        cls = Mamba1Backbone
    else:
        cls = Mamba2Backbone
        if base.startswith("m2-c"):
            config["chunk_size"] = int(base.removeprefix("m2-c"))
        if base == "m2-torchnorm":
            config["norm_impl"] = "torch"
        if base.startswith("m2-torch") and base != "m2-torchnorm":
            kwargs["use_kernels"] = "never"
    if "cnorm" in extras:
        config["block_norm"] = "compiled"
    torch.manual_seed(0)
    with DEVICE:
        backbone = cls(config=config, tokenizer="builtin:words", **kwargs)
        head = torch.nn.Linear(SHAPE["d_model"], 1)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    if base == "m2-torch-compile":
        for i, block in enumerate(backbone.backbone.layers):
            backbone.backbone.layers[i] = torch.compile(block, dynamic=False)
    return model


def step_fn(model: torch.nn.Module, batch: int, length: int, graph: bool = False) -> Callable[[], None]:
    """One training step on a fixed batch; ``graph``: captured once, then replayed as a CUDA graph."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=DEVICE.type == "cuda", capturable=graph)
    ids = torch.randint(10, SHAPE["vocab_size"], (batch, length), device=DEVICE)
    mask = torch.ones_like(ids)
    labels = torch.zeros(batch // GROUP, dtype=torch.long, device=DEVICE)

    def step() -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            hidden = model["backbone"](ids, mask)
            scores = model["head"](hidden[:, -1].float()).view(-1, GROUP)
            loss = F.cross_entropy(scores, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=not graph)  # a graph keeps its gradient buffers

    if not graph:
        return step
    # The whole step (forward, backward, AdamW) as one CUDA graph: the host launches it with one call, so no
    # kernel waits for Python. Warm up (Triton autotuning, allocator) on a side stream first.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(8):
            step()
    torch.cuda.current_stream().wait_stream(side)
    captured = torch.cuda.CUDAGraph()
    with torch.cuda.graph(captured):
        step()
    return captured.replay


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    model = build(variant)
    step = step_fn(model, args.batch, args.length, graph="graph" in variant.split("+")[1:])
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    rates = []
    for _ in range(args.repeats):
        _sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync()
        rates.append(args.batch * args.length * args.steps / (time.perf_counter() - start))
    # host time to enqueue one step when the GPU is idle: a launch-bound step is one where this is close
    # to the step time
    _sync()
    start = time.perf_counter()
    step()
    enqueue = time.perf_counter() - start
    _sync()
    step_time = args.batch * args.length / statistics.median(rates)
    with torch.inference_mode(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        model.eval()
        ids = torch.randint(10, SHAPE["vocab_size"], (2 * args.batch, args.length), device=DEVICE)
        mask = torch.ones_like(ids)
        for _ in range(3):
            model["backbone"](ids, mask)
        _sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            model["backbone"](ids, mask)
        _sync()
        infer = 2 * args.batch * args.length * args.steps / (time.perf_counter() - start)
    result = {
        "train_tok_s": statistics.median(rates),
        "train_runs": rates,
        "step_ms": 1000 * step_time,
        "enqueue_ms": 1000 * enqueue,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else 0.0,
        "infer_tok_s": infer,
    }
    if variant in args.profile:
        model.train()
        step = step_fn(model, args.batch, args.length)
        for _ in range(2):
            step()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            _sync()
        print(f"\n=== profile {variant}: 3 steps ===")
        print(
            prof.key_averages().table(
                sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=70
            )
        )
    del model
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["m1", "m2", "m2-c128", "m2-torchnorm", "m2-torch"])
    parser.add_argument("--profile", nargs="*", default=[])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tiny", action="store_true", help="d_model 64, 2 layers (smoke run)")
    args = parser.parse_args()
    if args.tiny:
        SHAPE.update(d_model=64, n_layer=2, vocab_size=8192)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU"
    print(f"{name}  torch {torch.__version__}  B={args.batch} L={args.length}")
    rows = []
    for variant in args.variants:
        try:
            result = measure(variant, args)
        except Exception:  # one broken variant must not cost the others (GPU time is scarce)
            traceback.print_exc()
            continue
        rows.append((variant, result))
        runs = ", ".join(f"{r:,.0f}" for r in result["train_runs"])
        print(
            f"{variant:22s} train {result['train_tok_s']:>10,.0f} tok/s ({runs})"
            f"  step {result['step_ms']:.1f} ms"
            f"  enqueue {result['enqueue_ms']:.1f} ms  peak {result['peak_gib']:.2f} GiB"
            f"  infer {result['infer_tok_s']:>11,.0f} tok/s",
            flush=True,
        )
    print("\n| variant | train tok/s | step ms | host enqueue ms | peak GiB | inference tok/s |")
    print("|---|---|---|---|---|---|")
    for variant, r in rows:
        print(
            f"| {variant} | {r['train_tok_s']:,.0f} | {r['step_ms']:.1f} | {r['enqueue_ms']:.1f} "
            f"| {r['peak_gib']:.2f} | {r['infer_tok_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
