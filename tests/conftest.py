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


@pytest.fixture
def run_cli():
    return cli
