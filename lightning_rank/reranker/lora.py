"""LoRA adapters (peft) on a backbone, and merging them away for export."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from lightning_rank.errors import ConfigError


@dataclass
class LoraSettings:
    """LoRA on the backbone's linear layers; the backbone's own weights stay frozen, the head trains fully.

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input.
        target_modules: module names to adapt; default: the backbone's ``lora_target_modules``.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None


def add_lora(backbone: nn.Module, settings: LoraSettings) -> list[str]:
    """Inject adapters into ``backbone`` and freeze everything else in it; returns the target names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("model.lora needs peft: pip install 'lightning-rank[lora]'") from err
    targets = list(settings.target_modules or getattr(backbone, "lora_target_modules", ()))
    if not targets:
        raise ConfigError(
            f"{type(backbone).__name__} has no default LoRA target modules: set model.lora.target_modules"
        )
    backbone.check_lora_targets(targets)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets
    )
    inject_adapter_in_model(config, backbone)
    adapted = 0
    for name, param in backbone.named_parameters():
        param.requires_grad_("lora_" in name)
        adapted += "lora_" in name
    if not adapted:
        raise ConfigError(
            f"model.lora.target_modules {targets} matched no module of {type(backbone).__name__}"
        )
    return targets


def merged_copy(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every LoRA adapter merged into its base layer and the wrappers removed,
    so its state dict has the original names (transformers' AutoModel loads its save_pretrained)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return backbone
    if not any(isinstance(m, LoraLayer) for m in backbone.modules()):
        return backbone
    merged = copy.deepcopy(backbone)
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged
