"""Real data from ../shared/data/scifact (skipped where absent): registration, BM25 run, a few CLI steps."""

from __future__ import annotations

import json

import ir_measures
import pytest
import torch
from helpers import REPO, SHARED_DATA, cli

from lightning_rank.cli import main

SCIFACT = SHARED_DATA / "scifact"
pytestmark = pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl").exists(), reason="../shared/data/scifact absent"
)
COLLECTIONS = json.dumps({"scifact-local": str(SCIFACT)})


@pytest.mark.slow
def test_scifact_bm25_run_is_valid_trec_and_trains_through_the_cli(tmp_path):
    run_file = tmp_path / "bm25-train.trec"
    result = cli(
        "bm25", "--local_collections", COLLECTIONS, "--dataset", "scifact-local/train",
        "--depth", "20", "--output", str(run_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nDCG@10=" in result.stdout
    entries = list(ir_measures.read_trec_run(str(run_file)))
    queries = {e.query_id for e in entries}
    assert len(queries) == 809 and len(entries) <= 809 * 20
    assert all(isinstance(e.score, float) for e in entries)

    tiny = {
        "tokenizer": "builtin:words",
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    }
    main(
        [
            "fit", "--config", str(REPO / "configs" / "beir_minilm.yaml"),
            "--model.backbone_args", json.dumps(tiny),
            "--data.local_collections", COLLECTIONS,
            "--data.train_dataset", "scifact-local/train", "--data.train_run", str(run_file),
            "--data.teacher_run", str(run_file), "--data.teacher_missing", "lowest",
            "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
