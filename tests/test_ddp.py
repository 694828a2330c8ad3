"""DDP on 2 CPU processes (gloo): every query is gathered before metrics are computed, so validation
metrics equal the single-process values on the same checkpoint and run."""

from __future__ import annotations

import pytest
from helpers import DEMO, cli, last_val_metrics


@pytest.mark.slow
def test_ddp_validation_equals_single_process(tmp_path):
    fit = cli(
        "fit", "--config", DEMO, "--trainer.max_steps", "150",
        "--trainer.default_root_dir", str(tmp_path / "fit"), "--trainer.limit_val_batches", "0",
        "--validate_before_fit", "false", "--validate_after_fit", "false",
        "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    ckpt = str(next((tmp_path / "fit").rglob("*.ckpt")))
    results = {}
    for devices in (1, 2):
        root = tmp_path / f"validate{devices}"
        run = cli(
            "validate", "--config", DEMO, "--ckpt_path", ckpt, "--trainer.devices", str(devices),
            "--trainer.strategy", "ddp" if devices > 1 else "auto", "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--data.eval_batch_size", "50",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        results[devices] = last_val_metrics(root)
    assert set(results[1]) == {"val/nDCG@10", "val/RR@10", "val/R@100"}
    assert 0.0 < results[1]["val/nDCG@10"] < 1.0
    for name, value in results[1].items():
        assert abs(results[2][name] - value) <= 1e-6, (name, results)
