"""FSDP that knows the reranker: it wraps each of the backbone's repeated blocks, whichever backbone it is.

Lightning's ``FSDPStrategy`` needs an ``auto_wrap_policy`` naming layer classes, which differ per backbone
(``BertLayer``, ``LlamaDecoderLayer``, ``MambaBlock``, a plugin's own). :class:`BackboneFSDPStrategy` reads
them from :meth:`Backbone.block_classes` when the model is set up, so one preset
(``configs/strategy/fsdp.yaml``) combines with any model config.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

ShardingStrategy = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"]


def backbone_block_classes(module: nn.Module) -> tuple[type[nn.Module], ...]:
    """The repeated layer classes of a RerankerModule's ``backbone``, to wrap and to recompute."""
    backbone = getattr(module, "backbone", None)
    if backbone is None or not hasattr(backbone, "block_classes"):
        raise TypeError(
            f"BackboneFSDPStrategy needs a LightningModule with a lightning-rank `backbone`, got "
            f"{type(module).__name__}; use Lightning's FSDPStrategy with an explicit auto_wrap_policy instead"
        )
    classes = tuple(backbone.block_classes())
    if not classes:
        raise ValueError(f"{type(backbone).__name__}.block_classes() is empty: FSDP would wrap nothing")
    return classes


class BackboneFSDPStrategy(FSDPStrategy):
    """Fully sharded data parallel with one FSDP unit per backbone block (and the rest in the root unit).

    Mixed precision comes from the trainer's ``precision`` (``bf16-mixed``: fp32 master weights, bf16
    compute and gradient reduction), as with Lightning's own FSDP.
    """

    strategy_name = "fsdp_backbone"

    def __init__(
        self,
        sharding_strategy: ShardingStrategy = "FULL_SHARD",
        activation_checkpointing: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        cpu_offload: bool = False,
        limit_all_gathers: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        """
        Args:
            sharding_strategy: ``FULL_SHARD`` (ZeRO-3: parameters, gradients and optimizer state sharded),
                ``SHARD_GRAD_OP`` (ZeRO-2), ``NO_SHARD`` (as DDP) or ``HYBRID_SHARD`` (full shard within a
                node, replicate across nodes).
            activation_checkpointing: Recompute each backbone block in the backward pass (less memory, about
                a third more compute).
            state_dict_type: ``full``: one consolidated checkpoint file (rank 0 gathers); ``sharded``: one
                folder with a shard per rank (faster and lighter for large models; resume needs the same
                world size).
            cpu_offload: Keep parameters and gradients in CPU memory between uses (fits larger models,
                much slower).
            limit_all_gathers: Rate-limit parameter all-gathers so memory stays bounded.
            process_group_backend: ``nccl`` on GPUs (default), ``gloo`` on CPUs.
            timeout_minutes: How long a collective may wait before the job fails (a stuck rank).
        """
        super().__init__(
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            limit_all_gathers=limit_all_gathers,
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
        )
        self.checkpoint_blocks = activation_checkpointing

    def apply_backbone_policy(self, module: nn.Module) -> tuple[type[nn.Module], ...]:
        """Set the wrap (and recompute) policy from ``module``'s backbone blocks; returns the classes."""
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = backbone_block_classes(module)
        self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(set(classes))
        if self.checkpoint_blocks:
            self._activation_checkpointing_kwargs = {"check_fn": lambda m: isinstance(m, classes)}
        return classes

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        # Each trainer entry point (validate before fit, fit, validate after) sets the model up again; once
        # its blocks are FSDP units, Lightning keeps the wrapping and the policy has nothing to select.
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            wrapped = not isinstance(model, LightningModule) and hasattr(model, "module")
            self.apply_backbone_policy(model.module if wrapped else model)
        return super()._setup_model(model)
