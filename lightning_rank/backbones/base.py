"""The one interface every backbone implements, built-in or third-party."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lightning_rank.backbones import hub
from lightning_rank.errors import ConfigError
from lightning_rank.text.builtin_tokenizer import BUILTIN_PREFIX, build_builtin_tokenizer
from lightning_rank.text.templates import CAUSAL_TEMPLATE, PAIR_STYLES, PairTemplate

Pooling = Literal["first", "last", "mean"]


@dataclass
class PretrainedHead:
    """A checkpoint's own classifier, offered as the reranker's head: ``head`` maps the pooled state
    ``[B, H]`` to the score ``[B, 1]`` in fp32 and reads the ``pooling`` state; when the classifier does not
    map onto one relevance score, ``head`` is None and ``problem`` says why. ``found`` names it for logs."""

    found: str
    head: nn.Module | None
    problem: str | None
    pooling: Pooling | None = None


class Backbone(nn.Module):
    """Maps ``(input_ids, attention_mask)`` to hidden states ``[B, L, H]`` and declares what the rest of the
    system needs: hidden size, pooling, tokenizer and input template, block classes and FLOPs per token.

    Subclasses set ``pooling`` and ``default_template`` (class attributes), build ``self.tokenizer`` and
    ``self.template`` (usually through :meth:`_init_text`), and implement :meth:`forward`,
    :attr:`hidden_size` and :meth:`block_classes`.
    """

    pooling: ClassVar[Pooling] = "last"
    default_template: ClassVar[str] = CAUSAL_TEMPLATE
    prepend_bos: ClassVar[bool] = False
    #: module names LoRA adapts by default (``model.lora``); empty: the user must name them
    lora_target_modules: ClassVar[tuple[str, ...]] = ()

    tokenizer: PreTrainedTokenizerBase
    template: PairTemplate

    def _init_text(
        self,
        tokenizer: str | None,
        pretrained: str | None,
        template: str | None,
        trust_remote_code: bool = False,
    ) -> None:
        """Load the tokenizer (hub id, local folder or ``builtin:<name>``; code it ships runs only with
        ``trust_remote_code``) and the pair template."""
        source = tokenizer or pretrained
        if source is None:
            raise ConfigError(
                f"{type(self).__name__} needs a tokenizer: set 'tokenizer' (a hub id, a local folder or "
                f"'{BUILTIN_PREFIX}words') or 'pretrained'"
            )
        self.tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        text = template or self.default_template
        self.template = PairTemplate(text, append_eos=text not in PAIR_STYLES, prepend_bos=self.prepend_bos)
        self.template.check_tokenizer(self.tokenizer, source)

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """The repeated layer classes: FSDP auto-wraps them and activation checkpointing applies to them."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token at ``seq_len`` (2 x parameters by default); training is 3x this."""
        return 2.0 * sum(p.numel() for p in self.parameters())

    def pretrained_head(self) -> PretrainedHead | None:
        """The classifier of the checkpoint this backbone loaded, or None when it has none (the reranker
        then starts from a new head)."""
        return None

    def check_lora_targets(self, targets: list[str]) -> None:
        """Raise if adapting ``targets`` would be silently ignored (e.g. by a fused kernel)."""

    def enable_gradient_checkpointing(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def packing_unsupported(self) -> str | None:
        """Why this backbone cannot score packed rows (``data.packing``), or None when it can: then it
        implements :meth:`forward_packed`."""
        return f"{type(self).__name__} does not implement forward_packed"

    def forward_packed(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sequence_ids: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Hidden states ``[R, P, H]`` of packed rows (``datamodules.packing``): each token attends only to
        its own sequence's tokens (``sequence_ids``) and sees its position within it (``position_ids``)."""
        raise NotImplementedError(self.packing_unsupported())

    def pool_packed(self, hidden: Tensor, sequence_ids: Tensor, starts: Tensor, lengths: Tensor) -> Tensor:
        """One vector per packed sequence, as :meth:`pool` computes it for a padded one."""
        flat = hidden.flatten(0, 1)
        if self.pooling == "first":
            return flat[starts]
        if self.pooling == "last":
            return flat[starts + lengths - 1]
        index = sequence_ids.flatten()
        real = index >= 0
        sums = flat.new_zeros(len(starts), flat.size(-1)).index_add_(0, index[real], flat[real])
        return sums / lengths.unsqueeze(-1).to(flat.dtype)

    def pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """One vector per sequence: the first token, the mean over real (non-pad) tokens, or the last real
        token with right padding."""
        if self.pooling == "first":
            return hidden[:, 0]
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a hub id or a local folder (resolved by :mod:`~lightning_rank.backbones.hub`;
    Python code it ships runs only with ``trust_remote_code``), or an in-process ``builtin:<name>`` one."""
    if source.startswith(BUILTIN_PREFIX):
        tokenizer = build_builtin_tokenizer(source)
    else:
        with hub.hub_errors(source, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(
                hub.resolve(source, "tokenizer"), use_fast=True, trust_remote_code=trust_remote_code
            )
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Some tokenizer.json files store padding/truncation (sentence-transformers exports pad to 128): the
    # templates call the Rust backend directly and truncate themselves, and the collator pads.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    return tokenizer
