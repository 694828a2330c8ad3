"""The reranker as a transformers ``*ForSequenceClassification`` model with the same scores, or the reason
there is none.

Our score is ``Linear(pool(hidden))``. Where a family's classification head can express that map exactly it
is built here, and where it cannot a :class:`~lightning_rank.errors.ConfigError` says why:

- BERT (``pooler`` dense + tanh, then ``classifier``) and RoBERTa / XLM-R (``dense``, tanh, ``out_proj``) put
  a tanh between the first token and the score. The dense layer is set to ``eps * w`` in one row (zero
  elsewhere) and the last layer to ``1 / eps``, with ``eps`` a power of two so small that
  ``|eps * w . h| <= 2**-13`` for every hidden state the encoder can output: its last op is a LayerNorm, so
  ``|w . h| <= sqrt(H) * ||w * gamma|| + |w . beta||``. There ``tanh(y) = y (1 - y**2/3 ...)`` differs from
  ``y`` by under 2**-27 relative, below float32's rounding; the scaling by powers of two is exact.
- GPT-NeoX and Llama score the last non-pad token with a bias-free ``Linear``. Our head's bias moves into the
  final LayerNorm's bias (GPT-NeoX: ``beta += b * w / (w . w)``, which only the score reads); Llama's
  RMSNorm has no bias, so a Llama head with a non-zero bias has no exact map. The last non-pad token is our
  last real token only when the tokenizer pads with a token of its own, never the EOS that ends each pair.

Every map is checked on probe inputs before anything is written (:func:`check_same_scores`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from lightning_rank.backbones.base import Backbone
from lightning_rank.backbones.classifier_heads import ClassifierHead
from lightning_rank.errors import ConfigError

#: model types whose encoder ends in a LayerNorm at ``encoder.layer[-1].output.LayerNorm`` and whose
#: classification head is BERT's pooler+classifier or RoBERTa's dense+out_proj
ENCODERS = ("bert", "roberta", "xlm-roberta")
DECODERS = ("gpt_neox", "llama")
_TANH_INPUT_LIMIT = 2.0**-13
TOLERANCE = 1e-5


def no_map(backbone: Backbone, reason: str) -> ConfigError:
    return ConfigError(
        f"no exact transformers sequence-classification form of this reranker "
        f"({type(backbone).__name__}): {reason}. Export it with --format native (which loads with "
        "RerankerModule.from_pretrained and `lightning-rank rerank`)"
    )


def sequence_classifier(backbone: Backbone, head: nn.Module) -> PreTrainedModel:
    """A ``*ForSequenceClassification`` model (num_labels 1, eval mode) scoring as ``head(pool(backbone))``;
    :class:`ConfigError` where the family's head cannot express it exactly. ``head`` is our
    ``Linear(hidden, 1)`` or a checkpoint's :class:`ClassifierHead`, whose layers are the family's own."""
    base = getattr(backbone, "model", None)
    if not isinstance(base, PreTrainedModel):
        raise no_map(backbone, "its backbone is not a transformers model")
    model_type = base.config.model_type
    if model_type not in ENCODERS + DECODERS:
        raise no_map(
            backbone,
            f"model_type {model_type!r} has no exact map (known: {', '.join(ENCODERS + DECODERS)})",
        )
    wanted = "first" if model_type in ENCODERS else "last"
    if backbone.pooling != wanted:
        raise no_map(
            backbone,
            f"it pools the {backbone.pooling!r} token(s), while {model_type}'s sequence-classification head "
            f"reads the {wanted} token",
        )
    config = copy.deepcopy(base.config)
    config.num_labels = 1
    config.problem_type = "regression"
    config.architectures = None
    if model_type in DECODERS:
        config.pad_token_id = _decoder_pad_id(backbone)
    model = AutoModelForSequenceClassification.from_config(config, dtype=base.dtype).eval()
    _load_base(model, base)
    if isinstance(head, ClassifierHead):
        _copy_classifier(model, backbone, head)
        return model
    weight = head.weight.detach().reshape(-1).to(torch.float64)
    bias = float(head.bias.detach()) if head.bias is not None else 0.0
    with torch.no_grad():
        if model_type in ENCODERS:
            _tanh_map(model, base, weight, bias)
        else:
            _decoder_map(model, backbone, weight, bias)
    return model


def _copy_classifier(model: PreTrainedModel, backbone: Backbone, head: ClassifierHead) -> None:
    """Put a checkpoint's classifier back where its family keeps it; two labels become one whose logit is
    ``logit[1] - logit[0]`` (the score), so every format returns the score itself."""
    family = {"pooler_tanh": ("bert",), "dense_tanh": ("roberta", "xlm-roberta"), "linear": DECODERS}
    if model.config.model_type not in family[head.form.form]:
        raise no_map(
            backbone,
            f"its head is {head.form.architecture}'s classifier, which {model.config.model_type} models "
            "do not have",
        )
    if head.form.form == "pooler_tanh":
        ours, theirs = head.classifier, model.classifier
        model.base_model.pooler.dense.load_state_dict(head.pooler.dense.state_dict())
    elif head.form.form == "dense_tanh":
        ours, theirs = head.classifier.out_proj, model.classifier.out_proj
        model.classifier.dense.load_state_dict(head.classifier.dense.state_dict())
    else:
        ours, theirs = head.score, model.score
    weight = ours.weight.detach()
    bias = ours.bias.detach() if ours.bias is not None else None
    if head.form.num_labels == 2:
        weight = weight[1:2] - weight[0:1]
        bias = bias[1:2] - bias[0:1] if bias is not None else None
    with torch.no_grad():
        if head.form.form == "linear":  # the score layer has no bias: ours moves into the final norm
            _decoder_map(model, backbone, weight.reshape(-1), float(bias) if bias is not None else 0.0)
            return
        theirs.weight.copy_(weight.to(theirs.weight.dtype))
        if theirs.bias is not None:
            theirs.bias.copy_(bias.to(theirs.bias.dtype) if bias is not None else torch.zeros(1))


def _decoder_pad_id(backbone: Backbone) -> int:
    """The pad id the classifier looks for: it takes the rightmost token that is not it."""
    tok = backbone.tokenizer
    if tok.pad_token_id is None or tok.pad_token_id in (tok.eos_token_id, tok.bos_token_id):
        raise no_map(
            backbone,
            f"its tokenizer pads with {tok.pad_token!r}, a token that also ends or starts every pair: the "
            "classifier finds the last token by skipping pad tokens and would score the one before it. Train "
            "with a tokenizer that has a pad token of its own",
        )
    return int(tok.pad_token_id)


def _load_base(model: PreTrainedModel, base: PreTrainedModel) -> None:
    """Copy the backbone's weights into the classifier's base model; only a pooler may be left over."""
    target = getattr(model, model.base_model_prefix)
    missing, unexpected = target.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")


def _tanh_map(model: PreTrainedModel, base: PreTrainedModel, weight: Tensor, bias: float) -> None:
    """Set the pooler/dense layer to ``eps * w`` and the output layer to ``1 / eps`` (module docstring)."""
    norm = base.encoder.layer[-1].output.LayerNorm
    gamma = norm.weight.detach().to(torch.float64)
    beta = norm.bias.detach().to(torch.float64) if norm.bias is not None else torch.zeros_like(gamma)
    bound = math.sqrt(gamma.numel()) * float((weight * gamma).norm()) + abs(float(weight @ beta))
    eps = 2.0 ** math.floor(math.log2(_TANH_INPUT_LIMIT / max(bound, 1e-30)))
    if hasattr(model, "classifier") and hasattr(model.classifier, "out_proj"):  # RoBERTa / XLM-R
        dense, out = model.classifier.dense, model.classifier.out_proj
    else:  # BERT: pooler, then classifier
        dense, out = getattr(model, model.base_model_prefix).pooler.dense, model.classifier
    dense.weight.zero_()
    dense.bias.zero_()
    dense.weight[0] = (weight * eps).to(dense.weight.dtype)
    out.weight.zero_()
    out.weight[0, 0] = 1.0 / eps
    out.bias.fill_(bias)


def _decoder_map(model: PreTrainedModel, backbone: Backbone, weight: Tensor, bias: float) -> None:
    """The head's weight as the score layer; its bias folded into the final LayerNorm's bias."""
    model.score.weight.copy_(weight.to(model.score.weight.dtype).unsqueeze(0))
    if bias == 0.0:
        return
    final = getattr(model.base_model, "final_layer_norm", None)
    if getattr(final, "bias", None) is None:
        raise no_map(
            backbone,
            f"{type(model).__name__}'s score layer has no bias and the model's final norm has none to carry "
            f"the head's bias {bias:.6g}: every score would be shifted by {-bias:.6g} (rankings unchanged)",
        )
    shift = weight * (bias / float(weight @ weight))
    final.bias.add_(shift.to(final.bias.dtype))


def check_same_scores(backbone: Backbone, head: nn.Module, model: PreTrainedModel) -> None:
    """Score probe inputs (random ids, ragged lengths, right padding) both ways; differing scores are a
    bug of the map, raised before anything is written."""
    generator = torch.Generator().manual_seed(0)
    tok = backbone.tokenizer
    vocab = model.get_input_embeddings().num_embeddings
    lengths = [3, 7, 12, 16]
    ids = torch.randint(0, vocab, (len(lengths), max(lengths)), generator=generator)
    if tok.pad_token_id is not None:
        ids[ids == tok.pad_token_id] = (tok.pad_token_id + 1) % vocab
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, tok.pad_token_id if tok.pad_token_id is not None else 0)
    types = (torch.arange(ids.size(1)) >= 2).long().expand_as(ids) * mask
    takes_types = getattr(backbone, "_takes_token_types", False)
    training = backbone.training
    backbone.eval()  # no dropout: both sides score deterministically
    try:
        with torch.no_grad():
            ours = head(backbone.pool(backbone(ids, mask, types if takes_types else None), mask).float())
            extra = {"token_type_ids": types} if takes_types else {}
            theirs = model(input_ids=ids, attention_mask=mask, **extra).logits.float()
    finally:
        backbone.train(training)
    gap = (ours.reshape(-1) - theirs.reshape(-1)).abs().max().item()
    if gap > TOLERANCE * max(1.0, ours.abs().max().item()):
        raise RuntimeError(f"{type(model).__name__} scores differ from the reranker's by {gap:.3g}")
