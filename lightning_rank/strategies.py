"""FSDP that knows the reranker: it wraps each of the backbone's repeated blocks, whichever backbone it is.

Lightning's ``FSDPStrategy`` needs an ``auto_wrap_policy`` naming layer classes, which differ per backbone
(``BertLayer``, ``LlamaDecoderLayer``, ``MambaBlock``, a plugin's own). :class:`BackboneFSDPStrategy` reads
them from :meth:`Backbone.block_classes` when the model is set up, so one preset
(``configs/strategy/fsdp.yaml``) combines with any model config. :class:`BackboneFSDP2Strategy` does the same
with torch's FSDP2 (``fully_shard``, per-parameter sharding), which also runs on CPUs
(``configs/strategy/fsdp2.yaml``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

from lightning_rank.errors import ConfigError

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
        raise ConfigError(f"{type(backbone).__name__}.block_classes() is empty: FSDP would wrap nothing")
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


class BackboneFSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (torch's ``fully_shard``) with one unit per backbone block, one for the rest of the backbone and
    one for the head; data parallel over every process of every node, on GPUs (nccl) or CPUs (gloo).

    Unlike FSDP1 it shards each parameter on its own (frozen and trainable parameters may share a unit) and
    keeps parameter names, so checkpoints hold the same keys as a single-process run's.
    """

    strategy_name = "fsdp2_backbone"

    def __init__(
        self,
        reshard_after_forward: bool = True,
        activation_checkpointing: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        """
        Args:
            reshard_after_forward: free each unit's gathered parameters after its forward and gather them
                again for backward (ZeRO-3, least memory); ``false`` keeps them until backward (ZeRO-2-like,
                one all-gather less per step).
            activation_checkpointing: recompute each backbone block in the backward pass.
            state_dict_type: ``full``: one consolidated checkpoint file (rank 0 gathers); ``sharded``: one
                folder with a shard per rank.
            process_group_backend: ``nccl`` on GPUs (default), ``gloo`` on CPUs (default there).
            timeout_minutes: how long a collective may wait before the job fails (a stuck rank).
        """
        super().__init__(
            save_distributed_checkpoint=state_dict_type == "sharded",
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
        )
        self.reshard_after_forward = reshard_after_forward
        self.checkpoint_blocks = activation_checkpointing

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        # Pure data parallelism. ModelParallelStrategy's "auto" sizes would make the processes of a node a
        # tensor-parallel group, which needs a model the user has parallelised by hand.
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1

    def shard(self, module: nn.Module) -> None:
        """Shard ``module`` (a RerankerModule) in place: each backbone block, then the backbone, the head.

        Called from the module's ``configure_model``; a module already sharded (a second trainer entry
        point, such as fit after validate) is left as it is.
        """
        from torch.distributed.fsdp import (
            FSDPModule,
            MixedPrecisionPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        if any(isinstance(m, FSDPModule) for m in module.modules()):
            return
        classes = backbone_block_classes(module)
        if self.checkpoint_blocks:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
                apply_activation_checkpointing,
            )

            apply_activation_checkpointing(module.backbone, check_fn=lambda m: isinstance(m, classes))
        mixed = self.precision_plugin.precision == "bf16-mixed"
        options = {
            "mesh": self.device_mesh["data_parallel"],
            "reshard_after_forward": self.reshard_after_forward,
            # bf16 gathers and compute, fp32 gradient reduction and master weights
            "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if mixed
            else MixedPrecisionPolicy(),
        }
        blocks = [m for m in module.backbone.modules() if isinstance(m, classes)]
        for block in blocks:
            fully_shard(block, **options)
        fully_shard(module.backbone, **options)
        # packed batches (data.packing) enter the backbone by forward_packed: gather its parameters there too
        register_fsdp_forward_method(module.backbone, "forward_packed")
        fully_shard(module.head, **options)
        # Gradients of a parameter outside every unit would never be averaged across processes.
        outside = [
            name
            for name, param in module.named_parameters()
            if not name.startswith(("backbone.", "head.")) and param.requires_grad
        ]
        if outside:
            raise TypeError(
                f"BackboneFSDP2Strategy shards the backbone and the head only; also found {outside}"
            )

    def load_checkpoint(
        self, checkpoint_path: str | Path, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint file written by any strategy and any number of processes (or a sharded folder
        written by this one), matching optimizer states to parameters as torch numbers them. Tensors and
        plain values only (``weights_only``) unless the caller passes False."""
        from lightning.fabric.strategies.model_parallel import _load_raw_module_state
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        weights_only = weights_only is not False
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_file():
            return super().load_checkpoint(path, weights_only=weights_only)
        # Lightning's own loader numbers a file's optimizer states in the model's parameter order, but torch
        # numbers them in the optimizer's parameter-group order: with two groups (weight decay or not) a
        # single-process checkpoint would resume with moments swapped between parameters.
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        strict = self.lightning_module.strict_loading
        _load_raw_module_state(checkpoint.pop("state_dict"), self.model, strict=strict)
        options = StateDictOptions(broadcast_from_rank0=True, full_state_dict=True, strict=strict)
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", []), strict=False):
            state = optimizer_state_by_name(state, optimizer, self.model)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state, options=options)
        return checkpoint


def optimizer_state_by_name(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module
) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter ids (as ``Optimizer.state_dict`` writes it), keyed by the
    parameters' names instead: ids are matched to ``optimizer``'s parameters position by position, group by
    group, as ``Optimizer.load_state_dict`` does."""
    if not state["state"] or isinstance(next(iter(state["state"])), str):
        return state
    names = {param: name for name, param in model.named_parameters()}
    saved = [group["params"] for group in state["param_groups"]]
    current = [group["params"] for group in optimizer.param_groups]
    if [len(g) for g in saved] != [len(g) for g in current]:
        raise ConfigError(
            f"the checkpoint's optimizer has parameter groups of sizes {[len(g) for g in saved]}, this "
            f"model's {[len(g) for g in current]}: it belongs to another model or other frozen parameters"
        )
    by_id = {
        i: names[p]
        for ids, params in zip(saved, current, strict=True)
        for i, p in zip(ids, params, strict=True)
    }
    return {
        "state": {by_id[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [by_id[i] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
