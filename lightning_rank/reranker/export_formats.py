"""The folders ``--format hf`` and ``--format sentence-transformers`` write, or why a reranker has none.

``hf``: a transformers sequence-classification folder (``AutoModelForSequenceClassification``; the map and
its limits are :mod:`.classifier_map`) with the tokenizer. Its logits are our scores for the same token ids;
rendering pairs as training did (template, token budgets, excerpts) is the caller's part, and the model card
records how.

``sentence-transformers``: the same model saved by sentence-transformers' own ``CrossEncoder`` (or, where
no sequence classifier maps, e.g. mean pooling, a CrossEncoder of Transformer, Pooling and Dense modules:
:mod:`.cross_encoder_map`), with an identity activation (``predict`` returns the scores, not a sigmoid of
them), ``max_length`` the training's, and truncation of the document only (``only_second``): exactly how
training rendered a pair whose query fits ``max_query_length``. What ``CrossEncoder`` cannot render is
refused: a text template (it tokenizes the tokenizer's own pair format), first-stage scores shown as text,
and query-biased excerpts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch import nn

from lightning_rank.backbones.base import Backbone
from lightning_rank.errors import ConfigError
from lightning_rank.reranker.classifier_map import check_same_scores, sequence_classifier
from lightning_rank.reranker.cross_encoder_map import (
    check_cross_encoder,
    modular_cross_encoder,
    tokenizer_for_pairs,
)
from lightning_rank.text.input_format import InputFormat
from lightning_rank.text.templates import PAIR

Format = Literal["native", "sentence-transformers", "hf"]
FORMATS: tuple[str, ...] = ("native", "sentence-transformers", "hf")
#: in an hf / sentence-transformers folder's config.json: how training rendered pairs
CONFIG_KEY = "lightning_rank"


def check_format(name: str) -> None:
    if name not in FORMATS:
        raise ConfigError(f"--format {name!r} is not one of {', '.join(FORMATS)}")


def sentence_transformers_refusal(backbone: Backbone, trained: InputFormat | None) -> str | None:
    """Why ``CrossEncoder`` cannot render pairs as this reranker was trained on, or None."""
    if backbone.template.text != PAIR:
        return (
            f"it was trained on template {backbone.template.text!r}, and CrossEncoder tokenizes (query, "
            "document) in the tokenizer's own pair format"
        )
    if trained is not None and trained.excerpt != "first":
        return (
            f"it was trained on {trained.excerpt!r} excerpts of long documents (data.excerpt), and "
            "CrossEncoder reads a document's start"
        )
    if trained is not None and trained.passages is not None:
        return (
            f"it reads long documents as windows (data.passages {trained.passages.mode}), and CrossEncoder "
            "scores one truncated pair per document"
        )
    return None


def prepare_classifier(
    backbone: Backbone, head: nn.Module, trained: InputFormat | None, st: bool
) -> tuple[Callable[[Path], None], str]:
    """Build and check the model of the folder (``st``: a sentence-transformers CrossEncoder, else a
    transformers sequence classifier), refusing what the format cannot hold exactly; return the writer of
    its folder and how the folder renders pairs. Nothing is written here: a refusal leaves the disk as it
    was."""
    if st:
        return _prepare_cross_encoder(backbone, head, trained or InputFormat(), trained)
    model = sequence_classifier(backbone, head)
    check_same_scores(backbone, head, model)
    model.config.update({CONFIG_KEY: _rendering(backbone, trained)})
    tokenizer = tokenizer_for_pairs(backbone)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write, rendering_note(backbone, trained, st)


def _prepare_cross_encoder(
    backbone: Backbone, head: nn.Module, shape: InputFormat, trained: InputFormat | None
) -> tuple[Callable[[Path], None], str]:
    """The CrossEncoder: over the sequence classifier where one maps exactly (the form every
    sentence-transformers version and other rerankers' tools load), else of modules (Transformer, Pooling,
    Dense: sentence-transformers 6); either is checked on probe texts."""
    if (reason := sentence_transformers_refusal(backbone, trained)) is not None:
        raise ConfigError(
            f"--format sentence-transformers cannot reproduce this reranker's input: {reason}. Export "
            "with --format native (scores as trained, through RerankerModule.from_pretrained)"
        )
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError(
            "--format sentence-transformers needs the sentence-transformers package: pip install "
            "'lightning-rank[sentence-transformers]'"
        )
    try:
        model = sequence_classifier(backbone, head)
    except ConfigError:
        encoder, form = modular_cross_encoder(backbone, head, shape), "modules"
    else:
        check_same_scores(backbone, head, model)
        model.config.update({CONFIG_KEY: _rendering(backbone, trained)})
        encoder, form = _classifier_cross_encoder(model, tokenizer_for_pairs(backbone), shape), "classifier"
    check_cross_encoder(backbone, head, shape, encoder)

    def write(folder: Path) -> None:
        encoder.save_pretrained(os.fspath(folder), create_model_card=False)

    return write, rendering_note(backbone, trained, st=True) + (
        "; the folder is a CrossEncoder of modules (Transformer, Pooling, Dense), which "
        "sentence-transformers 6 or later loads"
        if form == "modules"
        else ""
    )


def _classifier_cross_encoder(model: Any, tokenizer: Any, shape: InputFormat) -> Any:
    """A CrossEncoder over the sequence classifier, in memory (identity activation: scores, no sigmoid)."""
    import tempfile

    import torch
    from sentence_transformers import CrossEncoder

    with tempfile.TemporaryDirectory(prefix=".classifier.") as plain:
        model.save_pretrained(plain)
        tokenizer.save_pretrained(plain)
        encoder = CrossEncoder(
            plain, activation_fn=torch.nn.Identity(), max_length=shape.max_length, local_files_only=True,
            device="cpu",
        )  # fmt: skip
    encoder[0].processing_kwargs = {"text": {"truncation": "only_second"}}
    return encoder.eval()


def _rendering(backbone: Backbone, trained: InputFormat | None) -> dict[str, Any]:
    """How training rendered pairs, for config.json and the model card."""
    return {
        "template": backbone.template.text,
        "pooling": backbone.pooling,
        "input_format": (trained or InputFormat()).as_dict(),
        "input_format_recorded": trained is not None,
    }


def rendering_note(backbone: Backbone, trained: InputFormat | None, st: bool) -> str:
    """One sentence on how far the folder's own tokenization matches training's."""
    shape = trained or InputFormat()
    if st:
        return (
            f"CrossEncoder renders pairs as training did for queries of up to {shape.max_query_length} "
            "tokens "
            f"(max_length {shape.max_length}, the document truncated); a longer query was cut to "
            f"{shape.max_query_length} tokens in training and is kept whole here"
        )
    if backbone.template.text == PAIR:
        return (
            "tokenize with tokenizer(query, document, truncation='only_second', "
            f"max_length={shape.max_length}) after cutting queries to {shape.max_query_length} tokens"
            + (f"; training read {shape.excerpt!r} excerpts" if shape.excerpt != "first" else "")
            + (f"; documents are read as windows: {shape.passages}" if shape.passages is not None else "")
        )
    return (
        f"render pairs as {backbone.template.text!r} (config.json's {CONFIG_KEY!r}) in at most "
        f"{shape.max_length} tokens before tokenizing: the tokenizer does not apply the template"
    )
