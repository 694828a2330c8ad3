"""Mamba-1 and Mamba-2 mixers: mamba_ssm's parameters, a fused-kernel path and a pure-PyTorch path.

Parameter names and shapes are exactly mamba_ssm's (``Mamba`` in ``modules/mamba_simple.py`` and ``Mamba2``
in ``modules/mamba2.py``), so checkpoints load without renaming inside a layer. ``forward(h, use_kernels)``
takes the fused path (``mamba_inner_fn`` / ``mamba_split_conv1d_scan_combined``, called as mamba_ssm's
modules call them) or the PyTorch path (:mod:`.scan`); both compute the same function.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_rank.backbones.mamba.config import Mamba1Config, Mamba2Config
from lightning_rank.backbones.mamba.kernels import kernel
from lightning_rank.backbones.mamba.scan import SSD_CHUNK, selective_scan, ssd_chunked


def causal_conv1d(x: Tensor, conv: nn.Conv1d, positions: Tensor | None = None) -> Tensor:
    """Depthwise causal convolution plus SiLU of ``x: [B, L, C]`` (left padding, so no future leaks in).

    ``positions: [B, L]``, each token's position within its packed sequence: a tap reaching back past the
    sequence's first token reads zero, as at the start of a row."""
    width = conv.weight.shape[-1]
    if positions is None:
        out = F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), conv.weight, conv.bias, groups=conv.groups)
        return F.silu(out).transpose(1, 2)
    taps = conv.weight[:, 0]  # [C, width]; tap width - 1 - j reads x[t - j]
    out = x * taps[:, -1]
    for j in range(1, width):
        earlier = F.pad(x, (0, 0, j, 0))[:, : x.shape[1]]  # x[t - j]
        out = out + earlier * (positions >= j).unsqueeze(-1).to(x.dtype) * taps[:, width - 1 - j]
    if conv.bias is not None:
        out = out + conv.bias
    return F.silu(out)


def _inverse_softplus_dt(n: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """A dt bias whose softplus is log-uniform in ``[dt_min, dt_max]`` (mamba_ssm's initialisation)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba1Mixer(nn.Module):
    """Mamba-1 selective SSM mixer (``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``)."""

    def __init__(self, config: Mamba1Config) -> None:
        super().__init__()
        self.config = config
        d_inner, n = config.d_inner, config.d_state
        self.dt_rank = config.dt_rank
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1, bias=config.conv_bias
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, n))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real ``A``, unit ``D`` and mamba_ssm's dt initialisation (variance-preserving weights)."""
        cfg = self.config
        self.A_log.copy_(
            torch.log(torch.arange(1, cfg.d_state + 1, dtype=torch.float32)).expand_as(self.A_log)
        )
        self.D.fill_(1.0)
        std = self.dt_rank**-0.5 * cfg.dt_scale
        if cfg.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.dt_proj.bias.copy_(_inverse_softplus_dt(cfg.d_inner, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

    def forward(self, hidden: Tensor, use_kernels: bool = False, positions: Tensor | None = None) -> Tensor:
        """``[B, L, d_model] -> [B, L, d_model]``; ``positions`` (packed rows, PyTorch path): each token's
        position within its sequence, whose first token starts from a zero state."""
        return self._forward_kernels(hidden) if use_kernels else self._forward_torch(hidden, positions)

    def _forward_kernels(self, hidden: Tensor) -> Tensor:
        # As mamba_simple.Mamba.forward: xz is [B, 2 d_inner, L] with L contiguous.
        xz = self.in_proj(hidden).transpose(1, 2).contiguous()
        A = -torch.exp(self.A_log.float())
        return kernel("mamba1")(
            xz,
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            A,
            None,  # input-dependent B
            None,  # input-dependent C
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )

    def _forward_torch(self, hidden: Tensor, positions: Tensor | None = None) -> Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = causal_conv1d(x, self.conv1d, positions)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.config.d_state, self.config.d_state], dim=-1)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float())
        A = -torch.exp(self.A_log.float())
        resets = None if positions is None else positions == 0
        y = selective_scan(x, delta, A, B, C, resets=resets)  # fp32
        y = (y + x * self.D.float()) * F.silu(z.float())
        return self.out_proj(y.to(x.dtype))


