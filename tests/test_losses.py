"""Ranking losses: values against arithmetic written out by hand, gradients, errors, config selection."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_rank.losses import (
    BinaryCrossEntropy,
    GroupCrossEntropy,
    KLDistillation,
    LambdaLoss,
    ListNet,
    MarginMSE,
    RankingLoss,
    RankNet,
    WeightedSum,
)

# two groups of three documents; group 0: one positive in column 0, group 1: graded labels
SCORES = [[2.0, 1.0, 0.5], [0.1, 0.3, -1.0]]
LABELS = [[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]]
TEACHER = [[3.0, 0.0, 1.0], [1.0, 2.0, 0.0]]


def t(rows: list[list[float]], requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=requires_grad)


def log_softmax_at(row: list[float], i: int, temperature: float = 1.0) -> float:
    return row[i] / temperature - math.log(sum(math.exp(x / temperature) for x in row))


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    z = sum(math.exp(x / temperature) for x in row)
    return [math.exp(x / temperature) / z for x in row]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- values computed by hand


def test_group_ce_one_positive() -> None:
    scores = [[2.0, 1.0, 0.5], [0.0, 1.0, -1.0]]
    labels = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    g0 = -(2.0 - math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5)))
    g1 = -(0.0 - math.log(math.exp(0.0) + math.exp(1.0) + math.exp(-1.0)))
    assert GroupCrossEntropy()(t(scores), t(labels)).item() == pytest.approx((g0 + g1) / 2, rel=1e-6)


def test_group_ce_temperature() -> None:
    scores, labels = [[2.0, 1.0, 0.5]], [[1.0, 0.0, 0.0]]
    # scores / 0.5 = [4, 2, 1]
    expected = -(4.0 - math.log(math.exp(4.0) + math.exp(2.0) + math.exp(1.0)))
    assert GroupCrossEntropy(temperature=0.5)(t(scores), t(labels)).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_group_ce_several_positives_sums_their_probability() -> None:
    scores, labels = [[2.0, 1.0, 0.5]], [[1.0, 2.0, 0.0]]  # the grade does not matter beyond > 0
    z = math.exp(2.0) + math.exp(1.0) + math.exp(0.5)
    expected = -math.log((math.exp(2.0) + math.exp(1.0)) / z)
    assert GroupCrossEntropy()(t(scores), t(labels)).item() == pytest.approx(expected, rel=1e-6)


def test_bce() -> None:
    def bce(x: float, y: float, pos_weight: float = 1.0) -> float:
        return -(pos_weight * y * math.log(sigmoid(x)) + (1 - y) * math.log(1 - sigmoid(x)))

    # labels > 0 are relevant: the grade 2 and 1 both become target 1
    targets = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    values = [bce(x, y) for rx, ry in zip(SCORES, targets, strict=True) for x, y in zip(rx, ry, strict=True)]
    assert BinaryCrossEntropy()(t(SCORES), t(LABELS)).item() == pytest.approx(sum(values) / 6, rel=1e-6)
    weighted = [
        bce(x, y, 2.0) for rx, ry in zip(SCORES, targets, strict=True) for x, y in zip(rx, ry, strict=True)
    ]
    got = BinaryCrossEntropy(pos_weight=2.0)(t(SCORES), t(LABELS)).item()
    assert got == pytest.approx(sum(weighted) / 6, rel=1e-6)


def test_ranknet() -> None:
    def pair(si: float, sj: float) -> float:
        return math.log(1.0 + math.exp(-(si - sj)))

    # group 0 (labels 1,0,0): pairs (0,1), (0,2); group 1 (labels 2,1,0): pairs (0,1), (0,2), (1,2)
    g0 = (pair(2.0, 1.0) + pair(2.0, 0.5)) / 2
    g1 = (pair(0.1, 0.3) + pair(0.1, -1.0) + pair(0.3, -1.0)) / 3
    assert RankNet()(t(SCORES), t(LABELS)).item() == pytest.approx((g0 + g1) / 2, rel=1e-6)


def test_ranknet_sigma_and_groups_without_pairs() -> None:
    # the second group has equal labels: no valid pair, it is left out of the mean
    scores, labels = [[2.0, 1.0], [5.0, -5.0]], [[1.0, 0.0], [0.0, 0.0]]
    expected = math.log(1.0 + math.exp(-2.0 * (2.0 - 1.0)))
    assert RankNet(sigma=2.0)(t(scores), t(labels)).item() == pytest.approx(expected, rel=1e-6)
    # no valid pair at all: zero loss that still backpropagates
    s = t([[1.0, 2.0]], requires_grad=True)
    loss = RankNet()(s, t([[0.0, 0.0]]))
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None


def _lambda_expected(scheme: str, mu: float = 10.0) -> float:
    # scores [1, 3, 2], labels [2, 0, 1]; sorted by score: doc1 (r=1, label 0), doc2 (r=2, 1), doc0 (r=3, 2)
    def inv_d(r: int) -> float:
        return 1.0 / math.log2(1.0 + r)

    max_dcg = (2**2 - 1) * inv_d(1) + (2**1 - 1) * inv_d(2)  # ideal order: labels 2, 1, 0
    gain = {0: 3.0 / max_dcg, 1: 0.0, 2: 1.0 / max_dcg}
    rank = {0: 3, 1: 1, 2: 2}
    score = {0: 1.0, 1: 3.0, 2: 2.0}
    total = 0.0
    for i, j in [(0, 1), (0, 2), (2, 1)]:  # label_i > label_j
        rho = abs(inv_d(rank[i]) - inv_d(rank[j]))
        dist = abs(rank[i] - rank[j])
        delta = abs(inv_d(dist) - inv_d(dist + 1))
        weight = rho if scheme == "lambdaRank" else rho + mu * delta
        weight *= abs(gain[i] - gain[j])
        total += -weight * math.log2(sigmoid(score[i] - score[j]))
    return total


@pytest.mark.parametrize("scheme", ["ndcgLoss2++", "lambdaRank"])
def test_lambdaloss(scheme: str) -> None:
    scores, labels = [[1.0, 3.0, 2.0]], [[2.0, 0.0, 1.0]]
    got = LambdaLoss(scheme=scheme)(t(scores), t(labels)).item()
    assert got == pytest.approx(_lambda_expected(scheme), rel=1e-6)
    # mean over groups: the same group twice gives the same value
    got2 = LambdaLoss(scheme=scheme, mu=3.0)(t(scores * 2), t(labels * 2)).item()
    assert got2 == pytest.approx(_lambda_expected(scheme, mu=3.0), rel=1e-6)


def test_listnet() -> None:
    expected = 0.0
    for row_s, row_y in zip(SCORES, LABELS, strict=True):
        p, q = softmax(row_y), softmax(row_s)
        expected += -sum(pi * math.log(qi) for pi, qi in zip(p, q, strict=True))
    assert ListNet()(t(SCORES), t(LABELS)).item() == pytest.approx(expected / 2, rel=1e-6)


def test_margin_mse() -> None:
    # group 0: student margins (2-1, 2-0.5) = (1, 1.5), teacher (3-0, 3-1) = (3, 2)
    # group 1: student (0.1-0.3, 0.1+1) = (-0.2, 1.1), teacher (1-2, 1-0) = (-1, 1)
    sq = [(1 - 3) ** 2, (1.5 - 2) ** 2, (-0.2 + 1) ** 2, (1.1 - 1) ** 2]
    got = MarginMSE()(t(SCORES), t(LABELS), t(TEACHER)).item()
    assert got == pytest.approx(sum(sq) / 4, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_distillation(temperature: float) -> None:
    expected = 0.0
    for row_s, row_t in zip(SCORES, TEACHER, strict=True):
        p, q = softmax(row_t, temperature), softmax(row_s, temperature)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    got = KLDistillation(temperature=temperature)(t(SCORES), t(LABELS), t(TEACHER)).item()
    assert got == pytest.approx(expected / 2, rel=1e-6)
    # identical distributions: zero
    assert KLDistillation()(t(TEACHER), t(LABELS), t(TEACHER)).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_distillation_of_the_negatives_order_on_standardized_teacher_scores() -> None:
    """A first-stage run as teacher: only columns 1.. count, and the teacher's per-query scale does not."""
    loss = KLDistillation(standardize=True, negatives_only=True)
    got = loss(t(SCORES), t(LABELS), t(TEACHER)).item()
    expected = 0.0
    for row_s, row_t in zip(SCORES, TEACHER, strict=True):
        negatives = row_t[1:]
        mean = sum(negatives) / 2
        std = math.sqrt(sum((x - mean) ** 2 for x in negatives))  # unbiased over two values
        p, q = softmax([(x - mean) / std for x in negatives]), softmax(row_s[1:])
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    assert got == pytest.approx(expected / 2, rel=1e-6)
    # the positive's scores (student and teacher) and an affine rescaling of the teacher change nothing
    moved = [[99.0, *row[1:]] for row in SCORES]
    rescaled = [[-5.0, *(30 * x + 7 for x in row[1:])] for row in TEACHER]
    assert loss(t(moved), t(LABELS), t(rescaled)).item() == pytest.approx(got, rel=1e-9)
    # unstandardized, the raw scale matters
    assert KLDistillation(negatives_only=True)(t(SCORES), t(LABELS), t(rescaled)).item() != pytest.approx(got)


