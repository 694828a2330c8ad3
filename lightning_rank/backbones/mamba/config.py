"""Configs of the Mamba-1 and Mamba-2 backbones, readable from and writable to both checkpoint layouts.

The field names follow mamba_ssm (``d_model``, ``n_layer``, ``ssm_cfg`` keys such as ``d_state``), because
the parameter names do too; :meth:`from_transformers` / :meth:`to_transformers` translate transformers'
``MambaConfig`` / ``Mamba2Config`` dictionaries (``hidden_size``, ``state_size``, ...).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from lightning_rank.errors import ConfigError

# Keys of mamba_ssm's MixerModel config (config.json at the top level); everything else lives in ssm_cfg.
_TOP_LEVEL = (
    "d_model",
    "n_layer",
    "vocab_size",
    "rms_norm",
    "residual_in_fp32",
    "fused_add_norm",
    "pad_vocab_size_multiple",
    "tie_embeddings",
)


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (the embedding padding mamba_ssm applies)."""
    return value if multiple <= 1 else math.ceil(value / multiple) * multiple


def _json_float(value: Any) -> float:
    """A float from JSON, including transformers 5's ``{"__float__": "Infinity"}`` encoding."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


_SCALAR_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool}


def _from_text(text: str, kind: type) -> int | float | bool | None:
    """``text`` read as ``kind``, or None when it is not one."""
    if kind is bool:
        return {"true": True, "false": False}.get(text.strip().lower())
    try:
        return kind(text)
    except ValueError:
        return None


@dataclass
class _BaseConfig:
    """Fields shared by both generations (MixerModel level)."""

    layer: ClassVar[str] = ""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50280
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    initializer_range: float = 0.02
    #: Execution only (never saved): ``compiled`` runs each block's pre-norm and padding mask as one
    #: torch.compile'd function instead of eager element-wise kernels.
    block_norm: str = "eager"

    def __post_init__(self) -> None:
        self._check_types()
        if not self.rms_norm:
            raise ConfigError(
                "only RMSNorm Mamba models are supported (rms_norm=True), as in the released ones"
            )
        if self.block_norm not in ("eager", "compiled"):
            raise ConfigError(f"block_norm must be 'eager' or 'compiled', not {self.block_norm!r}")

    def _check_types(self) -> None:
        """Each int, float and bool field holds one; a number given as text (a command-line override such
        as ``--model.backbone_args.config.d_model 16``) is read as that number, anything else is named."""
        for f in dataclasses.fields(self):
            kind = _SCALAR_TYPES.get(str(f.type))
            value = getattr(self, f.name)
            if kind is None or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
                continue
            parsed = _from_text(value, kind) if isinstance(value, str) else None
            if parsed is None:
                raise ConfigError(
                    f"{type(self).__name__}.{f.name} must be {kind.__name__}, got {value!r}; "
                    f"set e.g. {f.name}: {f.default!r} in the backbone's config"
                )
            setattr(self, f.name, parsed)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def _check_keys(cls, values: dict[str, Any]) -> None:
        unknown = set(values) - cls.field_names()
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(cls.field_names())}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """A config from mamba_ssm-named values (a flat dict); unknown keys raise with the known ones."""
        cls._check_keys(values)
        return cls(**values)

    def replace(self, **overrides: Any) -> Self:
        """A copy with ``overrides`` applied (e.g. on a pretrained config); unknown keys raise."""
        self._check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    # mamba_ssm layout -------------------------------------------------------------------------------
    @classmethod
    def from_mamba_ssm(cls, raw: dict[str, Any]) -> Self:
        """Read mamba_ssm's ``config.json`` (MambaConfig of mamba_ssm.models.config_mamba)."""
        if raw.get("d_intermediate", 0):
            raise ConfigError("mamba_ssm checkpoints with MLP layers (d_intermediate > 0) are not supported")
        if raw.get("attn_layer_idx"):
            raise ConfigError("hybrid mamba_ssm checkpoints with attention layers are not supported")
        known = cls.field_names()
        values = {k: v for k, v in raw.items() if k in _TOP_LEVEL and k in known}
        ssm_cfg = dict(raw.get("ssm_cfg") or {})
        ssm_cfg.pop("layer", None)
        for key, value in ssm_cfg.items():
            if key in known:
                values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    #: Keys of ``ssm_cfg`` that mamba_ssm's mixer accepts (it rejects any other keyword).
    _SSM_KEYS: ClassVar[tuple[str, ...]] = ()

    def to_mamba_ssm(self) -> dict[str, Any]:
        """mamba_ssm's ``config.json``: MixerModel keys at the top level, the mixer's in ``ssm_cfg``.

        Only keys that mamba_ssm's config dataclass and mixer accept are written, so mamba_ssm itself can load
        the folder; ``norm_epsilon`` has no place there (mamba_ssm fixes it at 1e-5).
        """
        values = dataclasses.asdict(self)
        # mamba_ssm 2.x defaults to "Mamba1" and 1.x rejects the key: name the layer for Mamba-2 only.
        ssm_cfg: dict[str, Any] = {} if self.layer == "Mamba1" else {"layer": self.layer}
        for key in self._SSM_KEYS:
            value = values[key]
            ssm_cfg[key] = list(value) if isinstance(value, tuple) else value
        # float("inf") is not JSON; mamba_ssm's default dt_limit is (0, inf), so leave it out then.
        if ssm_cfg.get("dt_limit") == [0.0, math.inf]:
            ssm_cfg.pop("dt_limit")
        top = {k: values[k] for k in _TOP_LEVEL if k != "tie_embeddings"}
        return {**top, "ssm_cfg": ssm_cfg}

    def _transformers_common(self) -> dict[str, Any]:
        """The keys transformers' MambaConfig and Mamba2Config share, mapped from mamba_ssm's names."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "state_size": self.d_state,
            "num_hidden_layers": self.n_layer,
            "layer_norm_epsilon": self.norm_epsilon,
            "expand": self.expand,
            "conv_kernel": self.d_conv,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "residual_in_fp32": self.residual_in_fp32,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            "tie_word_embeddings": self.tie_embeddings,
        }


@dataclass
class Mamba1Config(_BaseConfig):
    """Mamba-1 (selective scan) hyper-parameters; ``dt_rank`` 0 means ``ceil(d_model / 16)``."""

    layer: ClassVar[str] = "Mamba1"
    _SSM_KEYS: ClassVar[tuple[str, ...]] = (
        "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
        "conv_bias", "bias",
    )  # fmt: skip

    dt_rank: int = 0
    dt_scale: float = 1.0
    dt_init: str = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dt_rank in (0, "auto"):
            self.dt_rank = math.ceil(self.d_model / 16)

    @classmethod
    def from_transformers(cls, raw: dict[str, Any]) -> Mamba1Config:
        """Read transformers' ``MambaConfig`` dictionary (model_type ``mamba``)."""
        rank = raw.get("time_step_rank", "auto")
        return cls(
            d_model=raw["hidden_size"],
            n_layer=raw.get("num_hidden_layers", raw.get("n_layer")),
            vocab_size=raw["vocab_size"],
            d_state=raw.get("state_size", 16),
            d_conv=raw.get("conv_kernel", 4),
            expand=raw.get("expand", 2),
            conv_bias=raw.get("use_conv_bias", True),
            bias=raw.get("use_bias", False),
            norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=raw.get("residual_in_fp32", True),
            pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
            dt_rank=0 if rank == "auto" else int(rank),
            dt_min=raw.get("time_step_min", 0.001),
            dt_max=raw.get("time_step_max", 0.1),
            dt_init_floor=raw.get("time_step_floor", 1e-4),
            dt_scale=raw.get("time_step_scale", 1.0),
            dt_init=raw.get("time_step_init_scheme", "random"),
        )

    def to_transformers(self) -> dict[str, Any]:
        """Keyword arguments of transformers' ``MambaConfig``."""
        return {
            **self._transformers_common(),
            "time_step_rank": self.dt_rank,
            "time_step_scale": self.dt_scale,
            "time_step_init_scheme": self.dt_init,
        }


