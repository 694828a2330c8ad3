"""``lightning-rank rerank``: an export reranks a run from the command line as ``predict`` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import DEMO, TRAINED_SETTINGS

from lightning_rank.cli import main
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.runs import write_trec_run


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory):
    """``predict`` with the fit's checkpoint and data settings over the demo's dev candidates."""
    out = tmp_path_factory.mktemp("predict")
    main([
        "predict", "--config", DEMO, "--ckpt_path", str(trained[0]), *TRAINED_SETTINGS,
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
        "--data.predict_dataset", "lightning-rank/demo/dev", "--run_writer.output", str(out / "run.trec"),
    ])  # fmt: skip
    return out / "run.trec"


def rerank(capsys, export, run, output, *extra: str) -> SimpleNamespace:
    """``lightning-rank rerank`` run in this process (the console script's entry point): status, output."""
    capsys.readouterr()
    returncode = main(["rerank", "--model", str(export), "--dataset", "lightning-rank/demo/dev",
                       "--run", str(run), "--output", str(output), "--device", "cpu", *extra])  # fmt: skip
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=returncode, stdout=captured.out, stderr=captured.err)


def test_an_export_reranks_a_run_to_the_scores_predict_gives_with_the_checkpoint(
    trained, predicted, tmp_path, capsys
):
    out = tmp_path / "reranked.trec"
    done = rerank(capsys, trained[1], predicted, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nDCG@10=" in done.stdout  # the demo's dev queries have qrels
    expected, got = read_trec_run(predicted), read_trec_run(out)
    assert {q: set(d) for q, d in got.items()} == {q: set(d) for q, d in expected.items()}
    for qid, docs in expected.items():
        for doc, score in docs.items():
            assert got[qid][doc] == pytest.approx(score, abs=1e-5), (qid, doc)


def test_depth_keeps_each_querys_highest_scored_candidates(trained, predicted, tmp_path, capsys):
    candidates = read_trec_run(predicted)
    out = tmp_path / "top3.trec"
    done = rerank(capsys, trained[1], predicted, out, "--depth", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    got = read_trec_run(out)
    for qid, docs in candidates.items():
        assert set(got[qid]) == set(sorted(docs, key=docs.get, reverse=True)[:3])
    # ties at the cut are broken as predict's data.rerank_depth breaks them: by doc id, descending
    tied = tmp_path / "tied.trec"
    write_trec_run({qid: dict.fromkeys(docs, 1.0) for qid, docs in candidates.items()}, tied)
    done = rerank(capsys, trained[1], tied, out, "--depth", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    got = read_trec_run(out)
    for qid, docs in candidates.items():
        assert set(got[qid]) == set(sorted(docs, reverse=True)[:3])


def test_a_folder_that_is_not_an_export_or_a_run_of_another_dataset_is_refused(
    trained, predicted, tmp_path, capsys
):
    done = rerank(capsys, tmp_path, predicted, tmp_path / "out.trec")
    assert done.returncode == 2 and "is not a lightning-rank export" in done.stderr
    foreign = tmp_path / "foreign.trec"
    write_trec_run({"no-such-query": {"no-such-doc": 1.0}}, foreign)
    done = rerank(capsys, trained[1], foreign, tmp_path / "out.trec")
    assert (
        done.returncode == 2
        and "none of the run's queries is a query of lightning-rank/demo/dev" in done.stderr
    )
    assert not (tmp_path / "out.trec").exists()


def keep_only_format_version(manifest: Path) -> None:
    manifest.write_text(json.dumps({"format_version": json.loads(manifest.read_text())["format_version"]}))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda f: (f / "reranker.json").write_text("{not json"), "reranker.json: not valid JSON"),
        (lambda f: (f / "reranker.json").write_text("[]"), "reranker.json: expected a JSON object"),
        (
            lambda f: (f / "reranker.json").write_text('{"format_version": 1}'),
            "reranker.json: missing backbone",
        ),
        (lambda f: (f / "head.safetensors").unlink(), "head.safetensors is missing"),
    ],
    ids=["invalid-json", "not-an-object", "missing-keys", "missing-head"],
)
def test_a_damaged_export_is_one_error_naming_the_file(trained, predicted, tmp_path, capsys, damage, needle):
    """A truncated or hand-edited export folder is exit 2 naming what is wrong, not a KeyError traceback."""
    export = shutil.copytree(trained[1], tmp_path / "export")
    damage(export)
    done = rerank(capsys, export, predicted, tmp_path / "out.trec")
    assert done.returncode == 2 and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out.trec").exists()
