"""Graded labels: qrels grades reach the training groups and the losses; several positives per group."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from helpers import DEMO, stub_backbone, words

from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule, register_beir_folder
from lightning_rank.datamodules.groups import sample_group
from lightning_rank.errors import ConfigError
from lightning_rank.losses import BinaryCrossEntropy, GroupCrossEntropy, LambdaLoss, ListNet

N_QUERIES, N_DOCS = 12, 40


def graded_qrels(q: int) -> dict[str, int]:
    """Query q: d<q> grade 2, for even q also d<q+12> grade 1; d<q+24> is junk (-1), d<q+25> judged 0."""
    rels = {f"d{q}": 2, f"d{q + 24}": -1, f"d{q + 25}": 0}
    if q % 2 == 0:
        rels[f"d{q + 12}"] = 1
    return rels


def write_graded_collection(root: Path) -> Path:
    """A BEIR folder with train and dev splits of the same graded qrels and a run of 10 per query that
    holds the junk and the judged-0 document first."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as f:
        for d in range(N_DOCS):
            f.write(json.dumps({"_id": f"d{d}", "title": "", "text": words(3 * d, 5)}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for q in range(N_QUERIES):
            f.write(json.dumps({"_id": f"q{q}", "text": words(3 * q, 2)}) + "\n")
    qrels = ["query-id\tcorpus-id\tscore"]
    qrels += [f"q{q}\t{d}\t{r}" for q in range(N_QUERIES) for d, r in graded_qrels(q).items()]
    run = []
    for q in range(N_QUERIES):
        ranked = [f"d{q + 24}", f"d{q + 25}", *(f"d{(q + 26 + k) % N_DOCS}" for k in range(6)), f"d{q}"]
        run += [f"q{q} Q0 {d} {k + 1} {20 - k} bm25" for k, d in enumerate(ranked)]
    for kind in ("qrels", "runs"):
        (root / kind).mkdir(exist_ok=True)
    for split in ("train", "dev"):
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n")
        (root / "runs" / f"{split}.trec").write_text("\n".join(run) + "\n")
    return root


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> str:
    register_beir_folder("graded-collection", write_graded_collection(tmp_path_factory.mktemp("g") / "c"))
    return "graded-collection/train"


def make_dm(dataset: str, **kwargs) -> RerankDataModule:
    dm = RerankDataModule(train_dataset=dataset, group_size=4, batch_size=3, seed=7, **kwargs)
    dm.use_backbone(stub_backbone())
    dm.setup("fit")
    return dm


def epoch_groups(dm: RerankDataModule) -> list[tuple[str, list[str], list[float]]]:
    """Every group of epoch 0 as (query id, doc ids re-derived from the stream's seed, labels)."""
    stream, found = dm._train, []
    positions = stream.rank_queries(0)
    for start in range(0, len(positions), stream.batch_size):
        batch_positions = positions[start : start + stream.batch_size]
        batch = stream.make_batch(batch_positions)
        for row, p in enumerate(batch_positions):
            query = stream.index[p]
            rng = random.Random(hash((stream.seed, stream.epoch, p)))
            group, _ = sample_group(
                query, stream.group_size, rng, stream.sampling, stream.positives_per_group
            )
            found.append((query.query_id, group, batch["labels"][row].tolist()))
    return found


# ---------------------------------------------------------------- the losses use the grades


def grad(loss: torch.nn.Module, scores: list[list[float]], labels: list[list[float]]) -> torch.Tensor:
    s = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    loss(s, torch.tensor(labels, dtype=torch.float64)).backward()
    return s.grad


def test_lambdaloss_gradient_differs_between_a_grade_1_and_a_grade_2_positive() -> None:
    scores = [[0.2, 0.9, -0.1, 0.4]]  # the grade-varied positive is ranked below the other positive
    one, two = grad(LambdaLoss(), scores, [[1, 1, 0, 0]]), grad(LambdaLoss(), scores, [[2, 1, 0, 0]])
    assert not torch.allclose(one, two)
    assert two[0, 0] < one[0, 0] < 0  # the grade-2 positive is pushed up harder
    # a group's only positive weighs the same at any grade (nDCG is normalised by the ideal DCG) ...
    only = [[0.2, 0.9, -0.1, 0.4]]
    assert torch.allclose(grad(LambdaLoss(), only, [[1, 0, 0, 0]]), grad(LambdaLoss(), only, [[2, 0, 0, 0]]))
    # ... while ListNet's target takes its grade
    assert not torch.allclose(grad(ListNet(), only, [[1, 0, 0, 0]]), grad(ListNet(), only, [[2, 0, 0, 0]]))


def test_bce_with_max_grade_targets_the_grade_on_a_fixed_scale() -> None:
    scores = torch.tensor([[0.5, -0.2, 1.0]], dtype=torch.float64)
    labels = torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        scores, torch.tensor([[1.0, 1 / 3, 0.0]], dtype=torch.float64)
    )
    assert BinaryCrossEntropy(max_grade=3)(scores, labels).item() == pytest.approx(expected.item(), rel=1e-12)
    capped = torch.nn.functional.binary_cross_entropy_with_logits(
        scores, torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    )
    assert BinaryCrossEntropy(max_grade=2)(scores, labels).item() == pytest.approx(capped.item(), rel=1e-12)
    with pytest.raises(ConfigError, match="max_grade must be > 0"):
        BinaryCrossEntropy(max_grade=0)


def test_group_ce_top_counts_only_the_top_graded_positives() -> None:
    scores = torch.tensor([[0.5, 1.5, -1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[2.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    log_p = torch.log_softmax(scores, dim=1)[0]
    top = GroupCrossEntropy(positives="top")(scores, labels).item()
    assert top == pytest.approx(-log_p[0].item(), rel=1e-12)
    every = GroupCrossEntropy()(scores, labels).item()
    assert every == pytest.approx(-torch.logsumexp(log_p[:2], dim=0).item(), rel=1e-12)
    with pytest.raises(ConfigError, match="positives must be 'all' or 'top'"):
        GroupCrossEntropy(positives="best")


# ---------------------------------------------------------------- groups carry the grades


def test_one_positive_by_default_labelled_with_its_grade(graded) -> None:
    dm = make_dm(graded)
    for qid, group, labels in epoch_groups(dm):
        q = int(qid[1:])
        assert labels[1:] == [0.0, 0.0, 0.0] and labels[0] == graded_qrels(q)[group[0]]
        assert group[0] in (f"d{q}", f"d{q + 12}")


def test_two_positives_form_a_group_and_a_query_with_one_keeps_one(graded) -> None:
    """Even queries have two positives: both, grade 2 first; odd ones have one: it and three negatives.
    Junk (-1) and judged-0 documents are negatives, label 0."""
    dm = make_dm(graded, positives_per_group=2)
    groups = epoch_groups(dm)
    assert len(groups) == N_QUERIES
    for qid, group, labels in groups:
        q = int(qid[1:])
        if q % 2 == 0:
            assert group[:2] == [f"d{q}", f"d{q + 12}"] and labels == [2.0, 1.0, 0.0, 0.0]
        else:
            assert group[0] == f"d{q}" and labels == [2.0, 0.0, 0.0, 0.0]
        assert len(set(group)) == 4  # the run has enough negatives: none repeated
    junk = [label for qid, group, labels in groups for d, label in zip(group, labels, strict=True)
            if graded_qrels(int(qid[1:])).get(d, 1) <= 0]  # fmt: skip
    assert junk and set(junk) == {0.0}


def test_grades_of_a_batch_change_lambdaloss_gradient(graded) -> None:
    """End to end: the batch labels hold the qrels grades, and LambdaLoss's gradient on them is not the
    gradient of the same groups with every positive at grade 1."""
    dm = make_dm(graded, positives_per_group=2)
    batch = dm._train.make_batch(dm._train.rank_queries(0)[:3])
    labels = batch["labels"]
    assert (labels == 2.0).any() and (labels == 1.0).any()
    scores = torch.linspace(-1.0, 1.0, labels.numel()).view_as(labels).tolist()
    binary = (labels > 0).float().tolist()
    assert not torch.allclose(grad(LambdaLoss(), scores, labels.tolist()), grad(LambdaLoss(), scores, binary))


def test_teacher_scores_stay_aligned_with_several_positives(graded, tmp_path) -> None:
    lines = [
        f"q{q} Q0 d{d} {d + 1} {100 - q - d / 10} teacher" for q in range(N_QUERIES) for d in range(N_DOCS)
    ]
    teacher = tmp_path / "teacher.trec"
    teacher.write_text("\n".join(lines) + "\n")
    dm = make_dm(graded, positives_per_group=2, teacher_run=str(teacher))
    stream = dm._train
    positions = stream.rank_queries(0)[:3]
    batch = stream.make_batch(positions)
    for row, p in enumerate(positions):
        query = stream.index[p]
        rng = random.Random(hash((stream.seed, stream.epoch, p)))
        group, _ = sample_group(query, 4, rng, "uniform", 2)
        q = int(query.query_id[1:])
        expected = [100 - q - int(d[1:]) / 10 for d in group]
        assert batch["teacher_scores"][row].tolist() == pytest.approx(expected)


def test_positives_per_group_needs_room_for_a_negative() -> None:
    with pytest.raises(ConfigError, match=r"data\.positives_per_group 4 leaves no room for a negative"):
        RerankDataModule(group_size=4, positives_per_group=4)
    with pytest.raises(ConfigError, match=r"data\.positives_per_group must be >= 1"):
        RerankDataModule(positives_per_group=0)


def test_short_run_warning_counts_the_negatives_a_multi_positive_group_needs(graded, caplog) -> None:
    """Groups of 10: an even query (two positives) needs 8 negatives and has them, an odd one needs 9."""
    with caplog.at_level(logging.WARNING, logger="lightning.pytorch"):
        dm = RerankDataModule(train_dataset=graded, group_size=10, positives_per_group=2)
        dm.use_backbone(stub_backbone())
        dm.setup("fit")
    (message,) = [r.getMessage() for r in caplog.records if "repeat negatives" in r.getMessage()]
    assert (
        f"{N_QUERIES // 2} of {N_QUERIES} training queries have fewer negatives than their groups" in message
    )


# ---------------------------------------------------------------- through the CLI


def test_a_cli_fit_on_graded_qrels_hands_the_grades_to_the_loss(tmp_path, monkeypatch) -> None:
    seen: list[torch.Tensor] = []
    original = LambdaLoss.loss

    def spy(self, scores, labels, teacher_scores):
        seen.append(labels.detach().cpu().clone())
        return original(self, scores, labels, teacher_scores)

    monkeypatch.setattr(LambdaLoss, "loss", spy)
    folder = write_graded_collection(tmp_path / "graded")
    code = main([
        "fit", "--config", DEMO, "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--validate_before_fit", "false",
        "--data.local_collections", json.dumps({"graded-cli": str(folder)}),
        "--data.train_dataset", "graded-cli/train", "--data.val_dataset", "graded-cli/dev",
        "--data.group_size", "4", "--data.batch_size", "3", "--data.positives_per_group", "2",
        "--model.loss", "LambdaLoss",
    ])  # fmt: skip
    assert code == 0 and len(seen) == 4
    rows = {tuple(row.tolist()) for labels in seen for row in labels}
    assert rows == {(2.0, 1.0, 0.0, 0.0), (2.0, 0.0, 0.0, 0.0)}
    assert next((tmp_path / "run").rglob("last.ckpt")).is_file()


def test_the_cli_refuses_a_group_without_room_for_a_negative(tmp_path, capsys) -> None:
    code = main(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path),
                 "--data.group_size", "4", "--data.positives_per_group", "4"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "error: data.positives_per_group 4 leaves no room for a negative" in err and "Traceback" not in err
