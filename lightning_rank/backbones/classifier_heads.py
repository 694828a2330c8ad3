"""A sequence-classification checkpoint's classifier as the reranker's head: exactly the form transformers
computes, with the score taken from its logits (one label: the logit; two: ``logit[1] - logit[0]``).

Three forms cover the supported architectures: BERT's pooler (dense + tanh over ``[CLS]``) then a linear
classifier; RoBERTa's classification head (dense + tanh + ``out_proj`` over ``<s>``); decoders' ``score``
linear over the last real token. Parameter names follow transformers' (``pooler.dense``, ``classifier``,
``classifier.out_proj``, ``score``), and :class:`HeadForm` is what an export records to rebuild the head.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GenericForSequenceClassification

from lightning_rank.backbones.base import PretrainedHead
from lightning_rank.errors import ConfigError

Form = Literal["pooler_tanh", "dense_tanh", "linear"]
#: the state each form's classifier reads: the first token for encoders, the last real one for decoders
FORM_POOLING = {"pooler_tanh": "first", "dense_tanh": "first", "linear": "last"}
_ENCODER_FORMS: dict[str, Form] = {
    "BertForSequenceClassification": "pooler_tanh",
    "RobertaForSequenceClassification": "dense_tanh",
    "XLMRobertaForSequenceClassification": "dense_tanh",
}
_DECODERS = ("GPTNeoXForSequenceClassification",)  # beside every GenericForSequenceClassification


@dataclass(frozen=True)
class HeadForm:
    """The shape of a classifier head: its form, label count, whether the output layer has a bias, the
    dropout transformers applies in training, and the architecture it came from."""

    form: Form
    num_labels: int
    bias: bool
    dropout: float
    architecture: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, where: str | os.PathLike) -> HeadForm:
        """A form as :meth:`as_dict` wrote it; anything else is a :class:`ConfigError` naming ``where``."""
        try:
            form = cls(**raw)
        except TypeError as err:
            raise ConfigError(f"{where}: head {raw!r} is malformed ({err}); export the model again") from None
        if form.form not in FORM_POOLING or form.num_labels not in (1, 2):
            raise ConfigError(f"{where}: head {raw!r} is not a form lightning-rank knows; export it again")
        return form


class _DenseTanh(nn.Module):
    """RoBERTa's classification head on one pooled state: dropout, dense, tanh, dropout, ``out_proj``."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))


class _Pooler(nn.Module):
    """BERT's pooler on the already pooled ``[CLS]`` state: dense then tanh."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.tanh(self.dense(pooled))


class ClassifierHead(nn.Module):
    """Pooled state ``[B, H]`` -> score ``[B, 1]`` through a checkpoint's classifier (``form``)."""

    def __init__(self, hidden_size: int, form: HeadForm) -> None:
        super().__init__()
        self.form = form
        n = form.num_labels
        if form.form == "pooler_tanh":
            self.pooler = _Pooler(hidden_size)
            self.dropout = nn.Dropout(form.dropout)
            self.classifier: nn.Module = nn.Linear(hidden_size, n, bias=form.bias)
        elif form.form == "dense_tanh":
            self.classifier = _DenseTanh(hidden_size, n, form.dropout)
        else:
            self.score = nn.Linear(hidden_size, n, bias=form.bias)

    def logits(self, pooled: Tensor) -> Tensor:
        """The classifier's logits ``[B, num_labels]``, as transformers' model computes them."""
        if self.form.form == "pooler_tanh":
            return self.classifier(self.dropout(self.pooler(pooled)))
        if self.form.form == "dense_tanh":
            return self.classifier(pooled)
        return self.score(pooled)

    def forward(self, pooled: Tensor) -> Tensor:
        logits = self.logits(pooled)
        return logits if self.form.num_labels == 1 else logits[:, 1:2] - logits[:, 0:1]


def head_from_classifier(full: PreTrainedModel, source: str) -> PretrainedHead:
    """The head a loaded ``*ForSequenceClassification`` model ``full`` offers (its weights copied, fp32),
    or the reason its classifier does not map onto one relevance score."""
    name = type(full).__name__
    config = full.config
    n = int(config.num_labels)
    found = f"{source} ({name}, {n} label{'s' if n != 1 else ''})"
    form = _ENCODER_FORMS.get(name)
    if form is None and (isinstance(full, GenericForSequenceClassification) or name in _DECODERS):
        form = "linear"
    if form is None:
        known = ", ".join([*_ENCODER_FORMS, *_DECODERS, "LlamaForSequenceClassification"])
        return PretrainedHead(found, None, f"lightning-rank maps the classifiers of {known}, not {name}")
    if n > 2:
        return PretrainedHead(found, None, f"{n} labels do not map onto one relevance score (1 or 2 do)")
    if n == 2 and config.problem_type not in (None, "single_label_classification"):
        return PretrainedHead(
            found, None, f"problem_type {config.problem_type!r} with 2 labels has no single relevance score"
        )
    dropout = getattr(config, "classifier_dropout", None)
    if dropout is None:
        dropout = getattr(config, "hidden_dropout_prob", 0.0) if form != "linear" else 0.0
    out = full.score if form == "linear" else full.classifier
    bias = (out.out_proj if form == "dense_tanh" else out).bias is not None
    head = ClassifierHead(config.hidden_size, HeadForm(form, n, bias, float(dropout), name))
    if form == "pooler_tanh":
        head.pooler.dense.load_state_dict(full.base_model.pooler.dense.state_dict())
    getattr(head, "score" if form == "linear" else "classifier").load_state_dict(out.state_dict())
    rule = (
        "score = its logit" if n == 1 else f"score = logit[1] - logit[0] ({config.id2label[1]!r} as relevant)"
    )
    return PretrainedHead(f"{found}: {rule}", head.float(), None, FORM_POOLING[form])
