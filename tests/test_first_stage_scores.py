"""First-stage scores shown to the reranker as text (``pair+score``): scaling, rendering, BM25 scores for
positives below the cut-off, and the whole path through ``bm25``, ``fit`` and ``predict``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import ir_measures
import pytest
from helpers import cli

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.commands.bm25 import bm25, bm25_run
from lightning_rank.datamodules import RerankDataModule, register_beir_folder
from lightning_rank.datamodules.collections import load_dataset
from lightning_rank.datamodules.synthetic import DemoSpec, generate
from lightning_rank.errors import ConfigError
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.score_text import score_texts
from lightning_rank.text.templates import PAIR_WITH_SCORE, PairTemplate

NUMBERS = ["-", *map(str, range(1001))]


def numbers_tokenizer():
    """The demo's word tokenizer plus the tokens of whole numbers, so rendered scores are not [UNK]."""
    tokenizer = load_tokenizer("builtin:words")
    tokenizer.add_tokens(NUMBERS)
    return tokenizer


def tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def test_scores_are_scaled_per_query_over_its_top_depth():
    scores = {
        "q1": {"a": 30.0, "b": 20.0, "c": 10.0, "deep": 5.0},
        "q2": {"x": -1.0, "y": -3.0},
        "q3": {"z": 7},
    }
    assert score_texts(scores, depth=3) == {
        "q1": {"a": "100", "b": "50", "c": "0", "deep": "-25"},  # below the depth-th: below 0
        "q2": {"x": "100", "y": "0"},  # negative raw scores (a dense run) scale the same way
        "q3": {"z": "100"},
    }
    # the same candidates scale the same whatever else the run holds below the depth
    assert score_texts({"q1": {"a": 30.0, "b": 20.0, "c": 10.0}}, depth=3)["q1"] == {
        "a": "100",
        "b": "50",
        "c": "0",
    }


def test_pair_with_score_puts_the_score_between_query_and_document_and_truncates_the_document_only():
    tokenizer = numbers_tokenizer()
    template = PairTemplate(PAIR_WITH_SCORE, append_eos=False)
    assert template.is_pair and template.needs_score
    (enc,) = template.encode(
        tokenizer, ["baba bebe"], [" ".join(["kavo"] * 50)], max_length=12, max_query_length=8, scores=["57"]
    )
    assert tokens(tokenizer, enc.input_ids) == [
        "[CLS]", "baba", "bebe", "[SEP]", "57", "[SEP]", *["kavo"] * 5, "[SEP]",
    ]  # fmt: skip
    assert enc.token_type_ids == [0] * 6 + [1] * 6
    # scores differ per pair of the same query; negative scores render too
    encoded = template.encode(tokenizer, ["baba", "baba"], ["kavo", "kavo"], 32, 8, scores=["100", "-25"])
    assert [tokens(tokenizer, e.input_ids)[3:-3] for e in encoded] == [["100"], ["-", "25"]]


def test_a_text_template_shows_the_score_in_its_score_field():
    tokenizer = numbers_tokenizer()
    template = PairTemplate("document: {document}; query: {query} {score}")
    (enc,) = template.encode(tokenizer, ["baba"], [" ".join(["kavo"] * 50)], 10, 8, scores=["7"])
    assert tokens(tokenizer, enc.input_ids) == [
        "document", ":", "kavo", "kavo", ";", "query", ":", "baba", "7", "[EOS]",
    ]  # fmt: skip


def test_templates_refuse_missing_or_unexpected_scores():
    tokenizer = numbers_tokenizer()
    with pytest.raises(ValueError, match="pass one per pair"):
        PairTemplate(PAIR_WITH_SCORE).encode(tokenizer, ["baba"], ["kavo"], 32, 8)
    with pytest.raises(ValueError, match="has no \\{score\\} field: use 'pair\\+score'"):
        PairTemplate("pair").encode(tokenizer, ["baba"], ["kavo"], 32, 8, scores=["1"])
    with pytest.raises(ValueError, match="'\\{score\\}' at most once"):
        PairTemplate("{query} {score} {document} {score}")


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory):
    folder = generate(
        tmp_path_factory.mktemp("scored") / "tinybeir",
        DemoSpec(num_topics=8, filler_vocabulary=12, query_fillers=2, train_queries=40, dev_queries=10),
    )
    register_beir_folder("scored-beir", folder)
    return folder


def test_bm25_judged_scores_positives_below_the_depth_with_their_real_score(tiny_beir):
    top, judged = bm25_run("scored-beir/train", depth=2, judged=True)
    deep, _ = bm25_run("scored-beir/train", depth=10_000)
    plain, nothing = bm25_run("scored-beir/train", depth=2)
    assert top == plain and nothing == {}  # the top 2 as without it
    qrels = load_dataset("scored-beir/train").qrels_dict()
    added = 0
    for qid in plain:
        below = judged.get(qid, {})
        assert set(below) == {d for d in qrels.get(qid, {}) if d not in plain[qid]}  # every judged doc
        for doc, score in below.items():
            assert score == pytest.approx(deep[qid].get(doc, 0.0)) and score <= min(plain[qid].values())
        added += len(below)
    assert added > 0  # the fixture has positives that BM25 ranks below 2


