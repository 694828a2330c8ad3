"""Stop at the first non-finite training loss without synchronising the GPU every step.

``bool(torch.isfinite(loss))`` waits for the step's kernels: the host cannot queue the next step meanwhile,
which costs a launch-bound model a large share of its speed. On CUDA the guard copies each loss to pinned
host memory asynchronously, records an event, and reads the value once the event has completed (polled
each step, awaited before every checkpoint and at epoch ends). On a CPU it checks at once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FiniteLossGuard", "LossOrigin"]


@dataclass(frozen=True)
class LossOrigin:
    """Where a loss came from, for the error message."""

    step: int
    epoch: int
    rank: int
    queries: Sequence[str] = ()


#: on_nonfinite(value, origin, late): raises; ``late`` says the step(s) after it were already queued
OnNonFinite = Callable[[float, LossOrigin, bool], None]


class FiniteLossGuard:
    """Watches training losses; calls ``on_nonfinite`` (which raises) for the first NaN/inf one."""

    def __init__(self, on_nonfinite: OnNonFinite) -> None:
        self.on_nonfinite = on_nonfinite
        self._pending: deque[tuple[Tensor, torch.cuda.Event, LossOrigin]] = deque()

    def watch(self, loss: Tensor, origin: LossOrigin) -> None:
        if loss.device.type != "cuda":
            value = float(loss.detach())
            if not math.isfinite(value):
                self.on_nonfinite(value, origin, False)
            return
        host = torch.empty((), dtype=loss.dtype, pin_memory=True)
        host.copy_(loss.detach(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(loss.device))
        self._pending.append((host, done, origin))
        self.check(wait=False)

    def check(self, wait: bool) -> None:
        """Reads the losses the GPU has finished (all of them with ``wait``), oldest first."""
        while self._pending:
            host, done, origin = self._pending[0]
            if wait:
                done.synchronize()
            elif not done.query():
                return
            self._pending.popleft()
            value = float(host)
            if not math.isfinite(value):
                self._pending.clear()
                self.on_nonfinite(value, origin, True)
