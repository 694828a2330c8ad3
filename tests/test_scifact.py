"""Real data from ../shared/data/scifact (skipped where absent): registration, BM25 run, a few CLI steps."""

from __future__ import annotations

import json

import ir_measures
import numpy as np
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


@pytest.mark.slow
def test_compare_on_two_scifact_runs_reproduces_scipys_bootstrap_and_t_test(tmp_path, capsys):
    """Two BM25 runs of SciFact's test split (Anserini's and Robertson's parameters): compare's paired
    bootstrap interval equals scipy.stats.bootstrap's within Monte-Carlo noise, its p-value ttest_rel's."""
    from scipy import stats

    from lightning_rank.commands.compare import compare

    runs = []
    for name, k1, b in (("anserini", "0.9", "0.4"), ("robertson", "1.2", "0.75")):
        runs.append(str(tmp_path / f"{name}.trec"))
        assert main(["bm25", "--local_collections", COLLECTIONS, "--dataset", "scifact-local/test",
                     "--k1", k1, "--b", b, "--output", runs[-1]]) == 0  # fmt: skip
    per_query = tmp_path / "per_query.tsv"
    qrels = str(SCIFACT / "qrels" / "test.tsv")
    (row,) = compare(runs, qrels, ["nDCG@10"], samples=10000, seed=0, output=str(per_query))
    values: dict[str, dict[str, float]] = {}
    for line in per_query.read_text().splitlines()[1:]:
        system, query, _, value = line.split("\t")
        values.setdefault(system, {})[query] = float(value)
    queries = sorted(values["anserini.trec"])
    base = [values["anserini.trec"][q] for q in queries]
    other = [values["robertson.trec"][q] for q in queries]
    assert len(queries) == 300 and row.queries == 300
    assert row.p == pytest.approx(stats.ttest_rel(other, base).pvalue, rel=1e-9)
    diff = [a - b for a, b in zip(other, base, strict=True)]
    scipy_ends = []
    for seed in range(5):
        found = stats.bootstrap((diff,), np.mean, n_resamples=10000, method="percentile", random_state=seed)
        scipy_ends.append((found.confidence_interval.low, found.confidence_interval.high))
    spread = np.ptp(scipy_ends, axis=0).max()  # how far scipy's own ends move with the seed
    assert row.low == pytest.approx(np.mean([e[0] for e in scipy_ends]), abs=max(3 * spread, 1e-3))
    assert row.high == pytest.approx(np.mean([e[1] for e in scipy_ends]), abs=max(3 * spread, 1e-3))
    assert row.low < row.mean < row.high
