"""The ``mamba1`` and ``mamba2`` backbones: pretrained or random Mamba stacks behind the Backbone API."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from lightning_rank.backbones.base import Backbone
from lightning_rank.backbones.mamba.config import Mamba1Config, Mamba2Config, MambaConfig, round_up
from lightning_rank.backbones.mamba.kernels import kernels_available
from lightning_rank.backbones.mamba.loading import (
    Generation,
    Layout,
    read_checkpoint,
    resolve_pretrained,
    save_checkpoint,
    tokenizer_source,
)
from lightning_rank.backbones.mamba.model import PACKED_KERNELS, MambaBlock, MambaModel
from lightning_rank.errors import ConfigError


class _MambaBackbone(Backbone):
    """Shared body of :class:`Mamba1Backbone` and :class:`Mamba2Backbone`."""

    #: the fused kernels receive x_proj, dt_proj and out_proj weights directly (an adapter there would be
    #: ignored on GPU); in_proj is called as a module on both paths, so it is the safe default
    lora_target_modules = ("in_proj",)

    def check_lora_targets(self, targets: list[str]) -> None:
        kernel_read = sorted({"x_proj", "dt_proj", "out_proj"} & set(targets))
        if kernel_read and self.backbone.use_kernels != "never":
            raise ConfigError(
                f"LoRA on {kernel_read} would be ignored by the fused Mamba kernels (they read those weights "
                "directly): adapt in_proj only, or set backbone_args.use_kernels: never"
            )

    pooling = "last"
    generation: ClassVar[Generation]
    config_class: ClassVar[type[Mamba1Config] | type[Mamba2Config]]

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        template: str | None = None,
        use_kernels: Literal["auto", "always", "never"] = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        """Build the backbone from a checkpoint or from scratch.

        Args:
            pretrained: Hub id (e.g. ``state-spaces/mamba-130m-hf``) or local folder of a checkpoint in the
                transformers or mamba_ssm layout (detected from ``config.json``). None: random initialisation.
            config: Config values with mamba_ssm names (``d_model``, ``n_layer``, ``d_state``, ``expand``,
                ...) for a random initialisation, or overrides of the checkpoint's config. ``vocab_size``
                defaults to the tokenizer's size rounded up to ``pad_vocab_size_multiple``.
            tokenizer: Hub id, folder or ``builtin:words``. Default: the checkpoint's own tokenizer, or
                ``EleutherAI/gpt-neox-20b`` for mamba_ssm checkpoints that ship none.
            template: Pair template with ``{query}`` and ``{document}``; default: the causal template.
            use_kernels: ``auto``: fused mamba_ssm/causal_conv1d kernels when installed and on CUDA, PyTorch
                otherwise; ``always``: kernels or an error; ``never``: always the PyTorch path.
            gradient_checkpointing: Recompute each block in backward to save activation memory.
        """
        super().__init__()
        overrides = dict(config or {})
        checkpoint = None
        if pretrained is not None:
            folder = resolve_pretrained(pretrained)
            checkpoint = read_checkpoint(folder)
            if checkpoint.generation != self.generation:
                raise ConfigError(
                    f"{pretrained!r} is a {checkpoint.generation} checkpoint; {type(self).__name__} loads "
                    f"{self.generation} ones (use backbone '{checkpoint.generation}')"
                )
            tokenizer = tokenizer or tokenizer_source(folder)
        self._init_text(tokenizer, pretrained, template)
        if checkpoint is not None:
            cfg = checkpoint.config.replace(**overrides)
        else:
            cfg = self.config_class.from_dict(overrides)
            if "vocab_size" not in overrides:
                cfg.vocab_size = round_up(len(self.tokenizer), cfg.pad_vocab_size_multiple)
        if len(self.tokenizer) > cfg.vocab_size:
            raise ConfigError(
                f"the tokenizer has {len(self.tokenizer)} tokens, more than the model's vocab_size "
                f"{cfg.vocab_size}"
            )
        self.backbone = MambaModel(cfg, use_kernels=use_kernels)
        if checkpoint is not None:
            self._load(checkpoint.state_dict, pretrained or "")
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()

    def _load(self, state: dict[str, Tensor], source: str) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{source!r} does not match {type(self).__name__}'s parameters: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )

    @property
    def config(self) -> MambaConfig:
        return self.backbone.config

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (MambaBlock,)

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint every block (``torch.utils.checkpoint``, non-reentrant) during training."""
        self.backbone.gradient_checkpointing = True

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x matmul parameters (no embedding lookup, no LM head) + the scan."""
        return float(self.config.n_layer * (2 * self._matmul_params() + self._scan_flops(seq_len)))

    def _matmul_params(self) -> int:
        """Multiply-accumulates per token of one layer's projections and depthwise conv."""
        mixer = self.backbone.layers[0].mixer
        linears = sum(m.weight.numel() for m in mixer.modules() if isinstance(m, nn.Linear))
        return linears + mixer.conv1d.weight.numel()

    def _scan_flops(self, seq_len: int) -> int:
        raise NotImplementedError

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Final-normed hidden states ``[B, L, H]``; ``token_type_ids`` is ignored (causal model)."""
        return self.backbone(input_ids, attention_mask)

    def packing_unsupported(self) -> str | None:
        """Packed rows run on the PyTorch path only: refused when the fused kernels may run."""
        mode = self.backbone.use_kernels
        if mode == "always" or (mode == "auto" and kernels_available()):
            return PACKED_KERNELS
        return None

    def forward_packed(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sequence_ids: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Hidden states ``[R, P, H]`` of packed rows: the scan and convolution restart at each sequence's
        first token (``position_ids == 0``), so no sequence sees the one before it."""
        return self.backbone(input_ids, (sequence_ids >= 0).long(), position_ids)

    def save_pretrained(self, folder: str | Path, layout: Layout = "transformers") -> None:
        """Write ``config.json``, the weights and the tokenizer to ``folder`` in either layout.

        ``transformers`` (the default, and what exports write): a ``MambaConfig``/``Mamba2Config``
        ``config.json`` and ``model.safetensors``; ``mamba_ssm``: config with ``d_model``/``n_layer``/
        ``ssm_cfg``/... and the pickled ``pytorch_model.bin`` that mamba_ssm's own loader reads.
        """
        folder = Path(folder)
        save_checkpoint(folder, self.config, self.state_dict(), layout)
        self.tokenizer.save_pretrained(str(folder))


