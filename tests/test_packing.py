"""Sequence packing (``data.packing``): pairs share rows and never see each other, so scores, gradients and
a whole fit equal the padded ones; backbones that cannot pack say so before anything runs."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from helpers import DEMO, DOCUMENTS, GRU, NAMES, NO_DROPOUT, QUERIES, TINY, last_val_metrics

from lightning_rank.backbones.mamba import backbone as mamba_backbone
from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule, collate
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.packing import best_rows, pack, pack_rows
from lightning_rank.datamodules.synthetic import DemoSpec, generate
from lightning_rank.errors import ConfigError
from lightning_rank.reranker.module import RerankerModule

MAMBA = {
    "mamba1": {"d_model": 32, "n_layer": 2},
    "mamba2": {"d_model": 64, "n_layer": 2, "headdim": 16, "d_state": 16, "chunk_size": 32},
}


def module(name: str, **backbone_args) -> RerankerModule:
    torch.manual_seed(0)
    if name in MAMBA:
        args = {"tokenizer": "builtin:words", "config": MAMBA[name], "use_kernels": "never", **backbone_args}
    else:
        args = {"tokenizer": "builtin:words", "config": {**TINY, **NO_DROPOUT[name]}, **backbone_args}
    return RerankerModule(backbone=name, backbone_args=args)


def collators(model: RerankerModule) -> tuple[PairCollator, PairCollator]:
    backbone = model.backbone
    padded = PairCollator(backbone.tokenizer, backbone.template, max_length=64, max_query_length=16)
    packed = PairCollator(
        backbone.tokenizer, backbone.template, max_length=64, max_query_length=16, packing=True
    )
    return padded, packed


def test_rows_hold_every_sequence_once_within_the_row_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(200)]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= sum(lengths) / 64 * 1.25  # first-fit decreasing fills rows well
    with pytest.raises(ValueError, match="65 tokens does not fit a packed row of 64"):
        pack_rows([10, 65], 64)


def test_rows_are_as_long_as_costs_the_fewest_tokens() -> None:
    assert best_rows([14] * 64, 64)[0] == 14  # pairs of one length: one per row, as padding would
    length, rows = best_rows([30, 30, 20, 20, 10, 10], 64)
    assert (length, len(rows)) == (30, 4)  # 120 tokens; rows of 64 would cost 128
    length, rows = best_rows([40, 25, 25, 25, 25], 256)
    assert (length, len(rows)) == (80, 2)  # 160 tokens: rows of 40 cost 200, one row of 256 costs 256
    assert best_rows([13, 13, 5], 64, multiple=8) == (32, [[0, 1, 2]])  # 26 -> 32, all in one row


def test_a_packed_batch_has_the_padded_ones_tokens_in_fewer_rows() -> None:
    padded_collate, packed_collate = collators(module("bert"))
    queries, documents = QUERIES * 4, DOCUMENTS * 4
    padded, packed = padded_collate(queries, documents), packed_collate(queries, documents)
    assert packed["real_tokens"] == padded["real_tokens"] == int(packed["attention_mask"].sum())
    assert packed["padded_tokens"] < padded["padded_tokens"]
    assert packed["num_sequences"] == 16
    flat = packed["input_ids"].flatten()
    for i in range(16):  # each pair's tokens, in order, from its start
        start, length = int(packed["sequence_starts"][i]), int(packed["sequence_lengths"][i])
        row = padded["input_ids"][i, :length]
        assert torch.equal(flat[start : start + length], row)
        assert torch.equal(packed["position_ids"].flatten()[start : start + length], torch.arange(length))
        assert torch.equal(packed["sequence_ids"].flatten()[start : start + length], torch.full((length,), i))
        types = packed["token_type_ids"].flatten()[start : start + length]
        assert torch.equal(types, padded["token_type_ids"][i, :length])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", [None, "mean"])
@pytest.mark.parametrize("name", NAMES)
def test_packed_scores_and_gradients_equal_padded_ones(name: str, pooling: str | None, attn: str) -> None:
    extra = {"attn_implementation": attn, **({"pooling": pooling} if pooling else {})}
    assert_packed_equals_padded(module(name, **extra).train())


@pytest.mark.parametrize("name", list(MAMBA))
def test_packed_mamba_restarts_its_scan_and_convolution_at_each_pair(name: str) -> None:
    assert_packed_equals_padded(module(name).train())


def assert_packed_equals_padded(model: RerankerModule) -> None:
    """Scores and gradients of a packed batch equal those of the same pairs right-padded."""
    padded_collate, packed_collate = collators(model)
    queries, documents = QUERIES * 3, DOCUMENTS * 3
    outcomes = []
    for batch in (padded_collate(queries, documents), packed_collate(queries, documents)):
        model.zero_grad()
        scores = model(batch)
        (scores * torch.linspace(-1, 1, len(scores))).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outcomes.append((scores.detach(), grads))
    (padded_scores, padded_grads), (packed_scores, packed_grads) = outcomes
    assert packed_scores.shape == (12,) and padded_scores.std() > 1e-4
    torch.testing.assert_close(packed_scores, padded_scores, atol=1e-6, rtol=1e-5)
    assert packed_grads.keys() == padded_grads.keys()
    for key, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[key], grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_packed_scores_on_cuda_in_bf16_track_padded_ones(name: str) -> None:
    """On a GPU SDPA takes other kernels for a block-diagonal mask than for a padding mask."""
    model = module(name).cuda().eval()
    padded_collate, packed_collate = collators(model)
    scores = []
    for batch in (padded_collate(QUERIES * 8, DOCUMENTS * 8), packed_collate(QUERIES * 8, DOCUMENTS * 8)):
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            scores.append(model(batch).float())
    fp32 = module(name).eval()(padded_collate(QUERIES * 8, DOCUMENTS * 8)).detach().cuda()
    bf16_error = (scores[0] - fp32).abs().max()
    assert (scores[1] - fp32).abs().max() <= 2 * bf16_error + 1e-3


@pytest.mark.parametrize("name", ["bert", "mamba1", "mamba2"])
def test_a_pair_sees_nothing_of_its_row_neighbours(name: str) -> None:
    """The checks above can fail: with one sequence per row (no block-diagonal mask, no state reset: one
    sequence id and running positions) the scores differ."""
    model = module(name).eval()
    padded_collate, packed_collate = collators(model)
    padded, packed = padded_collate(QUERIES * 3, DOCUMENTS * 3), packed_collate(QUERIES * 3, DOCUMENTS * 3)
    rows, length = packed["input_ids"].shape
    leaky = {
        **packed,
        "sequence_ids": (packed["sequence_ids"] >= 0).long(),
        "position_ids": torch.arange(length).expand(rows, length),
    }
    with torch.no_grad():
        assert not torch.allclose(model(leaky), model(padded), atol=1e-6, rtol=1e-5)


TINY_BERT = {"tokenizer": "builtin:words", "config": {**TINY, **NO_DROPOUT["bert"]}}
BERT = [
    "--model.backbone", "bert", "--model.backbone_args", json.dumps(TINY_BERT),
    "--validate_before_fit", "false", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def varied_collection(folder: Path) -> Path:
    """The demo's kind of collection with documents of 9 to 60 words (the demo's are all 9)."""
    generate(folder, DemoSpec(train_queries=200, dev_queries=40))
    rng = random.Random(0)
    corpus = folder / "corpus.jsonl"
    docs = [json.loads(line) for line in corpus.read_text().splitlines()]
    for doc in docs:
        words = doc["text"].split()
        doc["text"] = " ".join(words + [rng.choice(words) for _ in range(rng.randint(0, 51))])
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return folder


def test_packed_training_batches_hold_the_same_pairs_in_fewer_tokens(tmp_path: Path) -> None:
    source = {"varied-batches": str(varied_collection(tmp_path / "varied"))}
    batches = {}
    for packing in (False, True):
        dm = RerankDataModule(
            train_dataset="varied-batches/train", local_collections=source, max_length=80, packing=packing
        )
        dm.use_backbone(module("bert").backbone)
        dm.setup("fit")
        batches[packing] = list(itertools.islice(iter(dm.train_dataloader()), 5))
    for padded, packed in zip(batches[False], batches[True], strict=True):
        assert packed["real_tokens"] == padded["real_tokens"]
        assert torch.equal(packed["labels"], padded["labels"])
        assert packed["padded_tokens"] < 0.8 * padded["padded_tokens"]


@pytest.mark.parametrize("backbone", ["bert", "mamba1"])
@pytest.mark.slow
def test_a_packed_fit_ends_where_the_padded_one_does(backbone: str, tmp_path: Path, monkeypatch) -> None:
    name = f"varied-{backbone}"
    varied = json.dumps({name: str(varied_collection(tmp_path / "varied"))})
    data = ["--data.local_collections", varied, "--data.train_dataset", f"{name}/train",
            "--data.val_dataset", f"{name}/dev", "--data.max_length", "80"]  # fmt: skip
    model = BERT if backbone == "bert" else ["--validate_before_fit", "false"]  # the demo's own Mamba-1
    packed_batches = []

    def counted(encoded, *args):
        packed_batches.append(len(encoded))
        return pack(encoded, *args)

    monkeypatch.setattr(collate, "pack", counted)
    results = {}
    for packing in ("false", "true"):
        root = tmp_path / packing
        main([
            "fit", "--config", DEMO, *model, *data, "--trainer.max_epochs", "1", "--trainer.max_steps", "25",
            "--data.packing", packing, "--trainer.default_root_dir", str(root),
        ])  # fmt: skip
        results[packing] = last_val_metrics(root)
        assert bool(packed_batches) == (packing == "true")  # really packed (training and validation)
    assert 0.0 < results["false"]["val/nDCG@10"] < 1.0
    for name, value in results["false"].items():
        assert abs(results["true"][name] - value) <= 1e-4, (name, results)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # refused before data is read: the missing run would be the error otherwise
        (
            [*GRU, "--validate_before_fit", "false", "--data.train_run", "missing.trec"],
            "GRUBackbone cannot score packed rows (GRUBackbone does not implement forward_packed)",
        ),
        ([*BERT, "--data.length_buckets", "4"], "data.packing and data.length_buckets > 1 are two ways"),
        ([*BERT, "--model.cuda_graphs", "true"], "model.cuda_graphs needs a fixed set of input shapes"),
    ],
    ids=["plugin", "length-buckets", "cuda-graphs"],
)
def test_what_cannot_pack_is_refused_before_training(flags, message, tmp_path, capsys) -> None:
    root = tmp_path / "run"
    argv = [
        "fit",
        "--config",
        DEMO,
        *flags,
        "--data.packing",
        "true",
        "--trainer.default_root_dir",
        str(root),
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(root.rglob("*.ckpt"))


def test_evaluation_refuses_a_backbone_that_cannot_pack_before_reading_data(capsys) -> None:
    argv = ["validate", "--config", DEMO, *GRU, "--data.packing", "true", "--data.val_run", "missing.trec"]
    assert main(argv) == 2
    assert "data.packing: GRUBackbone cannot score packed rows" in capsys.readouterr().err


def test_mamba_packs_only_where_the_fused_kernels_cannot_run(monkeypatch) -> None:
    """The kernels' scans do not restart per sequence here: where they may run, packing is refused."""
    for name in MAMBA:
        assert module(name).backbone.packing_unsupported() is None  # use_kernels: never
        monkeypatch.setattr(mamba_backbone, "kernels_available", lambda: True)
        auto = module(name, use_kernels="auto").backbone
        assert "use_kernels: never" in auto.packing_unsupported()
        data = RerankDataModule(packing=True)
        with pytest.raises(ConfigError, match=r"cannot score packed rows .*use_kernels: never"):
            data.check_packing(auto)
        monkeypatch.undo()