def test_kl_distillation_of_negatives_needs_two_of_them() -> None:
    with pytest.raises(ValueError, match=r"at least 3 documents, got scores of shape \(1, 2\)"):
        KLDistillation(negatives_only=True)(t([[1.0, 0.0]]), t([[1.0, 0.0]]), t([[2.0, 1.0]]))


def test_weighted_sum_adds_its_losses_and_needs_a_teacher_if_one_does() -> None:
    kl = KLDistillation(standardize=True, negatives_only=True)
    combined = WeightedSum([GroupCrossEntropy(), kl], [1.0, 0.5])
    expected = GroupCrossEntropy()(t(SCORES), t(LABELS)) + 0.5 * kl(t(SCORES), t(LABELS), t(TEACHER))
    assert combined(t(SCORES), t(LABELS), t(TEACHER)).item() == pytest.approx(expected.item(), rel=1e-12)
    assert combined.needs_teacher and not WeightedSum([GroupCrossEntropy()], [2.0]).needs_teacher
    with pytest.raises(ValueError, match="needs teacher_scores"):
        combined(t(SCORES), t(LABELS))
    assert WeightedSum([GroupCrossEntropy(), MarginMSE()], [1.0, 1.0]).min_group_size == 2


@pytest.mark.parametrize(
    ("losses", "weights", "message"),
    [([], [], "at least one loss"), ([GroupCrossEntropy()], [1.0, 2.0], "1 losses but 2 weights"),
     ([GroupCrossEntropy()], [-1.0], "weights must be >= 0")],
)  # fmt: skip
def test_weighted_sum_bad_arguments(losses: list, weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedSum(losses, weights)


# ---------------------------------------------------------------- gradients

RANKING_LOSSES = [GroupCrossEntropy(), BinaryCrossEntropy(), RankNet(), LambdaLoss(), ListNet()]


def test_group_ce_increasing_positive_lowers_loss() -> None:
    loss = GroupCrossEntropy()
    labels = t([[1.0, 0.0, 0.0, 0.0]])
    values = [loss(t([[x, 1.0, 0.5, 0.0]]), labels).item() for x in (-1.0, 0.0, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in itertools.pairwise(values))
    s = t([[0.0, 1.0, 0.5, 0.0]], requires_grad=True)
    loss(s, labels).backward()
    assert s.grad is not None
    assert s.grad[0, 0] < 0 and (s.grad[0, 1:] > 0).all()
    assert s.grad.sum().item() == pytest.approx(0.0, abs=1e-9)  # softmax CE is shift invariant


@pytest.mark.parametrize("loss", RANKING_LOSSES, ids=lambda m: type(m).__name__)
def test_gradient_pushes_positive_up(loss: RankingLoss) -> None:
    s = t([[0.0, 1.0, 0.5, -0.5]], requires_grad=True)
    labels = t([[1.0, 0.0, 0.0, 0.0]])
    value = loss(s, labels)
    value.backward()
    assert s.grad is not None and s.grad[0, 0] < 0
    with torch.no_grad():
        stepped = loss(s - 0.1 * s.grad, labels)
    assert stepped < value


# ---------------------------------------------------------------- errors and inputs


@pytest.mark.parametrize("loss", [MarginMSE(), KLDistillation()], ids=lambda m: type(m).__name__)
def test_missing_teacher(loss: RankingLoss) -> None:
    assert loss.needs_teacher
    with pytest.raises(ValueError, match="needs teacher_scores"):
        loss(t(SCORES), t(LABELS))
    with pytest.raises(ValueError, match="teacher_scores shape"):
        loss(t(SCORES), t(LABELS), t([[1.0, 2.0]]))


def test_ranking_losses_need_no_teacher_and_ignore_it() -> None:
    for loss in RANKING_LOSSES:
        assert not loss.needs_teacher
        assert loss(t(SCORES), t(LABELS), t(TEACHER)) == loss(t(SCORES), t(LABELS))


@pytest.mark.parametrize(
    "loss", [*RANKING_LOSSES, MarginMSE(), KLDistillation()], ids=lambda m: type(m).__name__
)
def test_shape_errors(loss: RankingLoss) -> None:
    teacher = t(TEACHER)
    with pytest.raises(ValueError, match=r"labels shape \(2, 2\) does not match scores shape \(2, 3\)"):
        loss(t(SCORES), t([[1.0, 0.0], [1.0, 0.0]]), teacher)
    with pytest.raises(ValueError, match=r"must be \[Q, G\]"):
        loss(torch.zeros(6), torch.zeros(6), teacher)


def test_margin_mse_needs_two_documents() -> None:
    with pytest.raises(ValueError, match="at least 2 documents"):
        MarginMSE()(t([[1.0]]), t([[1.0]]), t([[1.0]]))


def test_group_ce_group_without_positive() -> None:
    with pytest.raises(ValueError, match="1 of 2 groups have none"):
        GroupCrossEntropy()(t(SCORES), t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("cls", [GroupCrossEntropy, ListNet, KLDistillation])
def test_bad_temperature(cls: type[RankingLoss]) -> None:
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature=0.0)  # type: ignore[call-arg]


def test_bf16_scores_and_integer_labels_are_upcast() -> None:
    scores = torch.tensor(SCORES, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor(LABELS, dtype=torch.long)
    for loss in [*RANKING_LOSSES, MarginMSE(), KLDistillation()]:
        value = loss(scores, labels, torch.tensor(TEACHER, dtype=torch.bfloat16))
        assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)
        value.backward()


# ---------------------------------------------------------------- selection from config


def test_selectable_by_class_path_and_short_name() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--loss", type=RankingLoss)
    for cls in [
        GroupCrossEntropy,
        BinaryCrossEntropy,
        RankNet,
        LambdaLoss,
        ListNet,
        MarginMSE,
        KLDistillation,
    ]:
        cfg = parser.parse_args(["--loss", cls.__name__])
        assert isinstance(parser.instantiate(cfg).loss, cls)
    cfg = parser.parse_args(
        [
            "--loss",
            '{"class_path": "lightning_rank.losses.GroupCrossEntropy", "init_args": {"temperature": 0.5}}',
        ]
    )
    loss = parser.instantiate(cfg).loss
    assert isinstance(loss, GroupCrossEntropy) and loss.temperature == 0.5
    cfg = parser.parse_args(["--loss", "LambdaLoss", "--loss.scheme", "lambdaRank", "--loss.mu", "5"])
    loss = parser.instantiate(cfg).loss
    assert isinstance(loss, LambdaLoss) and loss.scheme == "lambdaRank" and loss.mu == 5.0
    # a combination from YAML, its parts by short name or class path
    cfg = parser.parse_args(
        [
            "--loss",
            '{"class_path": "WeightedSum", "init_args": {"losses": ["GroupCrossEntropy", '
            '{"class_path": "KLDistillation", "init_args": {"negatives_only": true, "standardize": true}}], '
            '"weights": [1, 0.5]}}',
        ]
    )
    loss = parser.instantiate(cfg).loss
    assert isinstance(loss, WeightedSum) and loss.weights == [1.0, 0.5] and loss.needs_teacher
    assert isinstance(loss.losses[0], GroupCrossEntropy) and loss.losses[1].negatives_only
