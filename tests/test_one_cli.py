"""One ``lightning-rank`` command line: every subcommand in ``--help``, ``--version``, a suggestion for a
mistyped subcommand, one fit config read by ``bm25``/``rerank``/``export`` too, ``backbones NAME``."""

from __future__ import annotations

import json
import re
from importlib.metadata import version

import pytest
import yaml
from helpers import DEMO, TINY_BERT, plugin_installed, tsv_collection

from lightning_rank.cli import main
from lightning_rank.cli.function_config import FIT_KEYS
from lightning_rank.datamodules.files import read_trec_run

SUBCOMMANDS = [
    "fit", "validate", "test", "predict", "bm25", "dense", "rerank", "fuse", "compare", "export", "backbones",
    "report",
]  # fmt: skip


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_help_lists_every_subcommand_with_one_line(capsys) -> None:
    status, out, _ = run_main(capsys, "--help")
    assert status == 0
    for name in SUBCOMMANDS:
        assert re.search(rf"^  {name} +\S.+$", out, re.MULTILINE), (name, out)


def test_version_prints_the_installed_package_version(capsys) -> None:
    status, out, _ = run_main(capsys, "--version")
    assert status == 0 and out.strip() == f"lightning-rank {version('lightning-rank')}"


TYPOS = {"rerankk": "rerank", "fitt": "fit", "bm52": "bm25"}
for name in SUBCOMMANDS:  # a letter doubled and the last two swapped, for every subcommand
    TYPOS.setdefault(name + name[-1], name)
    TYPOS.setdefault(name[:-2] + name[-1] + name[-2], name)


@pytest.mark.parametrize(("typo", "meant"), TYPOS.items())
def test_a_mistyped_subcommand_is_answered_with_the_closest_of_all(capsys, typo, meant) -> None:
    status, _, err = run_main(capsys, typo)
    assert status == 2
    assert err.splitlines()[0] == f"error: unknown subcommand '{typo}'; did you mean '{meant}'?", err


@pytest.mark.parametrize("name", ["bm25", "dense", "rerank", "fuse", "compare", "export"])
def test_function_subcommand_help_says_which_data_key_feeds_which_option(capsys, name) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and "--config FILE takes a fit config" in out and "--stage" in out
    if name != "export":
        assert "data.local_collections -> --local_collections" in out


def test_no_subcommand_prints_the_list_and_exits_2(capsys) -> None:
    status, _, err = run_main(capsys)
    assert status == 2 and all(name in err for name in SUBCOMMANDS)


def test_a_subcommand_nothing_like_any_lists_them_all(capsys) -> None:
    status, _, err = run_main(capsys, "zzzzzz")
    assert status == 2 and "did you mean" not in err and all(name in err for name in SUBCOMMANDS), err


# -- one config for fit, export, bm25 and rerank ---------------------------------------------------------
def write_config(path, data: dict, **sections) -> str:
    path.write_text(yaml.safe_dump({**sections, "data": data}))
    return str(path)


@pytest.fixture
def collection(tmp_path, request) -> tuple[str, dict]:
    """A small TSV collection with a ``dev`` split under a name of its own (ids are process-wide)."""
    name = "onecli-" + re.sub(r"\W", "-", request.node.name)
    return name, tsv_collection(tmp_path / "collection")


