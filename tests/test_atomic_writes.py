"""Run files, exports and metric files are replaced atomically: a write that fails half-way leaves the file
or folder that was there before byte for byte, and no temporary files behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, cli
from helpers import TINIEST as TINY

from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.reranker import export as export_mod
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.runs import atomic_write_lines, write_trec_run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_run_write_leaves_the_old_run(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run({"q1": {"d1": 2.0, "d2": 1.0}}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NaN"):  # fails after the first lines were formatted
        write_trec_run({"q1": {"d1": 3.0}, "q2": {"d3": float("nan")}}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["run.trec"]

    def lines():
        yield "q1 Q0 d9 1 9.0 x\n"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_lines(path, lines())
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["run.trec"]
    assert read_trec_run(path) == {"q1": {"d1": 2.0, "d2": 1.0}}


def test_a_failed_export_leaves_the_old_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = RerankerModule(backbone="bert", backbone_args={"tokenizer": "builtin:words", "config": TINY})
    folder = tmp_path / "export"
    module.save_pretrained(folder)
    before = snapshot(folder)

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "save_file", broken_save_file)
    with torch.no_grad():
        module.head.weight.add_(1.0)  # a different model, whose export then fails
    with pytest.raises(OSError, match="disk full"):
        module.save_pretrained(folder, overwrite=True)
    assert snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging folder left


@pytest.mark.slow
def test_metrics_file_is_written_and_a_failed_validate_keeps_the_old_one(tmp_path: Path) -> None:
    demo = str(REPO / "configs" / "demo.yaml")
    metrics_file = tmp_path / "metrics.json"
    common = ("--config", demo, "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path), "--metrics_file", str(metrics_file))  # fmt: skip
    run = cli("validate", *common)
    assert run.returncode == 0, run.stderr[-2000:]
    written = json.loads(metrics_file.read_text())
    assert set(written) == {"val/nDCG@10", "val/RR@10", "val/R@100"} and 0 < written["val/nDCG@10"] < 1
    before = metrics_file.read_bytes()
    failed = cli("validate", *common, "--data.val_dataset", "lightning-rank/demo/nope")
    assert failed.returncode != 0
    assert metrics_file.read_bytes() == before
