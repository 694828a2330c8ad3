"""Exact resume: what the reranker keeps in a checkpoint beyond weights and loops, and puts back from it.

A checkpoint carries the random generators' states (torch CPU and CUDA, Python, NumPy), as tensors and plain
values only, and the input format training rendered pairs with. On a resume the generators are restored and
the training stream continues from the position Lightning saved. This is the module's side of a checkpoint;
how the subcommands read one (safely, and against the user's settings) is :mod:`.checkpoints`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lightning_rank.text.input_format import InputFormat


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), Python and NumPy generator states, as tensors and plain Python values only so
    that the checkpoint still loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (CUDA only onto as many devices as it was saved from)."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def saved_input_format(checkpoint: Mapping[str, Any]) -> InputFormat | None:
    """How the checkpoint's training rendered pairs; for checkpoints from before it was recorded, the
    data module's settings saved beside it."""
    saved = checkpoint.get("input_format")
    if saved:
        return InputFormat(**saved)
    return InputFormat.from_settings(checkpoint.get("datamodule_hyper_parameters"))


def saved_stream_states(checkpoint: Mapping[str, Any]) -> list[Any]:
    """The training loaders' saved positions. Lightning hands them only to a train loader it builds after
    restoring the loops, but configure_optimizers (estimated_stepping_batches) builds it before: without
    :func:`restore_stream_states` the stream would restart at the epoch's first batch."""
    fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    return fit_state.get("combined_loader") or []


def restore_stream_states(train_dataloader: Any, states: list[Any]) -> None:
    """Put the saved positions back into the stateful training loaders (twice is harmless)."""
    loaders = list(train_dataloader) if isinstance(train_dataloader, list | tuple) else [train_dataloader]
    stateful = [loader for loader in loaders if hasattr(loader, "load_state_dict")]
    for loader, state in zip(stateful, states, strict=False):
        loader.load_state_dict(state)