def test_bm25_judged_reports_the_metrics_of_the_top_depth_alone(tiny_beir, tmp_path):
    plain = bm25("scored-beir/train", str(tmp_path / "plain.trec"), depth=2)
    judged = bm25("scored-beir/train", str(tmp_path / "judged.trec"), depth=2, judged=True)
    assert judged == plain and plain["R@100"] < 1.0  # the judged documents added would make recall 1
    lines = {name: (tmp_path / f"{name}.trec").read_text().count("\n") for name in ("plain", "judged")}
    assert lines["judged"] > lines["plain"]


@pytest.mark.slow
def test_fit_and_predict_show_first_stage_scores_through_the_cli(tiny_beir, tmp_path):
    collections = json.dumps({"scored-cli": str(tiny_beir)})
    tokenizer_folder = tmp_path / "tokenizer"
    numbers_tokenizer().save_pretrained(tokenizer_folder)
    runs = {}
    for split, judged in (("train", "true"), ("dev", "false")):
        runs[split] = tmp_path / f"bm25-{split}.trec"
        result = cli(
            "bm25", "--local_collections", collections, "--dataset", f"scored-cli/{split}", "--depth", "5",
            "--output", str(runs[split]), "--judged", judged,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    backbone = {
        "tokenizer": str(tokenizer_folder),
        "template": "pair+score",
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    }
    common = [
        "--model.backbone", "bert", "--model.backbone_args", json.dumps(backbone),
        "--data.local_collections", collections, "--data.rerank_depth", "5", "--data.group_size", "4",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    result = cli(
        "fit", *common, "--data.train_dataset", "scored-cli/train", "--data.train_run", str(runs["train"]),
        "--data.negatives_depth", "5", "--trainer.max_steps", "3",
        "--trainer.default_root_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "40 training queries; skipped nothing" in result.stderr  # every positive has its BM25 score
    ckpt = next(tmp_path.rglob("*.ckpt"))
    reranked = tmp_path / "reranked.trec"
    result = cli(
        "predict", *common, "--ckpt_path", str(ckpt), "--data.predict_dataset", "scored-cli/dev",
        "--data.predict_run", str(runs["dev"]), "--run_writer.output", str(reranked),
        "--trainer.default_root_dir", str(tmp_path / "predict"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    entries = list(ir_measures.read_trec_run(str(reranked)))
    assert len({e.query_id for e in entries}) == 10 and len(entries) == sum(
        1 for _ in ir_measures.read_trec_run(str(runs["dev"]))
    )


def test_training_batches_show_each_candidates_scaled_score_and_skip_unscored_positives(tmp_path):
    """q0's positive d0 is ranked below the depth (3): it reads -25 beside its negatives' 100/50/0. q1's
    positive is not in the run at all: q1 is skipped and counted, not shown a made-up score."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"kavo doc{i}"} for i in range(6)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": "q0", "text": "baba"}, {"_id": "q1", "text": "bebe"}]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td5\t1\n")
    run = tmp_path / "train.trec"
    rows = [("q0", "d1", 9.0), ("q0", "d2", 5.0), ("q0", "d3", 1.0), ("q0", "d0", -1.0), ("q1", "d4", 2.0)]
    run.write_text("".join(f"{q} Q0 {d} 1 {s} bm25\n" for q, d, s in rows))
    register_beir_folder("scored-fixture", folder)
    dm = RerankDataModule(
        train_dataset="scored-fixture/train", train_run=str(run), group_size=3, batch_size=1, rerank_depth=3
    )
    tokenizer = numbers_tokenizer()
    dm.use_backbone(SimpleNamespace(tokenizer=tokenizer, template=PairTemplate(PAIR_WITH_SCORE)))
    dm.setup("fit")
    assert [q.query_id for q in dm._train.index] == ["q0"]
    assert dm.train_report.counts["documents without a first-stage score"] == 1
    batch = dm._train.make_batch([0])
    shown = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        words = tokens(tokenizer, ids[mask.bool()].tolist())
        first, second = [i for i, w in enumerate(words) if w == "[SEP]"][:2]
        assert words[1:first] == ["baba"]
        shown.append("".join(words[first + 1 : second]))
    assert shown[0] == "-25" and len(set(shown[1:])) == 2 and set(shown[1:]) <= {"100", "50", "0"}

    docpairs = RerankDataModule(train_dataset="scored-fixture/train", train_source="docpairs")
    docpairs.use_backbone(SimpleNamespace(tokenizer=tokenizer, template=PairTemplate(PAIR_WITH_SCORE)))
    with pytest.raises(ConfigError, match="docpairs do not have"):
        docpairs.setup("fit")


@pytest.mark.parametrize("template", ["pair+score", "document: {document}; score: {score}; query: {query}"])
def test_a_tokenizer_that_reads_scores_as_unknown_is_refused_before_training(template, tmp_path):
    """The demo's word tokenizer has no numbers: every candidate would show the same [UNK] as its score."""
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    words = {"tokenizer": "builtin:words", "template": template, "config": config}
    with pytest.raises(ValueError, match=r"'builtin:words' reads 0, 57, 100, -25 as '\[UNK\]'.*digits"):
        RerankerModule(backbone="bert", backbone_args=words)
    numbers_tokenizer().save_pretrained(tmp_path / "numbers")
    module = RerankerModule(backbone="bert", backbone_args={**words, "tokenizer": str(tmp_path / "numbers")})
    assert module.backbone.template.needs_score
