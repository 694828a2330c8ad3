"""Ranking losses over groups of documents.

Every loss takes ``scores`` and ``labels`` of shape ``[Q, G]``: Q groups (queries) of G documents each, no
padding. Labels are graded relevance as floats; in training groups built from qrels + hard negatives, the
first columns are the group's positives (``data.positives_per_group``, 1 by default), each labelled with its
qrels grade (>= 1), highest first, and the other columns are negatives (label 0). Distillation losses
also take ``teacher_scores`` ``[Q, G]``. Each loss is a mean over groups and is computed in at least float32
(scores from bf16/fp16 autocast are upcast; labels take the scores' dtype).

Losses are selected in YAML by class path (``model.loss: {class_path: lightning_rank.losses.RankNet}``) or
by the short class name (``model.loss: RankNet``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_rank.errors import ConfigError

__all__ = [
    "BinaryCrossEntropy",
    "GroupCrossEntropy",
    "KLDistillation",
    "LambdaLoss",
    "ListNet",
    "MarginMSE",
    "RankNet",
    "RankingLoss",
    "WeightedSum",
]


def _upcast(x: Tensor) -> Tensor:
    """Half precision and integer tensors to float32; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class RankingLoss(nn.Module):
    """Base class: ``forward(scores [Q, G], labels [Q, G], teacher_scores [Q, G] | None) -> scalar``.

    Subclasses implement :meth:`loss`; ``forward`` checks shapes (and the teacher, for losses with
    ``needs_teacher = True``) and upcasts half precision to float32 first.
    """

    needs_teacher: ClassVar[bool] = False
    """True for distillation losses, which need ``teacher_scores``."""
    min_group_size: ClassVar[int] = 1

    def forward(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None = None) -> Tensor:
        """Mean loss over the Q groups of ``scores`` ``[Q, G]`` with graded ``labels`` ``[Q, G]``."""
        name = type(self).__name__
        if scores.dim() != 2:
            raise ConfigError(
                f"{name}: scores must be [Q, G] (groups x documents), got shape {tuple(scores.shape)}"
            )
        if labels.shape != scores.shape:
            raise ConfigError(
                f"{name}: labels shape {tuple(labels.shape)} does not match "
                f"scores shape {tuple(scores.shape)}"
            )
        if scores.shape[0] == 0 or scores.shape[1] < self.min_group_size:
            raise ConfigError(
                f"{name}: needs at least 1 group of at least {self.min_group_size} documents, "
                f"got scores of shape {tuple(scores.shape)}"
            )
        if self.needs_teacher:
            if teacher_scores is None:
                raise ConfigError(
                    f"{name} is a distillation loss and needs teacher_scores [Q, G]; provide teacher scores "
                    "in the training data (e.g. a scored docpairs/run file) or pick a loss without a teacher"
                )
            if teacher_scores.shape != scores.shape:
                raise ConfigError(
                    f"{name}: teacher_scores shape {tuple(teacher_scores.shape)} does not match scores "
                    f"shape {tuple(scores.shape)}"
                )
        scores = _upcast(scores)
        if teacher_scores is not None:
            teacher_scores = teacher_scores.detach().to(scores.dtype)
        return self.loss(scores, labels.to(scores.dtype), teacher_scores)

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        """The loss on validated float32/float64 inputs of one dtype; implemented by subclasses."""
        raise NotImplementedError


