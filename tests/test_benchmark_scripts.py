"""The GPU benchmark scripts run on a CPU too (tiny models), so CI keeps them working between GPU sessions."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_throughput_harness_compares_both_loops_on_tiny_models(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    done = run(
        "benchmarks/throughput.py", "--size", "tiny", "--backbones", "mamba2", "bert", "--steps", "2",
        "--warmup", "1", "--rerank-warmup", "1", "--batch", "16", "--length", "128",
        "--realistic-batch", "32", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    cells = {(r["backbone"], r["shape"], r["task"], r["loop"]) for r in results}
    assert len(cells) == len(results) == 2 * 3 * 2 * 2  # backbones x shapes x tasks x loops
    for r in results:
        assert r["tokens_per_sec"] > 0 and r["padded_tokens_per_sec"] >= r["tokens_per_sec"]
        if r["shape"] == "dense":
            assert r["padded_tokens_per_sec"] == r["tokens_per_sec"]
    rate = {(r["backbone"], r["shape"], r["task"], r["loop"]): r for r in results}
    for backbone, task in itertools.product(("mamba2", "bert"), ("train", "rerank")):
        # the same pairs, bucketed or packed: packing pads less
        packed, bucketed = rate[backbone, "packed", task, "plain"], rate[backbone, "realistic", task, "plain"]
        pad_packed = packed["padded_tokens_per_sec"] / packed["tokens_per_sec"]
        assert pad_packed < bucketed["padded_tokens_per_sec"] / bucketed["tokens_per_sec"]
    assert "| mamba2 | realistic | train |" in done.stdout  # the Markdown table for RESULTS.md
    assert "| bert | packed | train |" in done.stdout


@pytest.mark.slow
def test_mamba_speed_study_runs_its_variants(tmp_path: Path) -> None:
    done = run(
        "benchmarks/mamba_speed.py", "--tiny", "--batch", "8", "--length", "32", "--steps", "1",
        "--warmup", "1", "--repeats", "1", "--variants", "m1", "m2", "m2-torchnorm",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| m")]
    assert [row.split(" | ")[0] for row in rows] == ["| m1", "| m2", "| m2-torchnorm"]
