"""The PyTerrier transformer (the ``pyterrier`` extra): in a pipeline after a fixed first stage it gives
``RerankerModule.score``'s scores and per-query ranks, keeps the other columns, and ``pt.Experiment``
compares it with the first stage, offline and without Java. Skipped where PyTerrier is not installed."""

from __future__ import annotations

import importlib
import sys

import ir_measures
import pytest
import torch
from helpers import DOCUMENTS, QUERIES, TINY_BERT

from lightning_rank.errors import ConfigError, DataError, InputError
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.input_format import InputFormat
from lightning_rank.text.score_text import score_texts

pt = pytest.importorskip("pyterrier")
pd = pytest.importorskip("pandas")
from lightning_rank.integrations.pyterrier import LightningRankReranker  # noqa: E402

# the recorded input format differs from the defaults, so a scorer that ignored it would give other scores
TRAINED_FORMAT = InputFormat(max_length=20, max_query_length=6, excerpt="query_biased")


def candidates() -> pd.DataFrame:
    """A fixed first stage: 3 queries, 4 candidates each (texts of several lengths, so batches pad),
    first-stage scores and ranks, and a column the reranker must pass through."""
    rows = [
        {
            "qid": f"q{q}",
            "query": QUERIES[q],
            "docno": f"d{(q + k) % 4}",
            "text": DOCUMENTS[(q + k) % 4],
            "score": float(10 - k),
            "rank": k,
            "title": f"title {q}-{k}",
        }
        for q in range(3)
        for k in range(4)
    ]
    return pd.DataFrame(rows)


def topics() -> pd.DataFrame:
    return pd.DataFrame({"qid": [f"q{q}" for q in range(3)], "query": QUERIES[:3]})


def build_export(folder, backbone_args: dict) -> RerankerModule:
    torch.manual_seed(0)
    module = RerankerModule(backbone="bert", backbone_args=backbone_args)
    module.input_format = TRAINED_FORMAT
    module.save_pretrained(folder)
    return module


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyterrier") / "export"
    build_export(folder, TINY_BERT)
    return folder


def assert_scores(column: pd.Series, expected: torch.Tensor) -> None:
    """A frame's scores are the module's (float32, widened), to 1e-6: batches of other sizes pad otherwise."""
    torch.testing.assert_close(
        torch.tensor(column.tolist(), dtype=torch.float64), expected.double(), rtol=0, atol=1e-6
    )


def expected_ranks(frame: pd.DataFrame) -> list[int]:
    """Each row's 0-based position (PyTerrier's first rank) in its query's rows by descending score."""
    order = frame.sort_values(["qid", "score"], ascending=[True, False], kind="stable")
    position = order.groupby("qid").cumcount() + pt.model.FIRST_RANK
    return position.reindex(frame.index).tolist()


def test_a_pipeline_after_a_first_stage_gives_the_modules_scores_and_ranks_per_query(export):
    first_stage = candidates()
    pipeline = pt.Transformer.from_df(first_stage) >> LightningRankReranker(str(export), batch_size=3)
    out = pipeline(topics())
    reference = RerankerModule.from_pretrained(export)
    assert reference.input_format == TRAINED_FORMAT
    expected = reference.score(out["query"].tolist(), out["text"].tolist(), batch_size=64)
    assert_scores(out["score"], expected)
    assert out["score"].tolist() != first_stage["score"].tolist()
    assert out["rank"].tolist() == expected_ranks(out)
    assert out["rank"].tolist() != first_stage["rank"].tolist()  # the reranker reordered some query
    # every row and its other columns pass through
    key = ["qid", "docno", "title", "query", "text"]
    assert sorted(map(tuple, out[key].values.tolist())) == sorted(
        map(tuple, first_stage[key].values.tolist())
    )


def test_experiment_compares_the_first_stage_with_the_reranked_pipeline(export):
    first_stage = pt.Transformer.from_df(candidates())
    reranker = LightningRankReranker(export)
    qrels = pd.DataFrame({"qid": ["q0", "q1", "q2"], "docno": ["d3", "d2", "d0"], "label": [1, 1, 1]})
    ndcg = ir_measures.nDCG @ 10
    table = pt.Experiment(
        [first_stage, first_stage >> reranker], topics(), qrels, eval_metrics=[ndcg],
        names=["first stage", "reranked"], validate="error", plan="tree",
    )  # fmt: skip
    assert table["name"].tolist() == ["first stage", "reranked"]
    reranked = (first_stage >> reranker)(topics())
    for name, run in (("first stage", candidates()), ("reranked", reranked)):
        measured = ir_measures.calc_aggregate(
            [ndcg], qrels.rename(columns={"qid": "query_id", "docno": "doc_id", "label": "relevance"}),
            run.rename(columns={"qid": "query_id", "docno": "doc_id"})[["query_id", "doc_id", "score"]],
        )[ndcg]  # fmt: skip
        assert table.set_index("name").loc[name, "nDCG@10"] == pytest.approx(measured, abs=1e-9)


