"""CUDA graphs for the training forward and backward: one capture per input shape, replayed every step.

A small model's step is thousands of short kernels. When the host cannot launch them as fast as the GPU
runs them (mamba_ssm's Mamba-2: Python launch and autotuner wrappers around ~15 Triton kernels a layer),
the GPU waits for Python. A replayed graph launches a whole forward or backward with one call.
``torch.cuda.make_graphed_callables`` does the capture; this module adds what a training loop needs around
it: one graph per input shape (length buckets), a separate graph when a shape recurs within a step, and
gradients that never alias a graph's output buffers.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_rank.datamodules.compatibility import PACKING_CONFLICT
from lightning_rank.errors import CudaGraphError

__all__ = ["PACKING_CONFLICT", "CudaGraphError", "TrainingGraphs", "check_cuda_graphs"]

ShapeKey = tuple[tuple[tuple[int, ...], torch.dtype], ...]


def check_cuda_graphs(device: torch.device, strategy: object | None = None) -> None:
    """Raise :class:`CudaGraphError` naming the fix when training graphs cannot run on ``device``."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if device.type != "cuda":
        raise CudaGraphError(
            f"model.cuda_graphs needs a CUDA device, but training runs on {device.type}: train on a GPU "
            "(--trainer.accelerator gpu) or drop --model.cuda_graphs"
        )
    if isinstance(strategy, FSDPStrategy | ModelParallelStrategy):
        raise CudaGraphError(
            "model.cuda_graphs does not work with FSDP (its all-gathers run inside each forward): drop "
            "--model.cuda_graphs or use the DDP strategy"
        )


class _Scorer(nn.Module):
    """``score(*tensors)`` as a module whose parameters are the model's: what make_graphed_callables
    captures (it differentiates with respect to a module's parameters, not a function's closure)."""

    def __init__(self, model: nn.Module, score: Callable[..., Tensor]) -> None:
        super().__init__()
        self.model = model
        self._score = score

    def forward(self, *tensors: Tensor) -> Tensor:
        return self._score(*tensors)


class TrainingGraphs:
    """Captured forward+backward graphs of ``score``, keyed by the inputs' shapes and dtypes.

    Call :meth:`start_step` once per micro-batch, before its first score. The k-th call with a given shape
    within a step replays its own graph: a graph's saved activations are overwritten by its next replay,
    so two buckets of one shape cannot share one before their backward has run.

    Gradients: a graph's backward writes parameter gradients into static buffers. If ``param.grad`` were
    None, autograd would adopt such a buffer as ``.grad`` and the next replay would overwrite it (wrong sums
    under gradient accumulation). So :meth:`start_step` allocates missing gradients, and the optimizer must
    zero them in place (``zero_grad(set_to_none=False)``; RerankerModule does).
    """

    def __init__(
        self, model: nn.Module, score: Callable[..., Tensor], limit: int = 24, warmup_iters: int = 3
    ) -> None:
        self.model = model
        self.score = score
        self.limit = limit
        self.warmup_iters = warmup_iters
        self._graphs: dict[tuple[ShapeKey, int], Callable[..., Tensor]] = {}
        self._uses: Counter[ShapeKey] = Counter()
        self._over_limit: set[tuple[ShapeKey, int]] = set()

    def __len__(self) -> int:
        return len(self._graphs)

    def start_step(self) -> None:
        """A new micro-batch: occurrence counts restart and every trainable parameter has a gradient."""
        self._uses.clear()
        for param in self.model.parameters():
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)

    def __call__(self, *tensors: Tensor) -> Tensor:
        shape: ShapeKey = tuple((tuple(t.shape), t.dtype) for t in tensors)
        key = (shape, self._uses[shape])
        self._uses[shape] += 1
        graphed = self._graphs.get(key)
        if graphed is None:
            if len(self._graphs) >= self.limit:
                self._warn_over_limit(key)
                return self.score(*tensors)
            graphed = self._capture(tensors)
            self._graphs[key] = graphed
        return graphed(*tensors)

    def _capture(self, tensors: tuple[Tensor, ...]) -> Callable[..., Tensor]:
        scorer = _Scorer(self.model, self.score)
        sample = tuple(t.clone() for t in tensors)  # become the graph's static inputs
        device = "cuda"
        # make_graphed_callables refuses autocast's weight-cast cache (casts would be captured once and
        # reused stale); the replay does not depend on the autocast state, only the capture does.
        with torch.autocast(
            device,
            dtype=torch.get_autocast_dtype(device),
            enabled=torch.is_autocast_enabled(device),
            cache_enabled=False,
        ):
            try:
                return torch.cuda.make_graphed_callables(
                    scorer, sample, num_warmup_iters=self.warmup_iters, allow_unused_input=True
                )
            except RuntimeError as err:
                raise CudaGraphError(
                    f"model.cuda_graphs: the forward/backward of {type(self.model).__name__} could not be "
                    f"captured as a CUDA graph at input shapes {[tuple(t.shape) for t in tensors]}: {err}. "
                    "A capture fails when the model synchronises with the host (a data-dependent branch, "
                    ".item(), a CPU tensor). Train without --model.cuda_graphs"
                ) from err

    def _warn_over_limit(self, key: tuple[ShapeKey, int]) -> None:
        if not self._over_limit:
            warnings.warn(
                f"model.cuda_graphs: {self.limit} graphs captured (model.cuda_graph_limit); new input shapes "
                f"such as {[s for s, _ in key[0]]} run eagerly. Bound the shapes with "
                "--data.pad_to_multiple_of (e.g. 32) or raise --model.cuda_graph_limit (each graph keeps "
                "its own activation memory)",
                stacklevel=3,
            )
        self._over_limit.add(key)