class GroupCrossEntropy(RankingLoss):
    """Localized contrastive estimation (Gao et al., 2021): softmax cross-entropy over each group.

    With one positive per group the loss is ``-log softmax(scores / T)[positive]``. With several positives
    (label > 0) it is ``-log`` of the summed softmax probability of the positives (the probability that
    the group's "pick" is relevant); the grade does not matter beyond > 0. With ``positives: top`` only the
    group's top-graded documents count as positives and lower-graded ones join the negatives. A group
    without any positive raises a ValueError (its loss would be undefined).

    Args:
        temperature: scores are divided by it before the softmax (lower = sharper).
        positives: ``all`` (every label > 0) or ``top`` (the documents with the group's highest label).
    """

    def __init__(self, temperature: float = 1.0, positives: Literal["all", "top"] = "all") -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if positives not in ("all", "top"):
            raise ConfigError(f"positives must be 'all' or 'top', got {positives!r}")
        self.temperature = temperature
        self.positives = positives

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        positive = labels > 0
        if self.positives == "top":
            positive &= labels == labels.max(dim=1, keepdim=True).values
        missing = int((~positive.any(dim=1)).sum())
        if missing:
            raise ConfigError(
                f"GroupCrossEntropy needs at least one positive (label > 0) in every group; "
                f"{missing} of {labels.shape[0]} groups have none"
            )
        log_probs = torch.log_softmax(scores / self.temperature, dim=1)
        log_p_positive = torch.logsumexp(log_probs.masked_fill(~positive, float("-inf")), dim=1)
        return -log_p_positive.mean()


class BinaryCrossEntropy(RankingLoss):
    """Pointwise binary cross-entropy with logits against a target in [0, 1] per document.

    By default label > 0 is relevant (target 1), else 0. With ``max_grade`` the grades count: the target is
    ``min(label / max_grade, 1)`` (e.g. ``max_grade: 3`` on TREC DL's 0-3 scale: grades 1, 2, 3 become 1/3,
    2/3, 1). Mean over all Q x G documents (equal to the mean over groups, as G is fixed).

    Args:
        pos_weight: weight of the positive term (e.g. G-1 to balance 1 positive against G-1 negatives).
        max_grade: the grade that is fully relevant; unset: any label > 0 is.
    """

    def __init__(self, pos_weight: float = 1.0, max_grade: float | None = None) -> None:
        super().__init__()
        if pos_weight <= 0:
            raise ConfigError(f"pos_weight must be > 0, got {pos_weight}")
        if max_grade is not None and max_grade <= 0:
            raise ConfigError(f"max_grade must be > 0 (the grade that is fully relevant), got {max_grade}")
        self.pos_weight = pos_weight
        self.max_grade = max_grade

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        if self.max_grade is None:
            target = (labels > 0).to(scores.dtype)
        else:
            target = (labels / self.max_grade).clamp(0.0, 1.0)
        pos_weight = None if self.pos_weight == 1.0 else scores.new_tensor(self.pos_weight)
        return F.binary_cross_entropy_with_logits(scores, target, pos_weight=pos_weight)