def test_a_module_is_used_as_given_and_another_text_column_can_be_named(export):
    module = RerankerModule.from_pretrained(export).train()
    frame = candidates().rename(columns={"text": "body"})
    out = LightningRankReranker(module, text_field="body")(frame)
    assert not module.training  # scored in eval mode: no dropout
    expected = module.score(frame["query"].tolist(), frame["body"].tolist())
    assert out["score"].tolist() == expected.tolist()


def test_a_frame_without_the_text_column_is_refused_with_the_fix(export):
    frame = candidates().drop(columns=["text"])
    with pytest.raises(DataError, match=r"\['text'\].*pt\.text\.get_text\(dataset, 'text'\)"):
        LightningRankReranker(export)(frame)
    with pytest.raises(DataError, match=r"\['query'\].*topics frame"):
        LightningRankReranker(export)(candidates().drop(columns=["query"]))
    missing = candidates()
    missing.loc[5, "text"] = None
    with pytest.raises(DataError, match=r"1 rows have no query or no 'text'.*'docno': 'd2'"):
        LightningRankReranker(export)(missing)


def test_an_empty_frame_gives_an_empty_ranking(export):
    out = LightningRankReranker(export)(candidates().iloc[:0])
    assert len(out) == 0 and {"score", "rank", "title"} <= set(out.columns)


def test_batch_size_below_one_is_refused(export):
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        LightningRankReranker(export, batch_size=0)


def test_a_score_showing_model_reads_the_incoming_scores_scaled_per_query(tmp_path):
    from lightning_rank.backbones.base import load_tokenizer

    tokenizer = load_tokenizer("builtin:words")
    tokenizer.add_tokens(["-", *map(str, range(101))])  # rendered scores are whole numbers, not [UNK]
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    args = {**TINY_BERT, "tokenizer": str(tmp_path / "tokenizer"), "template": "pair+score"}
    module = build_export(tmp_path / "export", args).eval()
    reranker = LightningRankReranker(tmp_path / "export")
    frame = candidates()
    frame["score"] = [3.0, 2.0, 1.0, 0.0, 40.0, 30.0, 20.0, 10.0, -1.0, -2.0, -4.0, -5.0]
    out = reranker(frame)
    shown = score_texts(
        {q: dict(zip(g["docno"], g["score"], strict=True)) for q, g in frame.groupby("qid")}, 4
    )
    assert [shown[q][d] for q, d in zip(frame["qid"], frame["docno"], strict=True)] == [
        "100", "67", "33", "0", "100", "67", "33", "0", "100", "75", "25", "0"
    ]  # fmt: skip
    expected = module.score(
        frame["query"].tolist(), frame["text"].tolist(),
        first_stage=[shown[q][d] for q, d in zip(frame["qid"], frame["docno"], strict=True)],
    )  # fmt: skip
    assert_scores(out["score"], expected)
    frame["score"] = frame["score"] * -1.0  # the order shown flips: the reranker's scores change
    assert out["score"].tolist() != reranker(frame)["score"].tolist()
    with pytest.raises(DataError, match=r"\['score'\].*first-stage scores"):
        reranker(frame.drop(columns=["score"]))


def test_without_pyterrier_the_import_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyterrier", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "lightning_rank.integrations.pyterrier")
    with pytest.raises(InputError, match=r"pip install 'lightning-rank\[pyterrier\]'"):
        importlib.import_module("lightning_rank.integrations.pyterrier")


def test_pyterrier_inspection_sees_the_columns_it_needs_and_adds(export):
    """What schematics and ``pt.Experiment(validate=...)`` read, without running the model."""
    reranker = LightningRankReranker(export, text_field="body")
    assert pt.inspect.transformer_inputs(reranker) == [["qid", "query", "body"]]
    given = ["qid", "query", "docno", "body"]
    assert pt.inspect.transformer_outputs(reranker, given) == [*given, "score", "rank"]
    with pytest.raises(pt.validate.InputValidationError, match="body"):
        pt.inspect.transformer_outputs(reranker, ["qid", "query", "docno", "text"])


def test_rows_are_scored_in_place_whatever_the_frames_index(export):
    frame = candidates()
    shuffled = frame.sample(frac=1.0, random_state=0).set_axis([0] * len(frame))  # repeated labels
    out = LightningRankReranker(export)(shuffled)
    assert out["docno"].tolist() == shuffled["docno"].tolist()
    expected = RerankerModule.from_pretrained(export).score(
        shuffled["query"].tolist(), shuffled["text"].tolist()
    )
    assert_scores(out["score"], expected)
