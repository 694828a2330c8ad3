"""``data.excerpt``: a long document keeps its first sentence, then those sharing the query's terms."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import DOC, FILLER, FIRST, LATE, QUERY, REPO, cli

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.excerpts import query_biased_excerpts, segments
from lightning_rank.text.templates import CAUSAL_TEMPLATE, PAIR, PairTemplate

TOK = load_tokenizer("builtin:words")


def count_tokens(texts: list[str]) -> list[int]:
    return [len(ids) for ids in TOK(texts, add_special_tokens=False)["input_ids"]]


def test_a_document_that_fits_is_left_whole():
    assert query_biased_excerpts([QUERY], [DOC], [1000], count_tokens) == [DOC]


def test_a_long_document_keeps_its_first_and_the_matching_sentences_in_order():
    budget = 30  # first (3 tokens) + the last (5) + two fillers (10 each); the whole is 68
    (excerpt,) = query_biased_excerpts([QUERY], [DOC], [budget], count_tokens)
    assert excerpt == " ".join([FIRST, FILLER, FILLER, LATE])
    assert count_tokens([excerpt])[0] <= budget
    (no_match,) = query_biased_excerpts(["dede"], [DOC], [budget], count_tokens)
    # no sentence matches: the earliest sentences that fit, then a later one that still fits
    assert no_match == " ".join([FIRST, FILLER, FILLER, LATE])


def test_sentences_of_over_40_words_are_cut_so_text_without_punctuation_is_selectable():
    parts = segments(" ".join(["kavo"] * 100) + " zuzu")
    assert [len(p.split()) for p in parts] == [40, 40, 21] and parts[-1].endswith("zuzu")


def test_a_first_sentence_longer_than_the_budget_is_left_to_truncation():
    doc = " ".join(["kavo"] * 30) + ". zuzu."
    assert query_biased_excerpts([QUERY], [doc], [10], count_tokens) == [doc]


@pytest.mark.parametrize("style", [PAIR, CAUSAL_TEMPLATE])
def test_templates_read_the_late_sentence_only_with_query_biased(style):
    template = PairTemplate(style, append_eos=style != PAIR)
    kept = {}
    for excerpt in ("first", "query_biased"):
        (enc,) = template.encode(TOK, [QUERY], [DOC], 32, 8, excerpt=excerpt)
        assert len(enc.input_ids) <= 32
        kept[excerpt] = TOK.convert_ids_to_tokens(enc.input_ids)
    assert kept["first"].count("zuzu") == 1  # the query's own
    assert kept["query_biased"].count("zuzu") == 2 and "lilo" in kept["query_biased"]
    assert "baba" in kept["query_biased"]  # the first sentence stays


def test_an_unknown_excerpt_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'first', 'query_biased'"):
        PairTemplate(PAIR).encode(TOK, [QUERY], [DOC], 32, 8, excerpt="middle")
    with pytest.raises(ValueError, match="'first', 'query_biased'"):
        RerankDataModule(excerpt="middle")


def test_score_reads_the_excerpt_as_training_does():
    torch.manual_seed(0)
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    module = RerankerModule(backbone="bert", backbone_args={"tokenizer": "builtin:words", "config": config})
    module.eval()
    (excerpt,) = query_biased_excerpts([QUERY], [DOC], [32 - 2 - 3], count_tokens)
    biased = module.score([QUERY], [DOC], max_length=32, excerpt="query_biased")
    assert torch.equal(biased, module.score([QUERY], [excerpt], max_length=32))
    assert not torch.equal(biased, module.score([QUERY], [DOC], max_length=32))


def write_long_collection(root: Path) -> Path:
    """A BEIR folder whose documents carry query i's term only in their last sentence."""
    root.mkdir(parents=True)
    terms = ["zuzu", "bibi", "lilo", "momo"]
    with (root / "corpus.jsonl").open("w") as f:
        for d, term in enumerate(terms):
            text = f"bebe. {' '.join([FILLER] * 6)} {term}."
            f.write(json.dumps({"_id": f"d{d}", "title": "baba", "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for q, term in enumerate(terms):
            f.write(json.dumps({"_id": f"q{q}", "text": term}) + "\n")
    (root / "qrels").mkdir()
    rows = ["query-id\tcorpus-id\tscore", *(f"q{q}\td{q}\t1" for q in range(4))]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_the_data_module_reranks_with_the_configured_excerpt(tmp_path):
    folder = write_long_collection(tmp_path / "long")
    run = tmp_path / "run.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {d + 1} {9 - d} bm25\n" for q in range(4) for d in range(4)))
    seen = {}
    for excerpt in ("first", "query_biased"):
        dm = RerankDataModule(
            predict_dataset="long/test",
            predict_run=str(run),
            local_collections={"long": str(folder)},
            max_length=24,
            excerpt=excerpt,
        )
        dm.use_backbone(SimpleNamespace(tokenizer=TOK, template=PairTemplate(PAIR, append_eos=False)))
        dm.setup("predict")
        batch = next(iter(dm.predict_dataloader()))
        ids = batch.get("buckets", [batch])[0]["input_ids"]
        seen[excerpt] = [TOK.convert_ids_to_tokens(row) for row in ids.tolist()]
    # each pair's query term appears twice (query and the document's last sentence) only in query_biased
    matches = {k: sum(row.count(row[1]) == 2 for row in rows) for k, rows in seen.items()}
    assert matches == {"first": 0, "query_biased": 4}


@pytest.mark.slow
def test_the_cli_refuses_an_unknown_excerpt_naming_the_choices():
    result = cli("fit", "--config", str(REPO / "configs" / "demo.yaml"), "--data.excerpt=middle")
    assert result.returncode != 0
    assert "excerpt" in result.stderr and "query_biased" in result.stderr
