"""A trained reranker keeps how its pairs were rendered: checkpoints and exports score as training did."""

from __future__ import annotations

import inspect
import json
import re
import warnings

import pytest
import torch
from helpers import DEMO, DOC, QUERY
from helpers import TRAINED_SETTINGS as SETTINGS

from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.input_format import InputFormat

TRAINED = InputFormat(max_length=40, max_query_length=12, excerpt="query_biased")


def test_the_defaults_are_the_data_modules():
    signature = inspect.signature(RerankDataModule.__init__).parameters
    assert InputFormat() == InputFormat(**{k: signature[k].default for k in InputFormat().as_dict()})


def test_checkpoint_and_export_keep_the_fits_input_format(trained):
    ckpt, export, printed = trained
    assert "scores pairs as its fit did: max_length 40, max_query_length 12, excerpt query_biased" in printed
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["input_format"] == TRAINED.as_dict()
    assert RerankerModule.load_from_checkpoint(ckpt, weights_only=True).input_format == TRAINED
    assert json.loads((export / "reranker.json").read_text())["input_format"] == TRAINED.as_dict()
    assert RerankerModule.from_pretrained(export).input_format == TRAINED


def test_score_of_an_export_renders_as_training_unless_told_otherwise(trained):
    reranker = RerankerModule.from_pretrained(trained[1])
    queries, docs = [QUERY, "bibi"], [DOC, DOC]  # the query terms are in the document's last sentence
    default = reranker.score(queries, docs)
    assert torch.equal(default, reranker.score(queries, docs, max_length=40, excerpt="query_biased"))
    assert not torch.equal(default, reranker.score(queries, docs, max_length=40, excerpt="first"))
    assert not torch.equal(default, reranker.score(queries, docs, max_length=256))
    assert torch.equal(default, reranker.score(queries, docs, max_query_length=12))


def test_a_checkpoint_written_before_the_record_takes_the_data_modules_settings(trained, tmp_path):
    state = torch.load(trained[0], map_location="cpu", weights_only=True)
    del state["input_format"]
    torch.save(state, tmp_path / "old.ckpt")
    old = RerankerModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert old.input_format == TRAINED


def test_predict_warns_when_it_renders_unlike_training_and_not_otherwise(trained, tmp_path):
    run = tmp_path / "run.trec"
    common = [
        "predict", "--config", DEMO, "--ckpt_path", str(trained[0]), "--trainer.enable_progress_bar", "false",
        "--data.predict_dataset", "lightning-rank/demo/dev", "--run_writer.output", str(run),
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    changes = (
        "data.max_length: 40 -> 64; data.max_query_length: 12 -> 16; data.excerpt: 'query_biased' -> 'first'"
    )
    with pytest.warns(UserWarning, match=re.escape(changes)):
        main(common)
    assert run.stat().st_size > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([*common, *SETTINGS])
    assert not [w for w in caught if "rendered otherwise" in str(w.message)]


def test_an_export_with_a_bad_input_format_names_the_file_and_the_choices(trained, tmp_path):
    import shutil

    export = shutil.copytree(trained[1], tmp_path / "bad")
    manifest = json.loads((export / "reranker.json").read_text())
    manifest["input_format"]["excerpt"] = "middle"
    (export / "reranker.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"reranker\.json.*'first', 'query_biased'"):
        RerankerModule.from_pretrained(export)
