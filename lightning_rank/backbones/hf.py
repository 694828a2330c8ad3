"""Transformers backbones (BERT, RoBERTa, Pythia, Llama, ...) loaded through ``AutoModel`` (no LM head), or
whole from a sequence-classification checkpoint, whose classifier they offer as the reranker's head.

One generic :class:`HFBackbone` does the work; the subclasses only fix the architecture (``model_type``, for
random init), the pooling and the input template. ``pretrained`` and ``tokenizer`` become files by the one
policy of :mod:`lightning_rank.backbones.hub` (offline-safe, fails fast on an id that is not cached).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import warnings
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from lightning_rank.backbones import hub
from lightning_rank.backbones.base import Backbone, Pooling, PretrainedHead
from lightning_rank.backbones.classifier_heads import head_from_classifier
from lightning_rank.errors import ConfigError
from lightning_rank.text.templates import CAUSAL_TEMPLATE, PAIR

AttnImplementation = Literal["sdpa", "flash_attention_2", "eager"]
DType = Literal["float32", "bfloat16", "float16"]

_LAYER_NAME = re.compile(r"(Layer|Block)$")


def _without_pooler(config: PretrainedConfig) -> dict[str, Any]:
    """``add_pooling_layer=False`` for model classes that take it (BERT, RoBERTa): rerankers pool hidden
    states themselves, and an export (saved without the pooler) then loads without transformers reporting
    the pooler as missing and newly initialised."""
    model_class = MODEL_MAPPING.get(type(config), None)
    init = inspect.signature(model_class.__init__).parameters if model_class is not None else {}
    return {"add_pooling_layer": False} if "add_pooling_layer" in init else {}


class HFBackbone(Backbone):
    """Any transformers model through ``AutoModel``: hidden states of the base model, no task head.

    Subclasses set ``model_type`` (the ``AutoConfig`` architecture used for random init), ``pooling``,
    ``default_template`` and ``prepend_bos``.
    """

    model_type: ClassVar[str | None] = None

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        template: str | None = None,
        attn_implementation: AttnImplementation = "sdpa",
        gradient_checkpointing: bool = False,
        dtype: DType | None = None,
        trust_remote_code: bool = False,
        pooling: Pooling | None = None,
    ) -> None:
        """Build the model and its tokenizer.

        Args:
            pretrained: Hub id or local folder of a checkpoint (``AutoModel.from_pretrained``); None for a
                randomly initialised model built from ``config``. A sequence-classification checkpoint
                (``*ForSequenceClassification``, e.g. a cross-encoder) also brings its classifier: the
                reranker's head unless ``model.init_head`` is ``fresh``.
            config: Without ``pretrained``: the config of the random model
                (``AutoConfig.for_model(model_type, **config)``; ``vocab_size`` defaults to the tokenizer's
                size, pad/bos/eos ids to the tokenizer's). With ``pretrained``: overrides for the loaded
                config.
            tokenizer: Hub id, local folder or ``"builtin:words"``; defaults to ``pretrained``.
            template: Input template: ``"pair"`` (the tokenizer's ``[CLS] q [SEP] d [SEP]``), ``"pair+score"``
                (``[CLS] q [SEP] first-stage score [SEP] d [SEP]``) or a string with ``{query}``,
                ``{document}`` and optionally ``{score}``, followed by EOS; defaults to the backbone's own.
            attn_implementation: Attention kernel: ``"sdpa"``, ``"flash_attention_2"`` (needs
                ``pip install lightning-rank[flash]``, CUDA and fp16/bf16) or ``"eager"``.
            gradient_checkpointing: Recompute each layer's activations in the backward pass (less memory).
            dtype: Parameter dtype; None keeps float32 weights (mixed precision is the trainer's job).
            trust_remote_code: Run Python code the checkpoint or its tokenizer ships (an ``auto_map`` in
                its config), from the hub or a local folder; off unless the user asks for it.
            pooling: The state the head scores: ``"first"`` token, ``"last"`` real token or ``"mean"`` over
                real tokens; defaults to the backbone's own (first for encoders, last for decoders).
                ``"mean"`` suits checkpoints trained with mean pooling, such as sentence-transformers models.
        """
        super().__init__()
        if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ImportError(
                "attn_implementation='flash_attention_2' needs the flash-attn package: "
                "pip install lightning-rank[flash] (or use attn_implementation='sdpa')"
            )
        self.pretrained = pretrained
        self._pretrained_head: PretrainedHead | None = None
        if pooling is not None:
            self.pooling = pooling
        pretrained_source = hub.resolve(pretrained, "pretrained") if pretrained else None
        tokenizer_source = hub.resolve(tokenizer, "tokenizer") if tokenizer else None
        self._init_text(tokenizer_source, pretrained_source, template, trust_remote_code=trust_remote_code)
        torch_dtype = getattr(torch, dtype) if dtype else torch.float32
        overrides = dict(config or {})
        if pretrained_source is None:
            model_config = self._random_config(overrides)
            self.model: PreTrainedModel = AutoModel.from_config(
                model_config,
                dtype=torch_dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                **_without_pooler(model_config),
            )
        else:
            with hub.hub_errors(pretrained, "pretrained"):
                model_config = AutoConfig.from_pretrained(
                    pretrained_source, trust_remote_code=trust_remote_code, **overrides
                )
            if self.model_type is not None and model_config.model_type != self.model_type:
                warnings.warn(
                    f"{type(self).__name__} expects model_type {self.model_type!r} but {pretrained!r} is "
                    f"{model_config.model_type!r}; check pooling and template",
                    stacklevel=2,
                )
            with hub.hub_errors(pretrained, "pretrained"):
                self.model = self._load_checkpoint(
                    pretrained_source,
                    model_config,
                    dtype=torch_dtype,
                    attn_implementation=attn_implementation,
                    trust_remote_code=trust_remote_code,
                )
        self._drop_pooler()  # a model class outside transformers' mapping (remote code) may still have one
        self._cover_tokenizer()
        self._check_position_padding()
        params = inspect.signature(self.model.forward).parameters
        type_vocab = getattr(self.model.config, "type_vocab_size", 0) or 0
        self._takes_token_types = "token_type_ids" in params and type_vocab > 1
        self._takes_use_cache = "use_cache" in params
        self._takes_position_ids = "position_ids" in params
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()

    # -- construction helpers -------------------------------------------------------------------------------

    def _random_config(self, overrides: dict[str, Any]) -> PretrainedConfig:
        """The config of a randomly initialised model, with token ids and vocab size from the tokenizer."""
        model_type = overrides.pop("model_type", None) or self.model_type
        if model_type is None:
            raise ConfigError(
                f"{type(self).__name__} without 'pretrained' needs config['model_type'], e.g. 'bert'"
            )
        tok = self.tokenizer
        overrides.setdefault("vocab_size", _tokenizer_span(tok))
        specials = {tok.eos_token_id, tok.bos_token_id}
        # Only a dedicated pad token becomes the embedding's padding_idx: pad = eos would freeze EOS at zero.
        if tok.pad_token_id is not None and tok.pad_token_id not in specials:
            overrides.setdefault("pad_token_id", tok.pad_token_id)
        if tok.bos_token_id is not None:
            overrides.setdefault("bos_token_id", tok.bos_token_id)
        if tok.eos_token_id is not None:
            overrides.setdefault("eos_token_id", tok.eos_token_id)
        return AutoConfig.for_model(model_type, **overrides)

    def _load_checkpoint(self, source: str, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        """The base model of ``source``; a sequence-classification checkpoint is loaded whole and its
        classifier kept as the :meth:`pretrained_head` on offer."""
        if not any(str(a).endswith("ForSequenceClassification") for a in config.architectures or ()):
            return AutoModel.from_pretrained(source, config=config, **kwargs, **_without_pooler(config))
        full = AutoModelForSequenceClassification.from_pretrained(source, config=config, **kwargs)
        self._pretrained_head = head_from_classifier(full, str(self.pretrained))
        return full.base_model

    def pretrained_head(self) -> PretrainedHead | None:
        """The checkpoint's classifier as a head, when it has one; one that reads another state than this
        backbone pools (``pooling``) is offered with that problem."""
        offered = self._pretrained_head
        if offered is None or offered.head is None or offered.pooling == self.pooling:
            return offered
        problem = f"it reads the {offered.pooling!r} state, not {self.pooling!r}: set backbone_args.pooling"
        return PretrainedHead(offered.found, None, problem)

    def _drop_pooler(self) -> None:
        """Remove BERT-style pooler heads: unused by rerankers, and unused parameters upset DDP."""
        init_params = inspect.signature(type(self.model).__init__).parameters
        if "add_pooling_layer" in init_params and isinstance(getattr(self.model, "pooler", None), nn.Module):
            self.model.pooler = None

    def _cover_tokenizer(self) -> None:
        """Grow the token embeddings when the tokenizer has ids beyond them."""
        needed = _tokenizer_span(self.tokenizer)
        embeddings = self.model.get_input_embeddings()
        if embeddings is None:
            return
        if embeddings.num_embeddings < needed:
            if self.pretrained is not None:
                warnings.warn(
                    f"resizing the token embeddings of {self.pretrained!r} from {embeddings.num_embeddings} "
                    f"to {needed} to cover the tokenizer; the new rows start untrained",
                    stacklevel=3,
                )
            self.model.resize_token_embeddings(needed)

    def _check_position_padding(self) -> None:
        """RoBERTa-style models count positions from ``padding_idx + 1`` over non-pad ids: the pad ids must
        agree or a pair's positions would depend on its token ids."""
        embeddings = getattr(self.model, "embeddings", None)
        padding_idx = getattr(embeddings, "padding_idx", None)
        pad = self.tokenizer.pad_token_id
        if padding_idx is not None and pad is not None and padding_idx != pad:
            warnings.warn(
                f"the model's padding_idx {padding_idx} differs from the tokenizer's pad id {pad}: position "
                "ids will be counted differently from the checkpoint's pretraining",
                stacklevel=3,
            )

    # -- Backbone interface ---------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def num_layers(self) -> int:
        text = self.model.config.get_text_config()
        for name in ("num_hidden_layers", "n_layer", "num_layers"):
            if getattr(text, name, None):
                return int(getattr(text, name))
        return sum(len(m) for m in self._layer_lists())

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """The repeated layer classes (``BertLayer``, ``GPTNeoXLayer``, ``LlamaDecoderLayer``, ...):
        members of the model's ``ModuleList`` s named in ``_no_split_modules``, else ``*Layer``/``*Block``."""
        repeated = list(dict.fromkeys(type(child) for layers in self._layer_lists() for child in layers))
        no_split = set(getattr(self.model, "_no_split_modules", None) or ())
        found = [cls for cls in repeated if cls.__name__ in no_split]
        found = found or [cls for cls in repeated if _LAYER_NAME.search(cls.__name__)]
        if not found:
            raise RuntimeError(f"could not find the repeated layer class of {type(self.model).__name__}")
        return tuple(found)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x non-embedding parameters + ``4 * n_layer * seq_len * hidden`` for the
        attention scores and weighted sum (training is 3x this)."""
        embedding_ids = {
            id(p) for m in self.model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(False)
        }
        dense = sum(p.numel() for p in self.model.parameters() if id(p) not in embedding_ids)
        return 2.0 * dense + 4.0 * self.num_layers * seq_len * self.hidden_size

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint every layer with non-reentrant ``torch.utils.checkpoint``."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x spelling
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Last hidden states ``[B, L, H]``; ``token_type_ids`` reach only models that use them."""
        return self._last_hidden(input_ids, attention_mask, token_type_ids)

    def _last_hidden(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, **extra: Tensor
    ) -> Tensor:
        """The model's last hidden states; ``token_type_ids`` only where the model uses them, no cache."""
        self._check_ids(input_ids)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, **extra}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if self._takes_use_cache:
            kwargs["use_cache"] = False
        return self.model(**kwargs).last_hidden_state

    def packing_unsupported(self) -> str | None:
        """Packed rows need a 4D attention mask (SDPA or eager attention) and per-pair position ids."""
        attn = self.model.config._attn_implementation
        if attn not in ("sdpa", "eager"):
            return (
                f"packing builds a block-diagonal attention mask, which attn_implementation={attn!r} does "
                "not take: use attn_implementation 'sdpa'"
            )
        if not self._takes_position_ids:
            return f"{type(self.model).__name__}.forward takes no position_ids"
        return None

    def forward_packed(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sequence_ids: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Last hidden states ``[R, P, H]`` of packed rows: a block-diagonal mask (causal within each pair for
        decoders) passed as transformers' ready-made 4D mask, and positions restarting with each pair."""
        if reason := self.packing_unsupported():
            raise NotImplementedError(reason)
        mask = sequence_ids[:, None, :, None] == sequence_ids[:, None, None, :]  # [R, 1, P, P]
        if self._causal:
            mask = mask & torch.ones_like(mask[0, 0]).tril()
        if self.model.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
            dtype = self.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        return self._last_hidden(
            input_ids, mask, token_type_ids, position_ids=position_ids + self._position_offset
        )

    @functools.cached_property
    def _causal(self) -> bool:
        """Whether the model's attention is causal (decoders), from its attention modules' ``is_causal``."""
        return any(getattr(m, "is_causal", False) for m in self.model.modules())

    @functools.cached_property
    def _position_offset(self) -> int:
        """RoBERTa-style embeddings count positions from ``padding_idx + 1``; others from 0."""
        embeddings = getattr(self.model, "embeddings", None)
        if hasattr(embeddings, "create_position_ids_from_input_ids"):
            return int(embeddings.padding_idx) + 1
        return 0

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write model (safetensors) and tokenizer so that ``AutoModel.from_pretrained(folder)`` and
        ``type(self)(pretrained=folder)`` load them."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    # -- helpers --------------------------------------------------------------------------------------------

    def _layer_lists(self) -> list[nn.ModuleList]:
        return [m for m in self.model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]

    def _check_ids(self, input_ids: Tensor) -> None:
        """A clear error for ids beyond the embeddings (checked on CPU only: on GPU it would sync)."""
        if torch.compiler.is_compiling() or input_ids.device.type != "cpu" or input_ids.numel() == 0:
            return
        size = self.model.get_input_embeddings().num_embeddings
        top = int(input_ids.max())
        if top >= size or int(input_ids.min()) < 0:
            raise IndexError(
                f"token id {top} is out of range for the {size} token embeddings of {type(self).__name__}: "
                "the inputs were not made by this backbone's tokenizer"
            )


class BertBackbone(HFBackbone):
    """BERT-family encoder: ``[CLS] query [SEP] document [SEP]``, pooled at ``[CLS]``."""

    model_type: ClassVar[str | None] = "bert"
    lora_target_modules = ("query", "key", "value", "dense")
    pooling = "first"
    default_template = PAIR


class RobertaBackbone(HFBackbone):
    """RoBERTa-family encoder: ``<s> query </s></s> document </s>``, pooled at ``<s>``."""

    model_type: ClassVar[str | None] = "roberta"
    lora_target_modules = ("query", "key", "value", "dense")
    pooling = "first"
    default_template = PAIR


class PythiaBackbone(HFBackbone):
    """GPT-NeoX / Pythia decoder: ``document: {document}; query: {query}`` + EOS, pooled at the last token."""

    model_type: ClassVar[str | None] = "gpt_neox"
    lora_target_modules = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    pooling = "last"
    default_template = CAUSAL_TEMPLATE


class LlamaBackbone(HFBackbone):
    """Llama decoder: BOS + ``document: {document}; query: {query}`` + EOS, pooled at the last token."""

    model_type: ClassVar[str | None] = "llama"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    pooling = "last"
    default_template = CAUSAL_TEMPLATE
    prepend_bos = True


# -- tokenizer size -----------------------------------------------------------------------------------------


def _tokenizer_span(tokenizer: Any) -> int:
    """How many embedding rows the tokenizer's ids need (its size, or its largest id + 1 if sparse)."""
    top = max(tokenizer.get_vocab().values(), default=-1)
    return max(len(tokenizer), top + 1)
