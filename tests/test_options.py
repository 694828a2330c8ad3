"""Out-of-range options fail at configuration, before any data is read or any model is built, with a
ConfigError naming the option, the value and the range (the CLI: ``error:`` and exit 2, no traceback)."""

from __future__ import annotations

import pytest
from conftest import REPO, cli

from lightning_rank.bm25 import bm25
from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.module import RerankerModule
from lightning_rank.preflight import ConfigError

DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.mark.parametrize(
    ("option", "value", "minimum"),
    [
        ("batch_size", 0, 1),
        ("eval_batch_size", 0, 1),
        ("negatives_depth", 0, 1),
        ("rerank_depth", -1, 1),
        ("max_length", 0, 1),
        ("max_query_length", 0, 1),
        ("length_buckets", 0, 1),
        ("pad_to_multiple_of", 0, 1),
        ("num_workers", -1, 0),
    ],
)
def test_data_sizes_out_of_range_fail_before_any_data_is_read(tmp_path, option, value, minimum):
    missing = {"mine": str(tmp_path / "not-there")}  # reading data first would fail on this folder instead
    with pytest.raises(ConfigError, match=rf"^data\.{option} must be >= {minimum}, got {value}\b"):
        RerankDataModule(local_collections=missing, train_dataset="mine/train", **{option: value})


@pytest.mark.parametrize(
    ("option", "value", "minimum"),
    [("lr", -1e-5, 0), ("warmup", -0.1, 0), ("weight_decay", -0.01, 0), ("cuda_graph_limit", 0, 1)],
)
def test_model_rates_out_of_range_fail_before_the_backbone_is_built(option, value, minimum):
    # an unknown backbone would fail on its own, so the range check must come first
    with pytest.raises(ConfigError, match=rf"^model\.{option} must be >= {minimum}, got {value}\b"):
        RerankerModule(backbone="no-such-backbone", **{option: value})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depth": 0}, "--depth must be >= 1, got 0"),
        ({"k1": -0.5}, "--k1 must be >= 0, got -0.5"),
        ({"b": 1.5}, "--b must be in [0, 1], got 1.5"),
    ],
)
def test_bm25_options_out_of_range_fail_before_the_dataset_is_read(tmp_path, options, message):
    with pytest.raises(ConfigError) as caught:
        bm25("no/such-dataset", str(tmp_path / "run.trec"), **options)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bm25", "--dataset", "no/such", "--output", "{out}", "--depth", "0"],
         "--depth must be >= 1, got 0"),
        (["fuse", "--run", "{missing}", "--first_stage", "{missing}", "--output", "{out}", "--weight", "1.5"],
         "--weight must be in [0, 1], got 1.5"),
        (["dense", "--dataset", "no/such", "--run", "{missing}", "--output", "{out}", "--model", "m",
          "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        (["dense", "--dataset", "no/such", "--run", "{missing}", "--output", "{out}", "--model", "m",
          "--max_length", "0"], "--max_length must be >= 1, got 0"),
        (["rerank", "--model", "{missing}", "--dataset", "no/such", "--run", "{missing}", "--output", "{out}",
          "--depth", "0"], "--depth and --batch_size must be positive, got 0 and 64"),
    ],
)  # fmt: skip
def test_function_subcommands_name_the_option_and_exit_2(tmp_path, capsys, args, message):
    filled = [a.format(out=tmp_path / "out.trec", missing=tmp_path / "missing") for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and "Traceback" not in err, err
    assert not (tmp_path / "out.trec").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--data.batch_size=0", "error: data.batch_size must be >= 1, got 0"),
        ("--model.lr=-0.001", "error: model.lr must be >= 0, got -0.001"),
    ],
)
def test_fit_with_an_option_out_of_range_exits_2_without_a_traceback(tmp_path, option, message):
    result = cli("fit", "--config", DEMO, option, f"--trainer.default_root_dir={tmp_path}", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # refused before a folder or checkpoint was written
