"""Pair rendering: the paper's templates, documents truncated first, queries kept whole up to a cap."""

from __future__ import annotations

import pytest

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.text.templates import CAUSAL_TEMPLATE, PAIR, PairTemplate

TOK = load_tokenizer("builtin:words")
QUERY = "baba bebe bibi"
DOC = " ".join(["kavo"] * 50)


def tokens(ids: list[int]) -> list[str]:
    return TOK.convert_ids_to_tokens(ids)


def test_encoder_pair_format_truncates_the_document_only():
    (enc,) = PairTemplate(PAIR, append_eos=False).encode(
        TOK, [QUERY], [DOC], max_length=12, max_query_length=8
    )
    assert tokens(enc.input_ids) == ["[CLS]", "baba", "bebe", "bibi", "[SEP]", *["kavo"] * 6, "[SEP]"]
    assert enc.token_type_ids == [0] * 5 + [1] * 7


def test_causal_template_reads_document_then_query_then_eos():
    (enc,) = PairTemplate(CAUSAL_TEMPLATE).encode(TOK, [QUERY], [DOC], max_length=14, max_query_length=8)
    assert tokens(enc.input_ids) == [
        "document", ":", *["kavo"] * 5, ";", "query", ":", "baba", "bebe", "bibi", "[EOS]",
    ]  # fmt: skip
    assert len(enc.input_ids) == 14


def test_query_is_capped_at_max_query_length():
    long_query = " ".join(["zuzu"] * 20)
    (enc,) = PairTemplate(CAUSAL_TEMPLATE).encode(
        TOK, [long_query], ["kavo"], max_length=64, max_query_length=4
    )
    assert tokens(enc.input_ids).count("zuzu") == 4 and tokens(enc.input_ids)[-1] == "[EOS]"


def test_custom_template_and_bad_templates():
    (enc,) = PairTemplate("query: {query} doc: {document}").encode(TOK, ["baba"], ["kavo"], 32, 8)
    assert tokens(enc.input_ids)[:3] == ["query", ":", "baba"]
    with pytest.raises(ValueError, match="must contain"):
        PairTemplate("{query} only")
