"""The embedded default, exactly as the README runs it: offline, CPU, chance -> near-perfect nDCG@10."""

from __future__ import annotations

import csv
import time

import pytest
from helpers import REPO, cli


@pytest.mark.slow
def test_demo_trains_from_chance_to_near_perfect(tmp_path):
    start = time.perf_counter()
    result = cli(
        "fit",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        env={"IR_DATASETS_HOME": str(tmp_path / "irds")},  # the collection is generated from scratch
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = tmp_path.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics_file.open()) if r.get("val/nDCG@10")]
    before, after = float(rows[0]["val/nDCG@10"]), float(rows[-1]["val/nDCG@10"])
    assert before < 0.5, f"pre-training nDCG@10 {before} should be near chance"
    assert after >= 0.9, f"post-training nDCG@10 {after}"
    assert any(r.get("train/tokens_per_sec") for r in csv.DictReader(metrics_file.open()))
    assert "nDCG@10" in result.stdout and "tok/s" in result.stdout
    assert elapsed < 300