class GatedRMSNorm(nn.Module):
    """mamba_ssm's gated RMSNorm (``layernorm_gated.RMSNorm``): ``norm(x * silu(z)) * w`` per group."""

    def __init__(self, dim: int, eps: float, group_size: int, norm_before_gate: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        x = x.float()
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.float())
        if self.group_size == x.shape[-1]:
            x = F.rms_norm(x, (self.group_size,), self.weight.float(), self.eps)
        else:
            grouped = x.unflatten(-1, (-1, self.group_size))
            x = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
            x = x * self.weight.float()
        if z is not None and self.norm_before_gate:
            x = x * F.silu(z.float())
        return x.to(dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 SSD mixer (``in_proj, conv1d, dt_bias, A_log, D, norm, out_proj``)."""

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.d_ssm, self.nheads, self.headdim, self.ngroups = (
            cfg.ssm_dim,
            cfg.nheads,
            cfg.headdim,
            cfg.ngroups,
        )
        conv_dim = self.d_ssm + 2 * cfg.ngroups * cfg.d_state
        # in_proj output order: [z0, x0 (gated MLP, when d_ssm < d_inner), z, x, B, C, dt]
        d_in_proj = 2 * cfg.d_inner + 2 * cfg.ngroups * cfg.d_state + self.nheads
        self.in_proj = nn.Linear(cfg.d_model, d_in_proj, bias=cfg.bias)
        self.conv1d = nn.Conv1d(
            conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1, bias=cfg.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.d_ssm if cfg.D_has_hdim else self.nheads))
        if cfg.rmsnorm:
            self.norm = GatedRMSNorm(
                self.d_ssm, cfg.norm_epsilon, self.d_ssm // cfg.ngroups, cfg.norm_before_gate
            )
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """``A`` uniform in ``A_init_range``, unit ``D``, mamba_ssm's dt bias initialisation."""
        cfg = self.config
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(*cfg.A_init_range)))
        self.D.fill_(1.0)
        self.dt_bias.copy_(_inverse_softplus_dt(self.nheads, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))

    def forward(self, hidden: Tensor, use_kernels: bool = False, positions: Tensor | None = None) -> Tensor:
        """``[B, L, d_model] -> [B, L, d_model]``; ``positions`` (packed rows, PyTorch path): each token's
        position within its sequence, whose first token starts from a zero state."""
        return self._forward_kernels(hidden) if use_kernels else self._forward_torch(hidden, positions)

    def _dt_limit_kwargs(self) -> dict[str, tuple[float, float]]:
        limit = tuple(self.config.dt_limit)
        return {} if limit == (0.0, math.inf) else {"dt_limit": limit}  # type: ignore[dict-item]

    def _forward_kernels(self, hidden: Tensor) -> Tensor:
        # As mamba2.Mamba2.forward's use_mem_eff_path branch (no sequence index, no inference cache).
        cfg = self.config
        if cfg.norm_impl == "torch" and cfg.rmsnorm and not cfg.norm_before_gate:
            # The scan applies the gate y * silu(z); RMSNorm and out-projection follow in PyTorch.
            return self.out_proj(self.norm(self._fused_scan(hidden)))
        return self._fused_scan(
            hidden,
            rmsnorm_weight=self.norm.weight if cfg.rmsnorm else None,
            rmsnorm_eps=self.norm.eps if cfg.rmsnorm else 1e-6,
            outproj_weight=self.out_proj.weight,
            outproj_bias=self.out_proj.bias,
            norm_before_gate=cfg.norm_before_gate,
        )

    def _fused_scan(self, hidden: Tensor, **fused: Any) -> Tensor:
        """mamba_ssm's ``mamba_split_conv1d_scan_combined`` on ``in_proj(hidden)``; ``fused`` adds its norm
        and out-projection arguments (without them it returns the gated scan output)."""
        cfg = self.config
        return kernel("mamba2")(
            self.in_proj(hidden),
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            self.dt_bias,
            -torch.exp(self.A_log.float()),
            D=self.D.view(self.nheads, self.headdim) if cfg.D_has_hdim else self.D,
            chunk_size=cfg.chunk_size,
            activation="silu",
            headdim=None if cfg.D_has_hdim else self.headdim,
            ngroups=self.ngroups,
            **self._dt_limit_kwargs(),
            **fused,
        )

    def _forward_torch(self, hidden: Tensor, positions: Tensor | None = None) -> Tensor:
        cfg = self.config
        batch, length, _ = hidden.shape
        gn = self.ngroups * cfg.d_state
        zxbcdt = self.in_proj(hidden)
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * gn - self.nheads) // 2
        z0, x0, z, xBC, dt = zxbcdt.split(
            [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * gn, self.nheads], dim=-1
        )
        x, B, C = causal_conv1d(xBC, self.conv1d, positions).split([self.d_ssm, gn, gn], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if limit := self._dt_limit_kwargs():
            dt = dt.clamp(*limit["dt_limit"])
        heads = x.view(batch, length, self.nheads, self.headdim)
        y = ssd_chunked(
            heads,
            dt,
            -torch.exp(self.A_log.float()),
            B.view(batch, length, self.ngroups, cfg.d_state),
            C.view(batch, length, self.ngroups, cfg.d_state),
            chunk=min(
                cfg.chunk_size, SSD_CHUNK
            ),  # any chunk gives the same result; small ones are fast on CPU
            segments=None if positions is None else torch.cumsum(positions == 0, dim=1),
        )
        D = self.D.float().view(self.nheads, -1)  # [h, 1] or [h, p]
        y = (y + heads * D).reshape(batch, length, self.d_ssm)
        y = self.norm(y, z) if cfg.rmsnorm else y * F.silu(z.float())
        if d_mlp > 0:
            y = torch.cat([F.silu(z0.float()) * x0, y], dim=-1)
        return self.out_proj(y.to(x.dtype))
