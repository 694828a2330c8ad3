"""``data.passages``: long documents read as windows; FirstP is truncation, MaxP finds late evidence."""

from __future__ import annotations

import json
import types

import lightning.pytorch as pl
import pytest
import torch
from helpers import DOC, NAMES, NO_DROPOUT, QUERY, TINY, TINY_BERT, long_document_collection

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import ConfigError
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.passages import Passages, combine_windows
from lightning_rank.text.templates import CAUSAL_TEMPLATE, PAIR, PAIR_WITH_SCORE, PairTemplate

TOK = load_tokenizer("builtin:words")
MAX_LENGTH = 32  # the collection's documents are 200 words: over 6 times what a pair leaves them
VERY_LONG = " ".join([DOC] * 60)  # past the characters cut before tokenization (32 per token of max_length)


def doc_tokens(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """``local_collections`` registering the long-document collection as ``windows`` (once a process)."""
    return {"windows": str(long_document_collection(tmp_path_factory.mktemp("data") / "windows"))}


def tiny_bert() -> RerankerModule:
    torch.manual_seed(0)
    return RerankerModule(backbone="bert", backbone_args=TINY_BERT).eval()


def exact_match_scorer() -> RerankerModule:
    """A reranker rigged to score a row by how often the query's (one) token appears in its document part."""
    module = tiny_bert()

    def score(self, input_ids, attention_mask, token_type_ids=None):
        return ((input_ids == input_ids[:, 1:2]) & (token_type_ids == 1)).sum(-1).float()

    module._score_tensors = types.MethodType(score, module)
    return module


def data(collection, stage: str = "test", **settings) -> RerankDataModule:
    sets = {f"{stage}_dataset": "windows/test"}
    return RerankDataModule(**sets, local_collections=collection, max_length=MAX_LENGTH, **settings)


def trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


# -- windows -------------------------------------------------------------------------------------------------
def contains(row: list[int], part: list[int]) -> bool:
    return any(row[i : i + len(part)] == part for i in range(len(row) - len(part) + 1))


@pytest.mark.parametrize("style", [PAIR, CAUSAL_TEMPLATE])
def test_windows_step_by_the_stride_and_reach_the_documents_end(style):
    template = PairTemplate(style, append_eos=style != PAIR)
    whole = doc_tokens(DOC)
    (windows,) = template.encode_windows(TOK, [QUERY], [DOC], 24, 8, Passages("maxp", length=10, stride=4))
    starts = list(range(0, len(whole) - 10 + 4, 4))
    assert len(windows) == len(starts) and starts[-1] + 10 >= len(whole)
    fixed = len(windows[0].input_ids) - 10  # template and query
    for start, window in zip(starts, windows, strict=True):
        assert len(window.input_ids) == fixed + len(whole[start : start + 10])
        assert contains(window.input_ids, whole[start : start + 10])
    capped = template.encode_windows(TOK, [QUERY], [DOC], 24, 8, Passages("maxp", 10, 4, max_windows=3))
    assert capped[0] == windows[:3]


def test_a_window_longer_than_the_room_a_long_query_leaves_takes_the_room_and_skips_nothing():
    # a query of 14 tokens leaves 24 - 3 - 14 = 7 document tokens: windows of 7, one after the other
    query = " ".join(["zuzu"] * 14)
    (windows,) = PairTemplate(PAIR).encode_windows(TOK, [query], [DOC], 24, 16, Passages("maxp", 10, 10))
    read = [tok for w in windows for tok in w.input_ids[16:-1]]
    assert read == doc_tokens(DOC)


@pytest.mark.parametrize("style", [PAIR, CAUSAL_TEMPLATE])
def test_training_reads_the_first_window_or_a_sampled_one_the_same_in_every_call(style):
    template = PairTemplate(style, append_eos=style != PAIR)
    settings = Passages("maxp", length=10, stride=10)
    queries = [f"{QUERY} {w}" for w in ("baba", "kavo", "dede", "lilo", "momo", "fafa", "zuzu", "bebe")]
    every = template.encode_windows(TOK, queries, [DOC] * 8, 24, 8, settings)
    first = template.encode_windows(TOK, queries, [DOC] * 8, 24, 8, settings.for_training)
    assert first == [[windows[0]] for windows in every]  # FirstP: one row a pair, the first window
    sampled = settings.__class__(**{**settings.__dict__, "training": "sampled"}).for_training
    drawn = template.encode_windows(TOK, queries, [DOC] * 8, 24, 8, sampled)
    assert all(len(rows) == 1 and rows[0] in windows for rows, windows in zip(drawn, every, strict=True))
    assert (
        len({windows.index(rows[0]) for rows, windows in zip(drawn, every, strict=True)}) > 1
    )  # not all first
    again = template.encode_windows(TOK, list(reversed(queries)), [DOC] * 8, 24, 8, sampled)
    assert again == list(reversed(drawn))  # a pair's window depends on the pair only: workers, resume agree


def test_a_bad_training_window_is_refused():
    with pytest.raises(ConfigError, match=r"data\.passages\.training 'random' is not one of first, sampled"):
        Passages.of({"mode": "maxp", "training": "random"})


@pytest.mark.parametrize("style", [PAIR, PAIR_WITH_SCORE, CAUSAL_TEMPLATE])
def test_firstp_renders_todays_truncation_token_for_token(style):
    template = PairTemplate(style, append_eos=style != PAIR)
    queries, docs = [QUERY, "kavo", QUERY], [DOC, "baba", VERY_LONG]
    scores = ["57", "0", "100"] if template.needs_score else None
    today = template.encode(TOK, queries, docs, 24, 8, scores)
    assert template.encode_windows(TOK, queries, docs, 24, 8, Passages(), scores) == [[e] for e in today]


MAMBA_TINY = {"mamba1": {"d_model": 32, "n_layer": 2}, "mamba2": {"d_model": 32, "n_layer": 2, "headdim": 16}}


@pytest.mark.parametrize("name", [*NAMES, *MAMBA_TINY])
def test_firstp_scores_equal_truncations_and_maxp_reads_every_window(name):
    torch.manual_seed(0)
    config = MAMBA_TINY[name] if name in MAMBA_TINY else {**TINY, **NO_DROPOUT[name]}
    args = {"tokenizer": "builtin:words", "config": config}
    module = RerankerModule(backbone=name, backbone_args=args).eval()
    queries, docs = [QUERY, "kavo", QUERY], [DOC, "baba", VERY_LONG]
    today = module.score(queries, docs, max_length=24)
    assert torch.equal(module.score(queries, docs, max_length=24, passages={"mode": "firstp"}), today)
    combined = {
        mode: module.score(queries, docs, max_length=24, passages={"mode": mode, "length": 8})
        for mode in ("maxp", "meanp")
    }
    (windows,) = module.backbone.template.encode_windows(
        module.backbone.tokenizer, [QUERY], [DOC], 24, 8, Passages("maxp", 8)
    )
    with torch.no_grad():
        each = module(
            PairCollator(module.backbone.tokenizer, module.backbone.template, 24, 8).collate(windows)
        )
    assert len(windows) > 3
    assert float(combined["maxp"][0]) == pytest.approx(float(each.max()), abs=1e-6)
    assert float(combined["meanp"][0]) == pytest.approx(float(each.mean()), abs=1e-6)
    assert float(combined["maxp"][1]) == pytest.approx(float(today[1]), abs=1e-6)  # one window: the same


def test_window_scores_combine_by_mode():
    scores, owner = torch.tensor([1.0, 4.0, 2.0, -3.0, -1.0]), torch.tensor([0, 0, 0, 1, 1])
    expected = {"firstp": [1.0, -3.0], "maxp": [4.0, -1.0], "sump": [7.0, -4.0], "meanp": [7 / 3, -2.0]}
    for mode, values in expected.items():
        assert combine_windows(mode, scores, owner).tolist() == pytest.approx(values)


# -- settings ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"mode": "best"}, "'best' is not one of firstp, maxp, sump, meanp"),
        ({"mode": "maxp", "length": 8, "stride": 16}, "stride 16 is longer than data.passages.length 8"),
        ({"mode": "maxp", "stride": 16}, "stride needs data.passages.length"),
        ({"mode": "maxp", "length": 0}, "length must be a positive integer"),
        ({"mode": "maxp", "windows": 4}, r"unknown keys \['windows'\]"),
    ],
)
def test_bad_passage_settings_are_refused_naming_the_option(settings, needle):
    with pytest.raises(ValueError, match=needle):
        RerankDataModule(passages=settings)


