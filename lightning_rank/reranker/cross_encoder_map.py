"""The reranker as a sentence-transformers ``CrossEncoder`` of modules (Transformer, Pooling, Dense), for
rerankers no ``*ForSequenceClassification`` head expresses: mean pooling, or a first-token head on a
family whose classifier adds layers (:mod:`.classifier_map` covers the others).

``CrossEncoder(modules=[Transformer, Pooling, Dense...])`` (sentence-transformers 6) computes
``Dense(pool(hidden))`` with the pooling modes ``cls``, ``mean`` and ``lasttoken``, our ``first``, ``mean``
and ``last``; our head is one ``Dense`` (``Linear(hidden, 1)``) or, for a checkpoint's classifier, a tanh
``Dense`` and then the output layer. The folder holds safetensors and JSON only and loads with
``CrossEncoder(path)``; :func:`check_cross_encoder` compares its scores with ours on probe texts before
anything is written.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from lightning_rank.backbones.base import Backbone
from lightning_rank.backbones.classifier_heads import ClassifierHead
from lightning_rank.errors import ConfigError
from lightning_rank.text.input_format import InputFormat

POOLING_MODES = {"first": "cls", "mean": "mean", "last": "lasttoken"}
TOLERANCE = 1e-5


def modular_cross_encoder(backbone: Backbone, head: nn.Module, trained: InputFormat) -> Any:
    """A CrossEncoder (eval mode, identity activation: ``predict`` returns our scores) built in memory."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    base = getattr(backbone, "model", None)
    if not isinstance(base, PreTrainedModel):
        raise ConfigError(
            f"--format sentence-transformers needs a transformers backbone; {type(backbone).__name__} is "
            "not one. Export with --format native"
        )
    if backbone.pooling not in POOLING_MODES:
        raise ConfigError(f"--format sentence-transformers: pooling {backbone.pooling!r} has no Pooling mode")
    with tempfile.TemporaryDirectory(prefix=".cross-encoder.") as plain:
        _with_pooler(base).save_pretrained(plain)
        tokenizer_for_pairs(backbone).save_pretrained(plain)
        transformer = Transformer(
            plain,
            max_seq_length=trained.max_length,
            processing_kwargs={"text": {"truncation": "only_second"}},
        )
    hidden = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(hidden, POOLING_MODES[backbone.pooling]), *_dense_layers(head, hidden)]
    return CrossEncoder(modules=modules, activation_fn=nn.Identity(), device="cpu").eval()


def tokenizer_for_pairs(backbone: Backbone) -> Any:
    """The backbone's tokenizer, giving token type ids where the model reads them (as our collator does)."""
    tokenizer = copy.deepcopy(backbone.tokenizer)
    if getattr(backbone, "_takes_token_types", False):
        names = ["input_ids", "token_type_ids", "attention_mask"]
        tokenizer.model_input_names = names
        tokenizer.init_kwargs["model_input_names"] = names
    return tokenizer


def _with_pooler(base: PreTrainedModel) -> PreTrainedModel:
    """``base`` with the (unused) pooler its class builds by default, so loading it reports no missing
    weights; any other difference is a bug."""
    full = AutoModel.from_config(copy.deepcopy(base.config), dtype=base.dtype)
    missing, unexpected = full.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    return full


def _dense_layers(head: nn.Module, hidden: int) -> list[nn.Module]:
    """Our head as Dense modules: the last one writes ``scores``; two labels become their difference."""
    from sentence_transformers.base.modules import Dense

    def dense(layer: nn.Linear, activation: nn.Module | None, output: str | None) -> Dense:
        weight, bias = layer.weight.detach().float(), layer.bias
        bias = bias.detach().float() if bias is not None else None
        if weight.size(0) == 2:
            weight = weight[1:2] - weight[0:1]
            bias = bias[1:2] - bias[0:1] if bias is not None else None
        return Dense(
            weight.size(1),
            weight.size(0),
            bias=bias is not None,
            activation_function=activation,
            init_weight=weight.clone(),
            init_bias=bias.clone() if bias is not None else None,
            module_output_name=output,
        )

    if not isinstance(head, ClassifierHead):
        return [dense(head, None, "scores")]
    if head.form.form == "pooler_tanh":
        return [dense(head.pooler.dense, nn.Tanh(), None), dense(head.classifier, None, "scores")]
    if head.form.form == "dense_tanh":
        inner = head.classifier
        return [dense(inner.dense, nn.Tanh(), None), dense(inner.out_proj, None, "scores")]
    return [dense(head.score, None, "scores")]


def probe_texts(backbone: Backbone, trained: InputFormat) -> tuple[list[str], list[str]]:
    """Queries and documents of the tokenizer's own words, short and past ``max_length``, seeded."""
    tokenizer = backbone.tokenizer
    special = set(tokenizer.all_special_tokens)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w not in special)
    if len(words) < 8:
        words = ["relevance", "ranking", "document", "query", "model", "retrieval", "search", "text"]
    generator = torch.Generator().manual_seed(0)

    def text(length: int) -> str:
        picks = torch.randint(0, len(words), (length,), generator=generator).tolist()
        return " ".join(words[i] for i in picks)

    lengths = [(2, 5), (4, 30), (6, trained.max_length * 2), (1, 1)]
    return [text(q) for q, _ in lengths], [text(d) for _, d in lengths]


def check_cross_encoder(backbone: Backbone, head: nn.Module, trained: InputFormat, encoder: Any) -> None:
    """``encoder.predict`` on probe pairs against our scores of the same texts (rendered by our own
    collator); a difference past float rounding is a bug of the map, raised before anything is written."""
    from lightning_rank.datamodules.collate import PairCollator

    queries, documents = probe_texts(backbone, trained)
    batch = PairCollator(backbone.tokenizer, backbone.template, trained.max_length, trained.max_query_length)(
        queries, documents
    )
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            hidden = backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            ours = head(backbone.pool(hidden, batch["attention_mask"]).float()).reshape(-1)
    finally:
        backbone.train(training)
    theirs = torch.as_tensor(encoder.predict(list(zip(queries, documents, strict=True)))).reshape(-1)
    gap = (ours - theirs.to(ours.dtype)).abs().max().item()
    if gap > TOLERANCE * max(1.0, ours.abs().max().item()):
        raise RuntimeError(f"CrossEncoder scores differ from the reranker's by {gap:.3g} on probe pairs")
