"""The reranker's default optimization: AdamW on two parameter groups and a warm-up/decay schedule.

Weight decay applies to matrices only: biases, norms and the parameters a backbone marks
``_no_weight_decay`` (Mamba's ``A_log``, ``D``, ``dt_bias``, as in mamba_ssm) are exempt. The schedule is one
of ``transformers.get_scheduler``'s (``linear``, the default, rises linearly over the warm-up and decays
linearly to 0 at the last step). A resumed fit gets the user's ``lr`` and ``weight_decay`` back over the
restored optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_rank.errors import ConfigError, check_sizes

#: transformers' schedules that are a factor of the step (a LambdaLR); reduce_lr_on_plateau and greedy are not
SCHEDULES = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
)  # fmt: skip


def check_optimizer_settings(
    lr: float,
    warmup: float,
    weight_decay: float,
    scheduler: str = "linear",
    scheduler_args: dict | None = None,
) -> None:
    """Negative rates, an unknown schedule or arguments it does not take fail at configuration, before the
    backbone is built (the schedule is tried on a one-parameter optimizer)."""
    check_sizes("model.", minimum=0, lr=lr, warmup=warmup, weight_decay=weight_decay)
    if scheduler not in SCHEDULES:
        raise ConfigError(
            f"model.scheduler {scheduler!r} is not a schedule of transformers.get_scheduler that steps with "
            f"the batch; choose one of {', '.join(SCHEDULES)}"
        )
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        warmup_schedule(probe, warmup, 10, scheduler, scheduler_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"model.scheduler_args {scheduler_args!r} do not fit model.scheduler {scheduler!r} ({err}); see "
            f"transformers' get_{scheduler}_schedule for the arguments it takes beyond the warm-up and the "
            "step count"
        ) from err


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters exempt from weight decay: 1-D ones, norms, and those marked
    ``_no_weight_decay``. Decided on the unsharded model: FSDP replaces parameters (dropping the mark) and
    FSDP1 flattens them (every shard is 1-D), after which neither the marks nor the shapes tell."""
    return {
        name
        for name, param in model.named_parameters()
        if param.ndim < 2 or "norm" in name.lower() or getattr(param, "_no_weight_decay", False)
    }


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], exempt: set[str], weight_decay: float
) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: ``weight_decay`` on all but the ``exempt`` names, none on
    those (names compared as in the unwrapped model)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (no_decay if _unwrapped_name(name) in exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_optimizer(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """AdamW with ``lr``; the fused CUDA implementation (one kernel a step) when weights are on a GPU."""
    on_cuda = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=on_cuda or None)


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup: float,
    total_steps: float,
    scheduler: str = "linear",
    scheduler_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lightning's optimizer configuration: ``optimizer`` stepped per batch on ``scheduler``, a schedule of
    ``transformers.get_scheduler``; ``warmup`` is a fraction of ``total_steps`` if < 1, else a step count.

    Step ``s`` takes the factor transformers gives step ``s + 1`` of a schedule one step longer (warm-up
    included), so no step is spent at a learning rate of 0: the first of ``w`` warm-up steps runs at
    ``lr / (w + 1)``, and ``linear`` is ``(s + 1) / (w + 1)`` in the warm-up, ``(total - s) / (total - w)``
    after it."""
    from transformers import get_scheduler

    total = max(int(total_steps), 1)
    warmup_steps = int(warmup * total) if warmup < 1 else int(warmup)
    factors = get_scheduler(
        scheduler, optimizer, warmup_steps + 1, total + 1, scheduler_specific_kwargs=scheduler_args
    )
    if not isinstance(factors, LambdaLR):
        raise ConfigError(f"model.scheduler {scheduler!r} is not a per-step factor (LambdaLR)")
    schedule = LambdaLR(optimizer, [partial(_one_step_on, f) for f in factors.lr_lambdas])
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the next step applies (that of the first parameter group)."""
    return float(optimizer.param_groups[0]["lr"])


def retune_resumed_optimizer(module: Any) -> None:
    """Give a resumed default optimizer the module's ``lr`` and ``weight_decay``: its restored state holds the
    checkpoint's, so without this ``--model.lr`` given with ``--ckpt_path`` would change nothing. A no-op
    when they are the checkpoint's (an exact resume) or for a fresh optimizer."""
    if getattr(module, "optimizer_factory", None) is not None:
        return  # the user's own optimizer factory: its settings are in the factory, not in lr
    lr, weight_decay = module.hparams.lr, module.hparams.weight_decay
    for config in module.trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, LambdaLR):
            continue
        groups = scheduler.optimizer.param_groups
        for i, group in enumerate(groups):
            if scheduler.base_lrs[i] != lr:
                scheduler.base_lrs[i] = group["initial_lr"] = lr
                group["lr"] = lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
        if groups and groups[0]["weight_decay"] != weight_decay:  # the decayed group comes first
            groups[0]["weight_decay"] = weight_decay


def _unwrapped_name(name: str) -> str:
    """A parameter's name as in the unwrapped model (FSDP1 and activation checkpointing insert segments)."""
    for segment in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(segment, "")
    return name


def _one_step_on(factor: Callable[[int], float], step: int) -> float:
    return factor(step + 1)
