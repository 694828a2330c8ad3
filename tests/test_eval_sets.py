"""Several validation and test sets (data.val_datasets, data.test_datasets); best.ckpt by a val metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import DEMO, tsv_collection

from lightning_rank.cli import main
from lightning_rank.cli.checkpointing import monitored_metric
from lightning_rank.datamodules.eval_sets import EvalSet, eval_sets
from lightning_rank.errors import ConfigError
from lightning_rank.metrics import RankingMetrics

DEV = "lightning-rank/demo/dev"
QUICK = [
    "--config", DEMO, "--validate_before_fit", "false", "--validate_after_fit", "false",
    "--trainer.enable_progress_bar", "false", "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
]  # fmt: skip


# -- configuration ---------------------------------------------------------------------------------------
def test_sets_from_the_singular_or_the_plural_options():
    assert eval_sets("val", DEV, "r.trec", None) == [EvalSet(DEV, DEV, "r.trec")]
    assert eval_sets("val", None, None, None) == []
    plural = eval_sets("test", None, None, [DEV, {"dataset": DEV, "run": "b.trec", "name": "dense"}])
    assert plural == [EvalSet(DEV, DEV), EvalSet("dense", DEV, "b.trec")]


@pytest.mark.parametrize(
    ("singular", "plural", "says"),
    [
        ((DEV, None), [DEV], "data.val_dataset and data.val_datasets are both set"),
        ((None, "r.trec"), [DEV], "data.val_run and data.val_datasets are both set"),
        ((None, None), [DEV, {"dataset": DEV}], f"names {DEV} more than once"),
        ((None, None), [{"dataset": DEV, "runs": "r"}], "unknown key(s) runs"),
        ((None, None), [{"run": "r.trec"}], "data.val_datasets[0] has no dataset"),
        ((None, None), [], "non-empty list"),
    ],
)
def test_ambiguous_or_malformed_sets_are_refused(singular, plural, says):
    with pytest.raises(ConfigError, match=None) as err:
        eval_sets("val", *singular, plural)
    assert says in str(err.value)


def test_the_monitored_metric_is_one_the_fit_logs(capsys):
    measures = ["nDCG@10", "RR@10"]
    assert monitored_metric(None, measures, ["a", "b"], by_name=True) == "val/nDCG@10"
    assert monitored_metric("val/b/RR@10", measures, ["a", "b"], by_name=True) == "val/b/RR@10"
    with pytest.raises(ConfigError, match="val/c/RR@10 is not a metric this fit logs"):
        monitored_metric("val/c/RR@10", measures, ["a", "b"], by_name=True)
    with pytest.raises(ConfigError, match="val/a/RR@10 is not a metric"):  # a single val_dataset: plain names
        monitored_metric("val/a/RR@10", measures, ["a"], by_name=False)
    with pytest.raises(ConfigError, match="no validation set"):
        monitored_metric("val/nDCG@10", measures, [], by_name=False)
    assert monitored_metric(None, measures, [], by_name=False) is None
    assert "only last.ckpt is kept" in capsys.readouterr().err


# -- fit, test and export ----------------------------------------------------------------------------------
def _rows(root: Path) -> list[dict[str, str]]:
    (metrics,) = root.rglob("metrics.csv")
    return list(csv.DictReader(metrics.open()))


@pytest.mark.slow
def test_two_val_sets_logged_and_best_ckpt_kept_by_the_monitored_one(tmp_path, monkeypatch, capsys):
    """The second set's nDCG@10 peaks at the second of three epochs (its value is scripted; the first set's
    is the model's own): best.ckpt holds that epoch, last.ckpt the third; test and export take it."""
    small = tsv_collection(tmp_path / "small")
    scripted = {1: 0.2, 2: 0.9, 3: 0.4}  # the n-th validation of the small set
    calls = {"n": 0}
    real = RankingMetrics.evaluate

    def evaluate(self):
        evaluation = real(self)
        if set(self.qrels) == {str(q) for q in range(6)}:  # the small collection's queries
            calls["n"] += 1
            if calls["n"] in scripted:
                evaluation.values["nDCG@10"] = scripted[calls["n"]]
        return evaluation

    monkeypatch.setattr(RankingMetrics, "evaluate", evaluate)
    root = tmp_path / "fit"
    sets = json.dumps([DEV, {"dataset": "small/dev", "run": small["runs"]["dev"], "name": "small"}])
    collections = json.dumps({"small": small})
    data = ["--data.val_dataset", "null", "--data.local_collections", collections]
    code = main([
        "fit", *QUICK, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(root),
        *data, "--data.val_datasets", sets, "--checkpoint_monitor", "val/small/nDCG@10",
    ])  # fmt: skip
    assert code == 0
    assert calls["n"] == 3
    validations = [r for r in _rows(root) if r.get("val/nDCG@10")]
    assert len(validations) == 3
    for row in validations:  # both sets' metrics at every validation; the first set's also plainly named
        for measure in ("nDCG@10", "RR@10", "R@100"):
            assert row[f"val/{DEV}/{measure}"] == row[f"val/{measure}"]
            assert row[f"val/small/{measure}"]
    assert [float(r["val/small/nDCG@10"]) for r in validations] == pytest.approx([0.2, 0.9, 0.4])
    assert [float(r["val/nDCG@10"]) for r in validations] != pytest.approx([0.2, 0.9, 0.4])

    folder = root / "checkpoints"
    best = torch.load(folder / "best.ckpt", weights_only=True)
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (best["epoch"], last["epoch"]) == (1, 2)
    assert best["global_step"] < last["global_step"]
    (state,) = [s for k, s in best["callbacks"].items() if "val/small/nDCG@10" in k]
    assert state["best_model_score"] == pytest.approx(0.9)
    assert any(not torch.equal(v, last["state_dict"][k]) for k, v in best["state_dict"].items())

    # test --ckpt_path best: best.ckpt's weights, on two test sets, every metric in --metrics_file
    read = []
    from lightning_rank.cli import trainer as trainer_cli

    real_read = trainer_cli.read_checkpoint
    monkeypatch.setattr(
        trainer_cli, "read_checkpoint", lambda path, **kw: read.append(path) or real_read(path, **kw)
    )
    tests = ["--data.test_datasets", sets, "--trainer.default_root_dir", str(root)]
    for name, ckpt in (("by_name", "best"), ("by_file", str(folder / "best.ckpt"))):
        assert (
            main(["test", *QUICK, *data, *tests, "--ckpt_path", ckpt, "--metrics_file", str(tmp_path / name)])
            == 0
        )
    assert read == [str(folder / "best.ckpt")] * 2
    by_name = json.loads((tmp_path / "by_name").read_text())
    assert by_name == json.loads((tmp_path / "by_file").read_text())
    assert {f"test/{s}/{m}" for s in (DEV, "small") for m in ("nDCG@10", "RR@10", "R@100")} <= set(by_name)
    table = capsys.readouterr().out
    assert "test set" in table and "small" in table

    assert (
        main(["export", "--ckpt_path", "best", "--root_dir", str(root), "--output", str(tmp_path / "x")]) == 0
    )
    assert f"exported {folder / 'best.ckpt'}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_fit_without_validation_keeps_last_only_and_best_is_refused(tmp_path, capsys):
    root = tmp_path / "fit"
    fit = ["fit", *QUICK, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root)]
    assert main([*fit, "--data.val_dataset", "null"]) == 0
    assert "no validation set" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert main(["test", *QUICK, "--data.test_dataset", DEV, "--trainer.default_root_dir", str(root),
                 "--ckpt_path", "best"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--ckpt_path best: no best.ckpt in" in err and "no best model to test" in err
    assert (
        main(["export", "--ckpt_path", "best", "--root_dir", str(root), "--output", str(tmp_path / "x")]) == 2
    )
    assert "no best model to export" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main([*fit, "--ckpt_path", "best"]) == 2
    assert "use --ckpt_path last" in capsys.readouterr().err
