"""Guarded access to the fused CUDA/Triton kernels of ``mamba_ssm`` and ``causal_conv1d``.

Nothing here imports them at module import time: the package works without them (CPU, tests, the demo),
and :func:`should_use_kernels` decides per forward pass whether the fused path runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch

from lightning_rank.errors import ConfigError

KernelMode = Literal["auto", "always", "never"]
INSTALL_HINT = "pip install lightning-rank[mamba]  (installs mamba-ssm and causal-conv1d; needs CUDA)"


@functools.cache
def _load() -> tuple[dict[str, Callable[..., Any]], str | None]:
    """Import the two fused entry points once; returns them, or the import error as text."""
    try:
        import causal_conv1d  # noqa: F401  (both fused paths run its conv kernel)
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
    except Exception as err:  # ImportError, or a broken CUDA build failing at import
        return {}, f"{type(err).__name__}: {err}"
    return {"mamba1": mamba_inner_fn, "mamba2": mamba_split_conv1d_scan_combined}, None


def kernels_available() -> bool:
    """True when mamba_ssm and causal_conv1d import."""
    return not _load()[1]


def kernel(name: Literal["mamba1", "mamba2"]) -> Callable[..., Any]:
    """The fused function of one generation; raises with the install hint when it does not import."""
    functions, error = _load()
    if error:
        raise ImportError(
            f"the fused Mamba kernels are not installed ({error}); install them with: {INSTALL_HINT}"
        )
    return functions[name]


def check_mode(mode: str) -> None:
    """Validate ``use_kernels`` at construction: ``"always"`` fails fast when the kernels do not import."""
    if mode not in ("auto", "always", "never"):
        raise ConfigError(f"use_kernels must be 'auto', 'always' or 'never', not {mode!r}")
    if mode == "always" and not kernels_available():
        raise ImportError(
            f"use_kernels='always' needs the fused kernels, which do not import ({_load()[1]}); "
            f"install them with: {INSTALL_HINT}, or set use_kernels='auto' to fall back to PyTorch"
        )


def should_use_kernels(mode: str, tensor: torch.Tensor) -> bool:
    """Whether this forward pass takes the fused path: kernels importable, tensors on CUDA, not ``never``."""
    if mode == "never":
        return False
    if mode == "always":
        check_mode(mode)
        if not tensor.is_cuda:
            raise RuntimeError(
                f"use_kernels='always' needs the tensors on CUDA, got {tensor.device}; move the model and "
                "batch to a GPU or set use_kernels='auto' (PyTorch path off CUDA)"
            )
        return True
    return tensor.is_cuda and kernels_available()
