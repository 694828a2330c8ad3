"""Out-of-range options fail at configuration, before any data is read or any model is built, with a
ConfigError naming the option, the value and the range (the CLI: ``error:`` and exit 2, no traceback)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import DEMO, cli, stub_backbone, tsv_collection

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.cli import main
from lightning_rank.commands.bm25 import bm25
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.errors import ConfigError
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.templates import PairTemplate


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
@pytest.mark.slow
def test_fit_with_an_option_out_of_range_exits_2_without_a_traceback(tmp_path, option, message):
    result = cli("fit", "--config", DEMO, option, f"--trainer.default_root_dir={tmp_path}", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # refused before a folder or checkpoint was written


# -- data.max_length too short for the template: no document token left -------------------------------------
def budget_module(name: str, root: Path, **kwargs) -> RerankDataModule:
    dm = RerankDataModule(
        local_collections={name: tsv_collection(root, n_docs=10)}, val_dataset=f"{name}/dev", **kwargs
    )
    # the causal template "document: {document}; query: {query}" + EOS: 6 tokens of the word tokenizer
    dm.use_backbone(stub_backbone())
    return dm


def test_document_budgets_are_what_encode_leaves_the_document():
    words = load_tokenizer("builtin:words")
    queries, documents = ["", "kavo question 3", "a b c d e f g h"], ["kavo passage one two three"] * 3
    cases = [
        (PairTemplate(), None),
        (PairTemplate("pair"), None),
        (PairTemplate("pair+score"), ["1", "7", "-2"]),
    ]
    for template, scores in cases:
        budgets = template.document_budgets(words, queries, 12, 4, scores)
        empty = template.encode(words, queries, [""] * 3, 12, 4, scores)
        full = template.encode(words, queries, documents, 12, 4, scores)
        for budget, bare, pair in zip(budgets, empty, full, strict=True):
            assert len(pair.input_ids) - len(bare.input_ids) == max(min(budget, 5), 0)


def test_a_max_length_the_template_fills_alone_is_refused_before_data_is_read(tmp_path):
    dm = budget_module("no-room", tmp_path, max_length=6, max_query_length=4)
    (tmp_path / "run.trec").unlink()  # reading data first would fail on the missing run instead
    message = (
        r"^data\.max_length 6 leaves no token for the document: the backbone's template takes 6 tokens by "
        r"itself\. Set data\.max_length to at least 7 \(11 keeps room with queries of data\.max_query_length"
    )
    with pytest.raises(ConfigError, match=message):
        dm.setup("validate")


def test_pairs_the_query_leaves_no_document_token_are_counted(tmp_path, caplog):
    dm = budget_module("some-room", tmp_path, max_length=8, max_query_length=8)
    with caplog.at_level(logging.WARNING):
        dm.setup("validate")
    warnings = [r.getMessage() for r in caplog.records if "leave no token" in r.getMessage()]
    assert warnings == [
        "some-room/dev: 12 of 24 pairs leave no token of data.max_length 8 for the document (the template "
        "and the query, kept up to data.max_query_length 8 tokens, take them all): they are scored without "
        "their document. Set data.max_length to at least 10, or lower data.max_query_length."
    ]
    # what the warning says: queries 3-5 (3 tokens) fill the pair without a document token; 0-2 keep one
    batch = next(iter(dm.val_dataloader()))
    lengths = dict(zip(batch["query_index"].tolist(), batch["attention_mask"].sum(1).tolist(), strict=True))
    split = dm.eval_split("val")
    assert {split.query_ids[q]: n for q, n in lengths.items()} == {
        **dict.fromkeys("012", 8),
        **dict.fromkeys("345", 9),
    }


@pytest.mark.slow
def test_fit_with_a_max_length_the_template_fills_exits_2(tmp_path):
    result = cli("fit", "--config", DEMO, "--data.max_length=6", f"--trainer.default_root_dir={tmp_path}",
                 "--trainer.max_steps=1", timeout=180)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: data.max_length 6 leaves no token for the document" in result.stderr


def test_a_backbone_config_number_from_the_command_line_is_read_as_a_number_or_named(tmp_path, capsys):
    """``--model.backbone_args.config.d_model 16`` arrives as text: it means 16; text that is no number is one
    error naming the field, before any data is read."""
    from lightning_rank.backbones.mamba.config import Mamba1Config

    config = Mamba1Config(d_model="16", n_layer="2", norm_epsilon=1, conv_bias="false")
    assert (config.d_model, config.n_layer, config.conv_bias) == (16, 2, False)
    assert isinstance(config.norm_epsilon, float) and config.dt_rank == 1
    with pytest.raises(ConfigError, match=r"Mamba1Config.d_model must be int, got 1.5"):
        Mamba1Config(d_model=1.5)
    capsys.readouterr()
    status = main(["validate", "--config", DEMO, "--model.backbone_args.config.d_model", "sixteen",
                   "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and errors == [
        "error: Mamba1Config.d_model must be int, got 'sixteen'; "
        "set e.g. d_model: 768 in the backbone's config"
    ]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (["--model.backbone_args.hiden_size", "3"], "got unknown argument(s) ['hiden_size']"),
        (["--model.loss", "lightning_rank.losses.GroupCrossEntropy", "--model.loss.temperature", "0"],
         "temperature must be > 0, got 0.0"),
        (["--model.frozen", "[no_such_layer]"], "model.frozen: pattern 'no_such_layer' matches no parameter"),
        (["--model.backbone_args.use_kernels", "sometimes"], "use_kernels must be 'auto', 'always' or"),
    ],
    ids=["backbone-argument", "loss-argument", "frozen-pattern", "kernel-mode"],
)  # fmt: skip
def test_a_wrong_model_setting_is_one_error_not_a_traceback(tmp_path, capsys, override, needle):
    """Settings a trainer subcommand passes to the model, the backbone and the loss: a mistake in one is
    exit 2 with the message naming it (a plain ValueError/TypeError there reads as a bug: exit 1)."""
    capsys.readouterr()
    status = main(["fit", "--config", DEMO, *override, "--trainer.default_root_dir", str(tmp_path),
                   "--trainer.max_epochs", "1"])  # fmt: skip
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and needle in errors[0], stderr
    assert "Traceback" not in stderr and not list(tmp_path.rglob("*.ckpt"))
