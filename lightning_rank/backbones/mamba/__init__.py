"""Mamba-1 and Mamba-2 backbones: mamba_ssm's parameter layout, fused CUDA kernels or a fast PyTorch path.

Entry points ``mamba1`` and ``mamba2`` (group ``lightning_rank.backbones``) name the two classes below.
"""

from lightning_rank.backbones.mamba.backbone import Mamba1Backbone, Mamba2Backbone
from lightning_rank.backbones.mamba.config import Mamba1Config, Mamba2Config

__all__ = ["Mamba1Backbone", "Mamba1Config", "Mamba2Backbone", "Mamba2Config"]