class Mamba1Backbone(_MambaBackbone):
    """Mamba-1 (selective scan) backbone: loads ``state-spaces/mamba-*-hf`` and mamba_ssm Mamba-1 folders."""

    generation = "mamba1"
    config_class = Mamba1Config

    def _scan_flops(self, seq_len: int) -> int:
        cfg = self.config
        # per channel and state: exp(delta A), delta u B, the state update (2) and the C readout (2); plus
        # softplus, D skip and gate per channel.
        return 9 * cfg.d_inner * cfg.d_state + 8 * cfg.d_inner


class Mamba2Backbone(_MambaBackbone):
    """Mamba-2 (SSD) backbone: loads ``state-spaces/mamba2-*`` (mamba_ssm) and transformers Mamba-2 ones."""

    generation = "mamba2"
    config_class = Mamba2Config

    def _scan_flops(self, seq_len: int) -> int:
        cfg = self.config
        assert isinstance(cfg, Mamba2Config)
        chunk = max(1, min(cfg.chunk_size, seq_len))
        # SSD per token: C B^T row (2 T n per group), scores @ x (2 T per channel), chunk state in and out
        # (2 n each per channel), plus the gated norm.
        return 2 * chunk * cfg.d_state * cfg.ngroups + 2 * chunk * cfg.ssm_dim + 4 * cfg.ssm_dim * cfg.d_state
