"""A reranker fine-tuned by ``benchmarks/beir.py``, exported for sentence-transformers, reranks the test run
through ``CrossEncoder`` to the nDCG@10 ``lightning-rank predict`` gave.

    python benchmarks/beir.py --data ../shared/data/scifact --out runs/beir/scifact
    python benchmarks/cross_encoder_export.py --data ../shared/data/scifact --out runs/beir/scifact

1. exports beir.py's newest checkpoint (``--out``/fit) with ``lightning-rank export --format
   sentence-transformers`` to ``--out``/cross-encoder;
2. reads the test run's top ``--depth`` (BM25's, ``bm25-<split>.trec``) and the query and document texts as
   lightning-rank reads them (the same strings predict scored), and scores the pairs with
   ``sentence_transformers.CrossEncoder(folder).predict``;
3. prints a table of nDCG@10, RR@10 and R@100 for predict's run (``reranker-<split>.trec``) and
   CrossEncoder's, the largest score difference between them, and a last line
   ``nDCG@10 predict=<x> cross_encoder=<y> diff=<d>``. Exits 1 when the nDCG@10s differ by more than
   ``--tolerance``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from ir_datasets.formats import GenericScoredDoc
from rich.console import Console
from rich.table import Table

from lightning_rank.datamodules.collections import load_dataset, register_local
from lightning_rank.datamodules.documents import run_texts
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.datamodules.first_stage_runs import ranked_scores
from lightning_rank.metrics import DEFAULT_MEASURES, evaluate_run
from lightning_rank.runs import write_trec_run

MEASURES = list(DEFAULT_MEASURES)


def refuse(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def export(ckpt: Path, folder: Path) -> None:
    """``lightning-rank export --format sentence-transformers``; an earlier export there is replaced."""
    command = [sys.executable, "-m", "lightning_rank.cli", "export", "--ckpt_path", str(ckpt)]
    command += ["--output", str(folder), "--format", "sentence-transformers", "--overwrite", "true"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"`lightning-rank export` failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, type=Path, help="the BEIR-format folder beir.py ran on")
    parser.add_argument("--out", required=True, type=Path, help="beir.py's --out folder")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--depth", type=int, default=100, help="candidates per query (beir.py's --depth)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=0.001, help="largest nDCG@10 difference allowed")
    args = parser.parse_args()

    folder, out = args.data.expanduser().resolve(), args.out.expanduser().resolve()
    bm25, predicted = out / f"bm25-{args.test_split}.trec", out / f"reranker-{args.test_split}.trec"
    checkpoints = sorted((out / "fit").rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    for path, what in ((bm25, "BM25 run"), (predicted, "predict run")):
        if not path.is_file():
            refuse(f"{path}: no {what}; run benchmarks/beir.py with --out {out} first")
    if not checkpoints:
        refuse(f"{out / 'fit'}: no checkpoint; run benchmarks/beir.py with --out {out} first")

    exported = out / "cross-encoder"
    export(checkpoints[-1], exported)

    name = "local/cross-encoder-export"
    register_local(name, folder)
    listed = read_trec_run(bm25)
    pairs, candidates = ranked_scores(
        (GenericScoredDoc(q, d, s) for q, docs in listed.items() for d, s in docs.items()), args.depth
    )
    queries, texts = run_texts(f"{name}/{args.test_split}", candidates, str(bm25))

    from sentence_transformers import CrossEncoder

    start = time.perf_counter()
    model = CrossEncoder(str(exported), device="cpu")
    scores = model.predict(
        [(queries[q], texts[d]) for q, d in pairs], batch_size=args.batch_size, show_progress_bar=False
    )
    seconds = time.perf_counter() - start
    run: dict[str, dict[str, float]] = {}
    for (qid, doc), score in zip(pairs, scores.tolist(), strict=True):
        run.setdefault(qid, {})[doc] = float(score)
    write_trec_run(run, out / f"cross-encoder-{args.test_split}.trec", tag="cross-encoder")

    ours = read_trec_run(predicted)
    missing = [(q, d) for q, d in pairs if d not in ours.get(q, {})]
    if missing:
        refuse(f"{predicted} lacks {len(missing)} of the {len(pairs)} pairs (e.g. {missing[0]})")
    gap = max(abs(run[q][d] - ours[q][d]) for q, d in pairs)
    qrels: dict[str, dict[str, int]] = {}
    for qrel in load_dataset(f"{name}/{args.test_split}").qrels_iter():
        qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = qrel.relevance
    results = {"lightning-rank predict": evaluate_run(ours, qrels, MEASURES)}
    results["CrossEncoder (export)"] = evaluate_run(run, qrels, MEASURES)

    table = Table(title=f"{folder.name} ({args.test_split}): predict vs the sentence-transformers export")
    for column in ["system", *MEASURES]:
        table.add_column(column, justify="right")
    for system, values in results.items():
        table.add_row(system, *(f"{values[m]:.4f}" for m in MEASURES))
    console = Console()
    console.print(table)
    console.print(
        f"{len(pairs):,} pairs of {len(run)} queries; CrossEncoder.predict took {seconds / 60:.1f} min; "
        f"largest score difference {gap:.2e}"
    )
    a, b = results["lightning-rank predict"]["nDCG@10"], results["CrossEncoder (export)"]["nDCG@10"]
    print(f"nDCG@10 predict={a:.4f} cross_encoder={b:.4f} diff={abs(a - b):.4f}")
    if abs(a - b) > args.tolerance:
        sys.exit(1)


if __name__ == "__main__":
    main()
