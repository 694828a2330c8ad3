"""Offline, isolated test environment: no hub access, a private ir_datasets home per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("IR_DATASETS_HOME", tempfile.mkdtemp(prefix="lightning-rank-irds-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None):
    """Run ``lightning-rank ARGS`` in a subprocess, as a user would."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "lightning_rank.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )


def tiny_bi_encoder(folder: Path) -> Path:
    """A randomly initialised one-layer BERT and a word tokenizer, saved as sentence-transformers loads it."""
    import torch
    from transformers import BertConfig, BertModel

    from lightning_rank.backbones.base import load_tokenizer

    tokenizer = load_tokenizer("builtin:words")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def last_val_metrics(root: Path) -> dict[str, float]:
    """The last validation metrics (``val/<measure>@k``) a run under ``root`` logged to its metrics.csv."""
    import csv

    (metrics,) = root.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/nDCG@10")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v and "@" in k}


@pytest.fixture
def run_cli():
    return cli


# data settings of the `trained` fit: unlike the demo config's, so a scorer that ignores them is caught
TRAINED_SETTINGS = [
    "--data.max_length",
    "40",
    "--data.max_query_length",
    "12",
    "--data.excerpt",
    "query_biased",
]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A 3-step demo fit on 40-token query-biased excerpts: its checkpoint, its export (``lightning-rank
    export``) and what export printed. Shared by the input-format and rerank tests."""
    import contextlib
    import io

    from lightning_rank.cli import main

    root = tmp_path_factory.mktemp("fit")
    main([
        "fit", "--config", str(REPO / "configs" / "demo.yaml"), "--trainer.max_steps", "3",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--validate_before_fit", "false", "--validate_after_fit", "false", *TRAINED_SETTINGS,
    ])  # fmt: skip
    (ckpt,) = root.rglob("last.ckpt")
    export = root / "export"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["export", "--ckpt_path", str(ckpt), "--output", str(export)])
    return ckpt, export, printed.getvalue()