def _mean_over_groups(group_loss: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``group_loss`` over groups where ``valid``; 0 (still in the graph) when none is valid."""
    valid = valid.to(group_loss.dtype)
    return (group_loss * valid).sum() / valid.sum().clamp(min=1.0)


class RankNet(RankingLoss):
    """Pairwise logistic loss (Burges et al., 2005) over all pairs with ``label_i > label_j`` in a group.

    ``log(1 + exp(-sigma * (s_i - s_j)))`` averaged over the valid pairs of each group, then over the
    groups that have at least one valid pair (with fixed G and one positive: the mean over all pairs).

    Args:
        sigma: slope of the logistic.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        pairs = (labels[:, :, None] > labels[:, None, :]).to(scores.dtype)  # [Q, i, j]
        diff = scores[:, :, None] - scores[:, None, :]
        pair_loss = F.softplus(-self.sigma * diff) * pairs
        n_pairs = pairs.sum(dim=(1, 2))
        group_loss = pair_loss.sum(dim=(1, 2)) / n_pairs.clamp(min=1.0)
        return _mean_over_groups(group_loss, n_pairs > 0)


class LambdaLoss(RankingLoss):
    """LambdaLoss with the NDCG-Loss2++ weighting (Wang et al., 2018, "The LambdaLoss Framework for Ranking
    Metric Optimization", CIKM; the formulation of allRank's ``lambdaLoss``).

    Documents are sorted by the current scores (ranks ``r``); for each pair with ``label_i > label_j``::

        loss_ij = -w_ij * log2(sigmoid(sigma * (s_i - s_j)))
        w_ij    = (rho_ij + mu * delta_ij) * |G_i - G_j|            (scheme "ndcgLoss2++")
        w_ij    = rho_ij * |G_i - G_j|                              (scheme "lambdaRank")
        G_i     = (2^label_i - 1) / maxDCG,   D(r) = log2(1 + r)
        rho_ij  = |1 / D(r_i) - 1 / D(r_j)|
        delta_ij = |1 / D(|r_i - r_j|) - 1 / D(|r_i - r_j| + 1)|

    The weights carry no gradient. Summed over the pairs of a group, mean over groups. Note the exponential
    gain here (the paper's nDCG), while trec_eval's nDCG uses gain = grade; for binary labels they agree.
    Grades matter between the documents of a group (a grade-2 and a grade-1 positive form a pair, with a
    larger weight against the negatives for the grade-2 one); a group's only positive weighs the same at any
    grade, as nDCG is normalised by the group's ideal DCG.

    Args:
        scheme: "ndcgLoss2++" (the paper's NDCG-Loss2++) or "lambdaRank" (LambdaRank's |ΔnDCG| weights).
        mu: weight of the NDCG-Loss2 term in NDCG-Loss2++.
        sigma: slope of the logistic.
    """

    def __init__(
        self,
        scheme: Literal["ndcgLoss2++", "lambdaRank"] = "ndcgLoss2++",
        mu: float = 10.0,
        sigma: float = 1.0,
    ) -> None:
        super().__init__()
        if scheme not in ("ndcgLoss2++", "lambdaRank"):
            raise ConfigError(f"scheme must be 'ndcgLoss2++' or 'lambdaRank', got {scheme!r}")
        self.scheme = scheme
        self.mu = mu
        self.sigma = sigma

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        n_docs = scores.shape[1]
        scores_sorted, order = scores.sort(dim=1, descending=True)
        labels_by_score = labels.gather(1, order)
        with torch.no_grad():
            ranks = torch.arange(1, n_docs + 2, device=scores.device, dtype=scores.dtype)
            inv_discount = 1.0 / torch.log2(1.0 + ranks)  # 1 / D(r), r = 1..G+1
            ideal = labels.sort(dim=1, descending=True).values
            max_dcg = ((2.0**ideal - 1.0) * inv_discount[:n_docs]).sum(dim=1).clamp(min=1e-10)
            gains = (2.0**labels_by_score - 1.0) / max_dcg[:, None]
            gain_diff = (gains[:, :, None] - gains[:, None, :]).abs()
            rho = (inv_discount[:n_docs, None] - inv_discount[None, :n_docs]).abs()
            weights = rho[None] * gain_diff
            if self.scheme == "ndcgLoss2++":
                pos = torch.arange(n_docs, device=scores.device)
                dist = (pos[:, None] - pos[None, :]).abs()  # |r_i - r_j|, 0 on the diagonal
                # D(0) is undefined; the diagonal is never a valid pair, so give it delta 0
                delta = (inv_discount[(dist - 1).clamp(min=0)] - inv_discount[dist]).abs()
                delta = delta.masked_fill(dist == 0, 0.0)
                weights = weights + self.mu * delta[None] * gain_diff
            pairs = labels_by_score[:, :, None] > labels_by_score[:, None, :]
        diff = scores_sorted[:, :, None] - scores_sorted[:, None, :]
        log2_sigmoid = F.logsigmoid(self.sigma * diff) / math.log(2.0)
        pair_loss = -(weights * log2_sigmoid).masked_fill(~pairs, 0.0)
        return pair_loss.sum(dim=(1, 2)).mean()


class ListNet(RankingLoss):
    """ListNet (Cao et al., 2007), top-one probabilities: cross-entropy between ``softmax(labels)`` and
    ``softmax(scores / T)`` per group, mean over groups. The grades are the target's logits: a grade-2
    positive takes more of the target's mass than a grade-1 one.

    Args:
        temperature: the student scores are divided by it before the softmax.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        target = torch.softmax(labels, dim=1)
        return -(target * torch.log_softmax(scores / self.temperature, dim=1)).sum(dim=1).mean()


class MarginMSE(RankingLoss):
    """Margin-MSE distillation (Hofstätter et al., 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation").

    For each column j >= 1 against the positive column 0:
    ``((s_0 - s_j) - (t_0 - t_j))^2``, mean over columns and groups. Labels are not used (column 0 must be
    the positive: the top-graded one; with several positives per group the others are matched to the
    teacher's margins too). Needs groups of at least 2 documents and ``teacher_scores``.
    """

    needs_teacher: ClassVar[bool] = True
    min_group_size: ClassVar[int] = 2

    def __init__(self) -> None:
        super().__init__()

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        assert teacher_scores is not None
        student_margin = scores[:, :1] - scores[:, 1:]
        teacher_margin = teacher_scores[:, :1] - teacher_scores[:, 1:]
        return F.mse_loss(student_margin, teacher_margin)


class KLDistillation(RankingLoss):
    """KL distillation per group, ``KL(softmax(teacher / T) || softmax(student / T))``, mean over groups.

    Not multiplied by ``T^2`` (Hinton et al. do so to keep gradient sizes across temperatures); scale the
    loss weight yourself when you compare temperatures. Labels are not used; needs ``teacher_scores``.

    A first-stage run (BM25) is a teacher too, though not one to copy: its scores have a per-query scale and
    it is wrong about the positives the reranker exists to fix. ``standardize`` z-scores the teacher within
    each group; ``negatives_only`` distils only its order of the columns after the top positive (1..: the
    negatives, and any further positives of ``data.positives_per_group``), leaving the positive to a label
    loss beside it (:class:`WeightedSum`).

    Args:
        temperature: teacher and student scores are both divided by it.
        standardize: z-score the teacher's scores within each group first (scale-free teachers).
        negatives_only: distil over columns 1.. only (groups need at least 3 documents to carry an order).
    """

    needs_teacher: ClassVar[bool] = True

    def __init__(
        self, temperature: float = 1.0, standardize: bool = False, negatives_only: bool = False
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.standardize = standardize
        self.negatives_only = negatives_only
        if negatives_only:
            self.min_group_size = 3  # 2 negatives to order; shadows the ClassVar per instance

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        assert teacher_scores is not None
        if self.negatives_only:
            scores, teacher_scores = scores[:, 1:], teacher_scores[:, 1:]
        if self.standardize:
            mean, std = teacher_scores.mean(dim=1, keepdim=True), teacher_scores.std(dim=1, keepdim=True)
            teacher_scores = (teacher_scores - mean) / std.clamp_min(1e-6)  # equal scores: a uniform target
        student_log_p = torch.log_softmax(scores / self.temperature, dim=1)
        teacher_log_p = torch.log_softmax(teacher_scores / self.temperature, dim=1)
        kl = (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(dim=1)
        return kl.mean()


class WeightedSum(RankingLoss):
    """``sum_i weights[i] * losses[i]``: a label loss and a distillation loss trained together, e.g. group CE
    plus the first stage's order of the negatives::

        loss:
          class_path: lightning_rank.losses.WeightedSum
          init_args:
            losses: [GroupCrossEntropy, {class_path: KLDistillation, init_args: {negatives_only: true}}]
            weights: [1.0, 0.5]

    Args:
        losses: the ranking losses to add up (each checks its own inputs).
        weights: one non-negative weight per loss.
    """

    def __init__(self, losses: list[RankingLoss], weights: list[float]) -> None:
        super().__init__()
        if not losses:
            raise ConfigError("WeightedSum needs at least one loss")
        if len(weights) != len(losses):
            raise ConfigError(
                f"WeightedSum: {len(losses)} losses but {len(weights)} weights; give one weight each"
            )
        if any(w < 0 for w in weights):
            raise ConfigError(f"WeightedSum: weights must be >= 0, got {weights}")
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights)
        self.needs_teacher = any(loss.needs_teacher for loss in losses)  # shadows the ClassVar per instance
        self.min_group_size = max(loss.min_group_size for loss in losses)

    def loss(self, scores: Tensor, labels: Tensor, teacher_scores: Tensor | None) -> Tensor:
        return sum(
            w * loss(scores, labels, teacher_scores)
            for w, loss in zip(self.weights, self.losses, strict=True)
        )
