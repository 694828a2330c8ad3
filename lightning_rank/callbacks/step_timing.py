"""Step timing for the throughput callback: when a batch ended, as the device saw it, and which intervals
count, without adding a host-device synchronisation to the step."""

from __future__ import annotations

import time

import torch

#: A point in time: ``time.perf_counter()`` seconds, or a CUDA event recorded on the current stream (read back
#: only when a rate is computed, so that measuring adds no host-device synchronisation to the step).
Mark = float | torch.cuda.Event


def device_now(device: torch.device) -> Mark:
    """Now, as ``device`` sees it: on CUDA an event that completes when the queued kernels have run
    (reading the host clock would time the launches, and synchronising would stall the host)."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event
    return time.perf_counter()


def seconds(start: Mark, end: Mark) -> float:
    """Seconds from ``start`` to ``end``, strictly positive (as Throughput requires)."""
    if isinstance(start, float) and isinstance(end, float):
        elapsed = end - start
    else:
        end.synchronize()  # only waits when the GPU has not reached `end` yet
        elapsed = start.elapsed_time(end) / 1000.0
    return max(elapsed, 1e-9)


class StepClock:
    """Measured time of one loop: the sum of batch-end to batch-end intervals, less warm-up steps and pauses.

    An interval starts at the end of the previous batch (so data loading counts) or, right after a pause
    (validation inside fit, an epoch boundary, the start), at the start of the batch, so time spent outside
    the loop's own batches never counts. Steps that are not measured add neither time nor tokens.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.steps = 0
        self._last: Mark | None = None

    @property
    def paused(self) -> bool:
        return self._last is None

    def pause(self) -> None:
        self._last = None

    def start(self, now: Mark) -> None:
        if self._last is None:
            self._last = now

    def stop(self, now: Mark) -> tuple[Mark, Mark] | None:
        """Ends a batch at ``now``; its interval ``(start, end)`` when it is measured, else None.

        The decision depends only on step counts and pauses, never on timing, so all ranks agree on it.
        """
        self.steps += 1
        last, self._last = self._last, now
        if last is None or self.steps <= self.warmup_steps:
            return None
        return last, now


class Intervals:
    """A sum of measured intervals, read back lazily: old ones (long done on the GPU) in chunks, the rest at
    the end, so a long evaluation neither synchronises per batch nor holds an event per batch."""

    def __init__(self) -> None:
        self._done = 0.0
        self._open: list[tuple[Mark, Mark]] = []

    def add(self, interval: tuple[Mark, Mark]) -> None:
        self._open.append(interval)
        if len(self._open) >= 256:
            old, self._open = self._open[:128], self._open[128:]
            self._done += sum(seconds(*i) for i in old)

    def seconds(self) -> float:
        self._done += sum(seconds(*i) for i in self._open)
        self._open = []
        return self._done
