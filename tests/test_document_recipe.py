"""The seeds' recipes in configs/: RankMamba's document task (configs/document/, FirstP, TREC DL 19/20) and
the passage configs' test sets, printed offline, and the document recipe run end to end through the CLI on a
local collection shaped like MS MARCO Document, its per-query values compared."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from helpers import REPO, msmarco_document_like
from scipy import stats

from lightning_rank.cli import main

DOCUMENT_CONFIGS = sorted((REPO / "configs" / "document").glob("*.yaml"))
PASSAGE_CONFIGS = ["mamba1_130m", "mamba2_130m", "bert_base", "roberta_base", "pythia_160m", "llama_1b"]
TINY_MAMBA = {"pretrained": None, "tokenizer": "builtin:words", "config": {"d_model": 32, "n_layer": 2}}


def test_the_document_recipe_covers_the_papers_sizes():
    names = {path.stem for path in DOCUMENT_CONFIGS}
    assert {"mamba1_130m", "mamba1_370m", "mamba1_790m", "mamba1_1.4b"} <= names
    assert {"pythia_160m", "pythia_410m", "pythia_1b", "bert_base", "roberta_base"} <= names


@pytest.mark.parametrize("config", DOCUMENT_CONFIGS, ids=lambda p: p.stem)
def test_a_document_config_prints_offline(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    data = printed["data"]
    assert data["train_dataset"] == "msmarco-document/train" and data["passages"]["mode"] == "firstp"
    assert [s["name"] for s in data["test_datasets"]] == ["dl19", "dl20", "dev"]
    assert printed["model"]["measures"] == ["nDCG@10", "RR@100"]


def test_the_document_configs_differ_in_the_backbone_only():
    """Every size reads the same data with the same optimisation: a comparison across backbones is fair."""

    def recipe(path):
        config = yaml.safe_load(path.read_text())
        del (
            config["model"]["backbone"],
            config["model"]["backbone_args"],
            config["trainer"]["default_root_dir"],
        )
        return config

    first, *others = DOCUMENT_CONFIGS
    for other in others:
        assert recipe(other) == recipe(first), other.name


@pytest.mark.parametrize("name", PASSAGE_CONFIGS)
def test_passage_configs_test_on_dev_small_and_trec_dl(name):
    data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["data"]
    assert [s["dataset"] for s in data["val_datasets"]] == ["msmarco-passage/dev/small"]
    assert [s["dataset"] for s in data["test_datasets"]] == [
        "msmarco-passage/dev/small",
        "msmarco-passage/trec-dl-2019/judged",
        "msmarco-passage/trec-dl-2020/judged",
    ]


def _per_query(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.slow
def test_the_document_recipe_runs_offline_on_a_long_document_collection(tmp_path, capsys):
    """fit (FirstP, best.ckpt by dev nDCG@10), test --ckpt_path best on two DL-like graded sets and dev with
    per-query values, and compare of the best against the last checkpoint from those files."""
    folder = msmarco_document_like(tmp_path / "msdoc")
    config = str(REPO / "configs" / "document" / "mamba1_130m.yaml")
    sets = json.dumps([{"dataset": f"msdoc/{s}", "name": s} for s in ("dl19", "dl20", "dev")])
    common = [
        "--config", config, "--model.backbone_args", json.dumps(TINY_MAMBA),
        "--data.local_collections", json.dumps({"msdoc": str(folder)}), "--data.train_dataset", "msdoc/train",
        "--data.val_datasets", json.dumps([{"dataset": "msdoc/dev", "name": "dev"}]),
        "--data.test_datasets", sets, "--data.max_length", "64", "--data.max_query_length", "8",
        "--data.group_size", "4", "--data.batch_size", "2", "--data.eval_batch_size", "16",
        "--data.num_workers", "0", "--trainer.precision", "32", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    fit = ["fit", *common, "--trainer.max_steps", "6", "--trainer.val_check_interval", "3"]
    assert main([*fit, "--trainer.limit_val_batches", "null", "--trainer.log_every_n_steps", "1"]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "best.ckpt").is_file() and (checkpoints / "last.ckpt").is_file()
    capsys.readouterr()

    files = {}
    for ckpt in ("best", "last"):
        files[ckpt] = tmp_path / f"{ckpt}.tsv"
        argv = ["test", *common, "--ckpt_path", ckpt, "--per_query_file", str(files[ckpt])]
        assert main([*argv, "--metrics_file", str(tmp_path / f"{ckpt}.json")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "best.json").read_text())
    assert {f"test/{s}/{m}" for s in ("dl19", "dl20", "dev") for m in ("nDCG@10", "RR@100")} <= set(metrics)
    assert "test set" in out and "dl20" in out and "3 (1 unranked, scored 0)" in out  # one table, counted
    assert "DataLoader 1" not in out  # not Lightning's, which lists every set's metrics under each set

    rows = _per_query(files["best"])
    dl19 = {
        r["query"]: float(r["value"]) for r in rows if r["system"] == "dl19" and r["measure"] == "nDCG@10"
    }
    assert dl19["12"] == 0.0  # the judged query without candidates counts, scoring 0 (trec_eval -c)
    assert sum(dl19.values()) / len(dl19) == pytest.approx(metrics["test/dl19/nDCG@10"])

    assert main(["compare", "--per_query", json.dumps([str(files["last"]), str(files["best"])]),
                 "--eval_set", "dl19", "--measures", '["nDCG@10"]', "--samples", "2000"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    last = {r["query"]: float(r["value"]) for r in _per_query(files["last"]) if r["system"] == "dl19"
            and r["measure"] == "nDCG@10"}  # fmt: skip
    queries = sorted(dl19)
    expected = stats.ttest_rel([dl19[q] for q in queries], [last[q] for q in queries]).pvalue
    if all(dl19[q] == last[q] for q in queries):
        expected = 1.0
    assert f"{expected:.4g}" in table
    assert f"best.tsv: {len(queries)} queries, as the file has them" in table


def test_per_query_file_never_replaces_another_file(tmp_path, capsys):
    precious = tmp_path / "notes.txt"
    precious.write_text("my notes\n")
    config = str(REPO / "configs" / "demo.yaml")
    assert main(["test", "--config", config, "--data.test_dataset", "lightning-rank/demo/dev",
                 "--per_query_file", str(precious)]) == 2  # fmt: skip
    assert "is not a per-query results file" in capsys.readouterr().err
    assert precious.read_text() == "my notes\n"
