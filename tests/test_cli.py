"""The command line as users run it: configs, dotted overrides, --print_config, plugins, predict/test."""

from __future__ import annotations

from pathlib import Path

import ir_measures
import pytest
import torch
from helpers import DEMO, GRU, plugin_installed

from lightning_rank.cli import main
from lightning_rank.datamodules.files import read_trec_run


def quick(tmp_path: Path, *extra: str) -> list[str]:
    """Demo config, a few steps, no progress bar, everything written under tmp_path."""
    return [
        "--config",
        DEMO,
        "--trainer.max_steps",
        "3",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--validate_before_fit",
        "false",
        "--validate_after_fit",
        "false",
        *extra,
    ]


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = root.rglob("last.ckpt")  # beside the step-named copy of the same state
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_print_config_round_trip_trains_identically(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", *quick(tmp_path / "a"), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    for key in (
        "backbone: mamba1",
        "train_dataset: lightning-rank/demo/train",
        "max_steps: 3",
        "group_size: 8",
    ):
        assert key in printed
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)

    main(["fit", *quick(tmp_path / "a")])
    main(["fit", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "b")])
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["head.weight"], torch.zeros_like(a["head.weight"]))


def test_dotted_overrides_reach_trainer_model_and_data(tmp_path):
    main(
        [
            "fit",
            *quick(tmp_path, "--trainer.max_steps", "2", "--data.group_size", "4", "--model.lr", "0.01"),
            "--data.excerpt",
            "query_biased",
        ]
    )
    ckpt = next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["lr"] == 0.01
    assert state["datamodule_hyper_parameters"]["group_size"] == 4
    assert state["datamodule_hyper_parameters"]["excerpt"] == "query_biased"


@pytest.mark.skipif(not plugin_installed(), reason="pip install -e examples/backbone-plugin")
def test_third_party_plugin_trains_through_the_cli(tmp_path):
    main(["fit", *quick(tmp_path, *GRU)])
    weights = final_weights(tmp_path)
    assert any(k.startswith("backbone.layers.0.gru") for k in weights)


def test_test_and_predict_write_metrics_and_a_run_file(tmp_path):
    main(["fit", *quick(tmp_path / "fit")])
    ckpt = str(next((tmp_path / "fit").rglob("*.ckpt")))
    common = ["--config", DEMO, "--ckpt_path", ckpt, "--trainer.enable_progress_bar", "false"]
    run_file = tmp_path / "dev.trec"
    main(
        [
            "predict",
            *common,
            "--data.predict_dataset",
            "lightning-rank/demo/dev",
            "--run_writer.output",
            str(run_file),
        ]
    )
    run = read_trec_run(run_file)
    assert len(run) == 100 and all(len(docs) >= 10 for docs in run.values())
    entries = list(ir_measures.read_trec_run(str(run_file)))  # the format other tools read
    assert len(entries) == sum(len(docs) for docs in run.values())
    main(
        [
            "test",
            *common,
            "--data.test_dataset",
            "lightning-rank/demo/dev",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "test/nDCG@10" in metrics