def test_windows_of_a_query_biased_excerpt_are_refused():
    with pytest.raises(ValueError, match=r"set data\.excerpt: first to score windows"):
        RerankDataModule(passages={"mode": "maxp"}, excerpt="query_biased")
    with pytest.raises(ValueError, match=r"set data\.excerpt: first to score windows"):
        tiny_bert().score([QUERY], [DOC], excerpt="query_biased", passages={"mode": "maxp"})


def test_a_window_longer_than_max_length_allows_is_refused_at_setup(collection):
    dm = data(collection, passages={"mode": "maxp", "length": 40})
    dm.use_backbone(tiny_bert().backbone)
    with pytest.raises(ValueError, match=r"passages\.length 40 is longer than the 29 document tokens"):
        dm.setup("test")


# -- reranking -----------------------------------------------------------------------------------------------
def test_maxp_finds_the_late_evidence_firstp_misses(collection):
    results = {}
    for mode in ("firstp", "maxp", "sump", "meanp"):
        (results[mode],) = trainer().test(exact_match_scorer(), data(collection, passages={"mode": mode}))
    assert results["maxp"]["test/nDCG@10"] == pytest.approx(1.0)
    assert results["firstp"]["test/nDCG@10"] < 0.5  # n<q>_0 (the query term at its start) ranks first
    assert results["sump"]["test/nDCG@10"] == pytest.approx(1.0)
    assert results["meanp"]["test/nDCG@10"] == pytest.approx(1.0)