def test_bm25_export_and_rerank_run_from_the_config_fit_ran_from(tmp_path, capsys, collection) -> None:
    name, files = collection
    bm25_run = tmp_path / "bm25.trec"
    data = {
        "local_collections": {name: files}, "train_dataset": f"{name}/dev", "val_dataset": f"{name}/dev",
        "test_dataset": f"{name}/dev", "test_run": str(bm25_run), "group_size": 2, "batch_size": 2,
        "rerank_depth": 3, "eval_batch_size": 16,
    }  # fmt: skip
    config = write_config(
        tmp_path / "fit.yaml", data, seed_everything=0,
        model={"backbone": "bert", "backbone_args": TINY_BERT},
        trainer={"max_steps": 2, "accelerator": "cpu", "default_root_dir": str(tmp_path / "run"),
                 "enable_progress_bar": False, "logger": False, "num_sanity_val_steps": 0,
                 "limit_val_batches": 0},
    )  # fmt: skip
    assert main(["fit", "--config", config]) == 0
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    export = tmp_path / "export"
    status, _, err = run_main(capsys, "export", "--config", config, "--ckpt_path", str(ckpt), "--output",
                              str(export))  # fmt: skip
    assert status == 0 and (export / "reranker.json").is_file(), err

    status, out, err = run_main(capsys, "bm25", "--config", config)  # dataset and output: data.test_*
    assert status == 0, err
    first_stage = read_trec_run(bm25_run)
    assert sorted(first_stage) == [str(q) for q in range(6)] and f"wrote {bm25_run}" in out

    reranked = tmp_path / "reranked.trec"
    status, _, err = run_main(capsys, "rerank", "--config", config, "--model", str(export),
                              "--output", str(reranked), "--device", "cpu")  # fmt: skip
    assert status == 0, err
    from_config = read_trec_run(reranked)
    depth = data["rerank_depth"]  # rerank's --depth is data.rerank_depth
    assert {q: len(docs) for q, docs in from_config.items()} == {
        q: min(depth, len(docs)) for q, docs in first_stage.items()
    }
    # the same as the plain options give
    plain = tmp_path / "plain.trec"
    status, _, err = run_main(capsys, "rerank", "--model", str(export), "--dataset", f"{name}/dev",
                              "--run", str(bm25_run), "--depth", str(depth), "--output", str(plain),
                              "--device", "cpu")  # fmt: skip
    assert status == 0 and read_trec_run(plain) == from_config, err
    # fuse: --first_stage is data.test_run, --qrels data.test_dataset (so the measures are printed)
    status, out, err = run_main(capsys, "fuse", "--config", config, "--run", str(reranked),
                                "--output", str(tmp_path / "fused.trec"))  # fmt: skip
    assert status == 0 and "first stage: nDCG@10=" in out, err


def test_command_line_options_win_over_the_config_and_data_keys_are_dotted_options(
    tmp_path, capsys, collection
) -> None:
    name, files = collection
    config = write_config(
        tmp_path / "fit.yaml",
        {"local_collections": {name: files}, "test_dataset": f"{name}/dev", "test_run": str(tmp_path / "a")},
        model={"backbone": "never-read"}, trainer={"max_steps": 1},
    )  # fmt: skip
    status, _, err = run_main(capsys, "bm25", "--config", config, "--output", str(tmp_path / "b"),
                              "--depth", "2")  # fmt: skip
    assert status == 0, err
    assert not (tmp_path / "a").exists() and max(map(len, read_trec_run(tmp_path / "b").values())) == 2
    status, _, err = run_main(capsys, "bm25", "--config", config, "--data.test_run", str(tmp_path / "c"))
    assert status == 0 and (tmp_path / "c").is_file(), err
    # --stage picks the stage of the data keys
    stage = {"local_collections": {name: files}, "train_dataset": f"{name}/dev"}
    train = write_config(tmp_path / "train.yaml", {**stage, "train_run": str(tmp_path / "train.trec")})
    status, _, err = run_main(capsys, "bm25", "--config", train, "--stage", "train")
    assert status == 0 and (tmp_path / "train.trec").is_file(), err


def test_a_config_with_several_test_sets_feeds_the_one_named_by_set(tmp_path, capsys, collection) -> None:
    name, files = collection
    sets = [{"dataset": f"{name}/dev", "name": "a", "run": str(tmp_path / "a.trec")},
            {"dataset": f"{name}/dev", "name": "b", "run": str(tmp_path / "b.trec")}]  # fmt: skip
    config = write_config(tmp_path / "fit.yaml", {"local_collections": {name: files}, "test_datasets": sets})
    status, _, err = run_main(capsys, "bm25", "--config", config)
    assert (
        status == 2 and "data.test_datasets in" in err and "lists 2 sets (a, b): choose one with --set" in err
    )
    status, _, err = run_main(capsys, "bm25", "--config", config, "--set", "b")
    assert status == 0 and (tmp_path / "b.trec").is_file() and not (tmp_path / "a.trec").exists(), err
    status, _, err = run_main(capsys, "bm25", "--config", config, "--set", "c")
    assert status == 2 and "--set c:" in err and "its sets are a, b" in err
    one = write_config(tmp_path / "one.yaml", {"local_collections": {name: files}, "test_datasets": sets[:1]})
    status, _, err = run_main(capsys, "bm25", "--config", one)
    assert status == 0 and (tmp_path / "a.trec").is_file(), err


