"""The Mamba stack: embedding, pre-norm residual blocks and a final RMSNorm, with mamba_ssm's names.

Inside a :class:`~lightning_rank.backbones.mamba.backbone.Mamba1Backbone` this module sits at ``backbone``,
so its state dict reads ``backbone.embedding.weight``, ``backbone.layers.{i}.norm.weight``,
``backbone.layers.{i}.mixer.*`` and ``backbone.norm_f.weight``, as mamba_ssm's ``MambaLMHeadModel`` (no LM
head: a reranker pools hidden states).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_rank.backbones.mamba.config import Mamba2Config, MambaConfig
from lightning_rank.backbones.mamba.kernels import check_mode, should_use_kernels
from lightning_rank.backbones.mamba.mixers import Mamba1Mixer, Mamba2Mixer

PACKED_KERNELS = (
    "packed rows reset the state at each sequence, which this project's calls of the fused mamba_ssm "
    "kernels do not do yet: set backbone_args.use_kernels: never (the PyTorch path) or drop data.packing"
)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, returned in the input dtype (as the 130m checkpoints use)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def _pre_norm(hidden: Tensor, weight: Tensor, eps: float, mask: Tensor | None) -> Tensor:
    """A block's input: RMSNorm in fp32 (back in the weight's dtype), pad positions zeroed."""
    normed = F.rms_norm(hidden.float(), (hidden.shape[-1],), weight.float(), eps).to(weight.dtype)
    # Right padding: zero pad positions before in_proj/conv so nothing from them enters a state.
    return normed if mask is None else normed * mask.unsqueeze(-1).to(normed.dtype)


@functools.cache
def _compiled_pre_norm() -> Callable[..., Tensor]:
    return torch.compile(_pre_norm, dynamic=True)


class MambaBlock(nn.Module):
    """``h + mixer(norm(h))`` with padding zeroed before the mixer; the residual stream may stay in fp32.

    The unit that FSDP wraps and activation checkpointing recomputes.
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.compiled_norm = config.block_norm == "compiled"
        self.norm = RMSNorm(config.d_model, config.norm_epsilon)
        self.mixer: nn.Module = (
            Mamba2Mixer(config) if isinstance(config, Mamba2Config) else Mamba1Mixer(config)
        )

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor | None = None,
        use_kernels: bool = False,
        positions: Tensor | None = None,
    ) -> Tensor:
        """``hidden``: the residual stream ``[B, L, d_model]``; ``mask``: ``[B, L]``, 1 for real tokens;
        ``positions``: packed rows only, each token's position within its sequence."""
        pre_norm = _compiled_pre_norm() if self.compiled_norm else _pre_norm
        mixed = pre_norm(hidden, self.norm.weight, self.norm.eps, mask)
        residual = hidden.float() if self.residual_in_fp32 else hidden
        return residual + self.mixer(mixed, use_kernels=use_kernels, positions=positions)


class MambaModel(nn.Module):
    """mamba_ssm's ``MixerModel`` (embedding, blocks, ``norm_f``) with two execution paths per mixer."""

    def __init__(self, config: MambaConfig, use_kernels: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_epsilon)
        check_mode(use_kernels)
        self.use_kernels = use_kernels
        self.gradient_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba_ssm's ``_init_weights``: normal embedding, zero linear biases (not dt's), out_proj scaled."""
        nn.init.normal_(self.embedding.weight, std=self.config.initializer_range)
        for name, module in self.named_modules():
            bias = getattr(module, "bias", None) if isinstance(module, nn.Linear) else None
            if bias is not None and not getattr(bias, "_no_reinit", False):
                nn.init.zeros_(bias)
            if name.endswith("out_proj"):
                # GPT-2 style rescaling of the residual branch: one residual per layer (no MLP).
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                module.weight /= math.sqrt(self.config.n_layer)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """Final-normed hidden states ``[B, L, d_model]`` of right-padded ``input_ids``; with
        ``position_ids`` (packed rows: positions within each sequence), each sequence starts from a zero
        state and convolution window (PyTorch path only)."""
        hidden = self.embedding(input_ids)
        use_kernels = should_use_kernels(self.use_kernels, hidden)
        if position_ids is not None and use_kernels:
            raise NotImplementedError(PACKED_KERNELS)
        mask = None if attention_mask is None else attention_mask.to(hidden.dtype)
        for block in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(block, hidden, mask, use_kernels, position_ids, use_reentrant=False)
            else:
                hidden = block(hidden, mask, use_kernels, position_ids)
        return self.norm_f(hidden.to(self.norm_f.weight.dtype))
