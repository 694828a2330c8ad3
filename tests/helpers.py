"""Shared test helpers, the one module test files import from (never from each other, nor from conftest.py,
which only sets the offline environment and holds fixtures): paths, the CLI in a subprocess, tiny model
configs and texts, a stub backbone, a small collection writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lightning_rank.text.builtin_tokenizer import VOCABULARY
from lightning_rank.text.templates import CAUSAL_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = str(REPO / "configs" / "demo.yaml")

# data settings of the `trained` fit (conftest.py): unlike the demo config's, so a scorer that ignores
# them is caught
TRAINED_SETTINGS = [
    "--data.max_length",
    "40",
    "--data.max_query_length",
    "12",
    "--data.excerpt",
    "query_biased",
]

# the example plugin's backbone (examples/backbone-plugin), as fit options
GRU = ["--model.backbone", "gru", "--model.backbone_args", '{tokenizer: "builtin:words", hidden_size: 32}']

# -- tiny transformer configs --------------------------------------------------------------------------------
# the four transformer families' tiny random models (two layers, 32 wide)
NAMES = ["bert", "roberta", "pythia", "llama"]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "roberta": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "pythia": {"hidden_dropout": 0.0, "attention_dropout": 0.0},
    "llama": {"attention_dropout": 0.0, "num_key_value_heads": 2},
}
# the smallest BERT config: checkpoints and exports of a few kilobytes
TINIEST = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
# a one-layer BERT on the word tokenizer, as `--model.backbone_args`
TINY_BERT = {
    "tokenizer": "builtin:words",
    "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


# -- texts ---------------------------------------------------------------------------------------------------
def words(start: int, n: int) -> str:
    """``n`` words of the built-in vocabulary, from ``start`` in steps of 7."""
    return " ".join(VOCABULARY[(start + 7 * i) % len(VOCABULARY)] for i in range(n))


# one short pair, then longer ones that force padding of the short one
QUERIES = [words(0, 2), words(11, 5), words(23, 3), words(37, 6)]
DOCUMENTS = [words(100, 3), words(200, 25), words(300, 12), words(400, 40)]

# a long document whose query terms are in its last sentence only (for excerpts)
QUERY = "zuzu bibi"
FIRST = "baba bebe."
FILLER = " ".join(["kavo"] * 9) + "."
LATE = "lilo zuzu bibi momo."
DOC = " ".join([FIRST, *[FILLER] * 6, LATE])


# -- processes and results -----------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None):
    """Run ``lightning-rank ARGS`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "lightning_rank.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )


def plugin_installed() -> bool:
    """Whether the example backbone plugin (``pip install -e examples/backbone-plugin``) is installed."""
    try:
        distribution("lightning-rank-gru")
    except PackageNotFoundError:
        return False
    return True


def last_val_metrics(root: Path) -> dict[str, float]:
    """The last validation metrics (``val/<measure>@k``) a run under ``root`` logged to its metrics.csv."""
    import csv

    (metrics,) = root.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/nDCG@10")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v and "@" in k}


# -- stub backbones and models -------------------------------------------------------------------------------
def stub_backbone(template: str = CAUSAL_TEMPLATE) -> SimpleNamespace:
    """What a data module needs of a backbone: the word tokenizer and a pair template."""
    from lightning_rank.backbones.base import load_tokenizer
    from lightning_rank.text.templates import PairTemplate

    return SimpleNamespace(tokenizer=load_tokenizer("builtin:words"), template=PairTemplate(template))


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


# -- collections ---------------------------------------------------------------------------------------------
def tsv_collection(
    root: Path, qrels: list[str] | None = None, run: list[str] | None = None, n_docs: int = 20
) -> dict:
    """TSV docs p0..p<n_docs-1>, queries 0..5 (0-2: the one word "kavo", 3-5: three words) whose positive
    is p<q>, a run of 4 candidates per query, all in a ``dev`` split; ``qrels`` and ``run`` lines replace
    the defaults. Returns the ``local_collections`` entry."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.tsv").write_text("".join(f"p{d}\tkavo passage {d}\n" for d in range(n_docs)))
    texts = ["kavo"] * 3 + [f"kavo question {q}" for q in range(3, 6)]
    (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in enumerate(texts)))
    qrels = qrels or [f"{q} 0 p{q} 1" for q in range(6)]
    run = run or [f"{q} Q0 p{(q + k) % n_docs} {k + 1} {9 - k} bm25" for q in range(6) for k in range(4)]
    (root / "qrels.txt").write_text("\n".join(qrels) + "\n")
    (root / "run.trec").write_text("\n".join(run) + "\n")
    return {"docs": str(root / "docs.tsv"), "queries": str(root / "queries.tsv"),
            "qrels": {"dev": str(root / "qrels.txt")}, "runs": {"dev": str(root / "run.trec")}}  # fmt: skip


def spy_on_trust_remote_code(monkeypatch, owner: Any) -> list[bool]:
    """The ``trust_remote_code`` each ``owner.from_pretrained`` call gets (AutoModel, AutoTokenizer, ...),
    in order; the real loader still runs."""
    seen: list[bool] = []
    real = owner.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, "from_pretrained", spy)
    return seen


def long_document_collection(root: Path, queries: int = 6, length: int = 200) -> Path:
    """A BEIR folder of documents ``length`` words long (words of the built-in vocabulary): query q is one
    word; its relevant document ``a<q>`` holds it twice near its end only, and its candidate ``n<q>_0`` once
    at its start (the other candidates never). Splits ``train`` and ``test`` (same queries), each with a run
    listing ``n<q>_0`` first and ``a<q>`` last."""
    root.mkdir(parents=True)
    terms = [VOCABULARY[3000 + q] for q in range(queries)]
    docs, run, qrels = {}, [], []
    for q, term in enumerate(terms):
        tail = length // 10
        docs[f"a{q}"] = f"{words(q, length - tail - 2)} {term} {term} {words(q + 1, tail)}"
        docs[f"n{q}_0"] = f"{term} {words(q + 2, length - 1)}"
        for k in range(1, 4):
            docs[f"n{q}_{k}"] = words(q + 3 * k, length)
        ranked = [f"n{q}_{k}" for k in range(4)] + [f"a{q}"]
        run += [f"q{q} Q0 {d} {r + 1} {10 - r} bm25" for r, d in enumerate(ranked)]
        qrels.append(f"q{q}\ta{q}\t1")
    with (root / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items())
    with (root / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": f"q{q}", "text": t}) + "\n" for q, t in enumerate(terms))
    (root / "qrels").mkdir()
    (root / "runs").mkdir()
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
        (root / "runs" / f"{split}.trec").write_text("\n".join(run) + "\n")
    return root


def msmarco_document_like(root: Path, queries: int = 12, body_words: int = 400) -> Path:
    """A BEIR folder shaped like MS MARCO Document: documents with a url, a title and a body of
    ``body_words`` words (5-10x a tiny model's max_length); splits ``train`` and ``dev`` (binary qrels) and
    ``dl19`` / ``dl20`` (graded qrels 0-3, TREC DL style, with one judged query the run never ranks), each
    with a run of 6 candidates per query."""
    root.mkdir(parents=True)
    docs, run, qrels = [], {s: [] for s in ("train", "dev", "dl19", "dl20")}, {}
    for q in range(queries):
        for k in range(6):
            topic = q * 7 + k
            docs.append({
                "_id": f"D{q}_{k}", "title": words(topic, 4), "text": words(topic + 3, body_words),
                "metadata": {"url": f"http://example.org/{q}/{k}"},
            })  # fmt: skip
        split = "train" if q < queries // 2 else ("dev", "dl19", "dl20")[q % 3]
        ranked = [f"D{q}_{k}" for k in (3, 0, 4, 1, 5, 2)]
        run[split] += [f"{q} Q0 {d} {r + 1} {20 - r} bm25" for r, d in enumerate(ranked)]
        grades = {f"D{q}_0": 3, f"D{q}_1": 1, f"D{q}_2": 0} if split.startswith("dl") else {f"D{q}_0": 1}
        qrels.setdefault(split, []).extend(f"{q}\t{d}\t{g}" for d, g in grades.items())
    for split in ("dl19", "dl20"):  # a judged query without candidates: trec_eval -c counts it as 0
        qrels[split].append(f"{queries + (split == 'dl20')}\tD0_0\t2")
    texts = [words(q * 7, 2) for q in range(queries)] + ["unranked query", "another unranked query"]
    with (root / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    with (root / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": str(q), "text": t}) + "\n" for q, t in enumerate(texts))
    (root / "qrels").mkdir()
    (root / "runs").mkdir()
    for split, lines in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
        (root / "runs" / f"{split}.trec").write_text("\n".join(run[split]) + "\n")
    return root