def test_a_config_of_the_commands_own_options_still_works(tmp_path, capsys, collection) -> None:
    name, files = collection
    path = tmp_path / "bm25.yaml"
    output = tmp_path / "run.trec"
    path.write_text(yaml.safe_dump({"local_collections": {name: files}, "dataset": f"{name}/dev",
                                    "output": str(output), "depth": 3}))  # fmt: skip
    status, _, err = run_main(capsys, "bm25", "--config", str(path))
    assert status == 0 and max(map(len, read_trec_run(output).values())) == 3, err


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ({"data": {"local_colections": {}}}, [],
         r"{cfg}: unknown data key 'data.local_colections': did you mean 'data.local_collections'\?"),
        ({"data": {}, "outptu": "x"}, [], r"{cfg}: unknown key 'outptu'; did you mean 'output'\?"),
        ({"data": {"test_dataset": "x"}}, ["--data.group_size", "4"],
         r"--data.group_size: `lightning-rank bm25` does not use data.group_size"),
        ({"data": {"test_dataset": "x"}}, ["--stage", "dev"],
         "--stage must be one of train, val, test, predict"),
        ({"data": {"test_dataset": "no-such/dev", "test_run": "{out}"}}, [],
         r"--dataset: unknown ir_datasets id 'no-such/dev'.*\n\(--dataset is data.test_dataset in {cfg}\)"),
    ],
)  # fmt: skip
def test_config_mistakes_name_the_key_the_file_and_the_fix(tmp_path, capsys, content, extra, message) -> None:
    cfg, out = tmp_path / "cfg.yaml", tmp_path / "out.trec"
    cfg.write_text(yaml.safe_dump(json.loads(json.dumps(content).replace("{out}", str(out)))))
    status, _, err = run_main(capsys, "bm25", "--config", str(cfg), "--output", str(out), *extra)
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message.format(cfg=re.escape(str(cfg))), err), err
    assert not out.exists()


def test_a_config_value_of_the_wrong_type_names_where_it_is_written(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", {"rerank_depth": "deep"})
    with pytest.raises(SystemExit) as done:
        main(["rerank", "--config", cfg, "--model", "m", "--dataset", "d", "--run", "r", "--output", "o"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"depth is data.rerank_depth in {cfg}" in err, err


def test_every_top_level_key_of_a_fit_config_is_ignored_by_the_function_subcommands(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO, "--print_config"])
    keys = set(yaml.safe_load(capsys.readouterr().out)) - {"data"}
    assert keys <= FIT_KEYS, keys - FIT_KEYS


# -- backbones NAME --------------------------------------------------------------------------------------
def test_backbones_name_prints_its_arguments_pooling_template_and_packing(capsys) -> None:
    status, out, err = run_main(capsys, "backbones", "bert")
    assert status == 0, err
    assert "  pretrained: str | None, default None" in out
    assert "  attn_implementation: Literal['sdpa', 'flash_attention_2', 'eager'], default 'sdpa'" in out
    assert "Hub id or local folder of a checkpoint" in out  # the docstring's words for it
    assert "pooling: first" in out and "default template: 'pair'" in out
    assert "packing (data.packing): yes" in out


@pytest.mark.skipif(not plugin_installed(), reason="the example plugin (examples/backbone-plugin) is absent")
def test_backbones_name_of_a_plugin_that_cannot_pack_says_why(capsys) -> None:
    status, out, err = run_main(capsys, "backbones", "gru")
    assert status == 0 and "  hidden_size: int, default 64" in out, err
    assert "packing (data.packing): no: GRUBackbone does not implement forward_packed" in out


def test_backbones_of_an_unknown_name_suggests_the_closest(capsys) -> None:
    status, _, err = run_main(capsys, "backbones", "berrt")
    assert status == 2 and err.startswith("error: unknown backbone 'berrt'. Did you mean 'bert'?"), err