@dataclass
class Mamba2Config(_BaseConfig):
    """Mamba-2 (SSD) hyper-parameters, mamba_ssm's ``Mamba2`` defaults."""

    layer: ClassVar[str] = "Mamba2"
    _SSM_KEYS: ClassVar[tuple[str, ...]] = (
        "d_state", "d_conv", "expand", "headdim", "d_ssm", "ngroups", "A_init_range", "D_has_hdim",
        "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias", "conv_bias",
        "chunk_size",
    )  # fmt: skip

    d_state: int = 128
    pad_vocab_size_multiple: int = 16
    headdim: int = 64
    ngroups: int = 1
    d_ssm: int | None = None
    A_init_range: tuple[float, float] = (1.0, 16.0)
    D_has_hdim: bool = False
    rmsnorm: bool = True
    norm_before_gate: bool = False
    dt_limit: tuple[float, float] = field(default=(0.0, math.inf))
    chunk_size: int = 256
    #: Execution only (never saved), fused-kernel path: ``fused`` normalises inside mamba_ssm's combined
    #: kernel (its Triton gated RMSNorm, then the out-projection); ``torch`` gates inside the SSD scan and
    #: runs the RMSNorm and out-projection in PyTorch. Same function either way; on an H100 ``torch`` was
    #: 5% slower and took 40% more memory (benchmarks/RESULTS.md), so ``fused`` stays the default.
    norm_impl: str = "fused"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm_impl not in ("fused", "torch"):
            raise ConfigError(f"norm_impl must be 'fused' or 'torch', not {self.norm_impl!r}")
        self.A_init_range = tuple(self.A_init_range)  # type: ignore[assignment]
        self.dt_limit = tuple(self.dt_limit)  # type: ignore[assignment]
        if self.ssm_dim % self.headdim:
            raise ConfigError(f"d_ssm ({self.ssm_dim}) must be a multiple of headdim ({self.headdim})")
        if self.nheads % self.ngroups:
            raise ConfigError(f"nheads ({self.nheads}) must be a multiple of ngroups ({self.ngroups})")

    @property
    def ssm_dim(self) -> int:
        """Channels that go through the SSM (``d_ssm``, all of ``d_inner`` by default)."""
        return self.d_inner if self.d_ssm is None else self.d_ssm

    @property
    def nheads(self) -> int:
        return self.ssm_dim // self.headdim

    def to_mamba_ssm(self) -> dict[str, Any]:
        """As the base, plus the MixerModel keys that mamba_ssm 2.x (which introduced Mamba-2) has."""
        raw = super().to_mamba_ssm()
        return {
            **raw,
            "d_intermediate": 0,
            "attn_layer_idx": [],
            "attn_cfg": {},
            "tie_embeddings": self.tie_embeddings,
        }

    @classmethod
    def from_transformers(cls, raw: dict[str, Any]) -> Mamba2Config:
        """Read transformers' ``Mamba2Config`` dictionary (model_type ``mamba2``)."""
        hidden, expand = raw["hidden_size"], raw.get("expand", 2)
        heads, headdim = raw.get("num_heads"), raw.get("head_dim", 64)
        if heads is not None and heads * headdim != expand * hidden:
            raise ConfigError(f"num_heads * head_dim ({heads * headdim}) != expand * hidden_size")
        limit = [_json_float(v) for v in raw.get("time_step_limit", (0.0, math.inf))]
        return cls(
            d_model=hidden,
            n_layer=raw.get("num_hidden_layers", raw.get("n_layer")),
            vocab_size=raw["vocab_size"],
            d_state=raw.get("state_size", 128),
            d_conv=raw.get("conv_kernel", 4),
            expand=expand,
            headdim=headdim,
            ngroups=raw.get("n_groups", 8),  # transformers' default
            conv_bias=raw.get("use_conv_bias", True),
            bias=raw.get("use_bias", False),
            norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=raw.get("residual_in_fp32", True),
            pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 16),
            dt_min=raw.get("time_step_min", 0.001),
            dt_max=raw.get("time_step_max", 0.1),
            dt_init_floor=raw.get("time_step_floor", 1e-4),
            dt_limit=tuple(limit),
            chunk_size=raw.get("chunk_size", 256),
        )

    def to_transformers(self) -> dict[str, Any]:
        """Keyword arguments of transformers' ``Mamba2Config``; options it lacks raise."""
        unsupported = {
            "d_ssm": self.d_ssm not in (None, self.d_inner),
            "D_has_hdim": self.D_has_hdim,
            "rmsnorm=False": not self.rmsnorm,
            "norm_before_gate": self.norm_before_gate,
        }
        if any(unsupported.values()):
            names = [k for k, v in unsupported.items() if v]
            raise ConfigError(
                f"transformers' Mamba2 has no equivalent of {names}; save with layout='mamba_ssm'"
            )
        return {
            **self._transformers_common(),
            "n_groups": self.ngroups,
            "num_heads": self.nheads,
            "head_dim": self.headdim,
            "time_step_limit": list(self.dt_limit),
            "chunk_size": self.chunk_size,
        }


MambaConfig = Mamba1Config | Mamba2Config