def predictions(module, datamodule) -> dict[tuple[int, int], float]:
    out = {}
    for batch in trainer().predict(module, datamodule):
        for q, d, s in zip(
            batch["query_index"].tolist(), batch["doc_index"].tolist(), batch["scores"].tolist(), strict=True
        ):
            out[q, d] = s
    return out


def test_firstp_reranks_as_truncation_does(collection):
    module = tiny_bert()
    today = predictions(module, data(collection, "predict"))
    assert predictions(module, data(collection, "predict", passages={"mode": "firstp"})) == today
    assert predictions(module, data(collection, "predict", passages={"mode": "maxp"})) != today


@pytest.mark.parametrize("layout", [{"packing": True}, {"length_buckets": 3}])
def test_windows_packed_or_bucketed_score_as_padded_rows(collection, layout):
    module = tiny_bert()
    settings = {"passages": {"mode": "maxp", "length": 12, "stride": 6}, "eval_batch_size": 7}
    padded = predictions(module, data(collection, "predict", **settings))
    other = predictions(module, data(collection, "predict", **settings, **layout))
    assert other.keys() == padded.keys()
    for pair, score in padded.items():
        assert other[pair] == pytest.approx(score, abs=1e-5)


# -- the command line ----------------------------------------------------------------------------------------
def test_a_maxp_fit_records_its_windows_and_rerank_on_its_export_scores_as_predict(
    collection, tmp_path, capsys
):
    passages = "{mode: maxp, length: 16, stride: 8, training: sampled}"  # trains on a sampled window
    common = [
        "--model.backbone", "bert", "--model.backbone_args", json.dumps(TINY_BERT),
        "--data.local_collections", json.dumps(collection), "--data.max_length", str(MAX_LENGTH),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--data.eval_batch_size", "8",
    ]  # fmt: skip
    main([
        "fit", *common, "--data.train_dataset", "windows/train", "--data.passages", passages,
        "--data.group_size", "4", "--data.batch_size", "2", "--trainer.max_steps", "2",
    ])  # fmt: skip
    (ckpt,) = tmp_path.rglob("last.ckpt")
    recorded = torch.load(ckpt, map_location="cpu", weights_only=True)["input_format"]["passages"]
    assert recorded == {"mode": "maxp", "length": 16, "stride": 8, "max_windows": None, "training": "sampled"}
    predicted = tmp_path / "predict.trec"
    main([
        "predict", *common, "--ckpt_path", str(ckpt), "--data.passages", passages,
        "--data.predict_dataset", "windows/test", "--run_writer.output", str(predicted),
    ])  # fmt: skip
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "export")]) in (0, None)
    assert "passages Passages(mode='maxp', length=16, stride=8" in capsys.readouterr().out
    refused = [
        "export",
        "--ckpt_path",
        str(ckpt),
        "--output",
        str(tmp_path / "st"),
        "--format",
        "sentence-transformers",
    ]
    assert main(refused) == 2
    assert "reads long documents as windows (data.passages maxp)" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()
    reranked = tmp_path / "rerank.trec"
    code = main([
        "rerank", "--model", str(tmp_path / "export"), "--dataset", "windows/test", "--run", str(predicted),
        "--output", str(reranked), "--device", "cpu", "--local_collections", json.dumps(collection),
    ])  # fmt: skip
    assert code == 0
    expected, got = read_trec_run(predicted), read_trec_run(reranked)
    assert got.keys() == expected.keys() and len(expected) == 6
    for qid, docs in expected.items():
        assert got[qid].keys() == docs.keys()
        for doc, score in docs.items():
            assert got[qid][doc] == pytest.approx(score, abs=1e-5), (qid, doc)
    exported = RerankerModule.from_pretrained(tmp_path / "export")
    as_fit = exported.score(
        [QUERY], [VERY_LONG], max_length=MAX_LENGTH, passages={"mode": "maxp", "length": 16, "stride": 8}
    )
    assert torch.equal(exported.score([QUERY], [VERY_LONG]), as_fit)
