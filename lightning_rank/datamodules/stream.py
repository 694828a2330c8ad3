"""The training stream: seeded, sharded by global rank x DataLoader worker, and exactly resumable.

Each epoch the trainable queries are permuted with ``seed + epoch``; rank ``r`` of ``W`` takes every W-th
query of the permutation (the last ``N mod W`` are left out for that epoch so that all ranks take the same
number of steps, and a different set each epoch). The rank's queries are cut into batches, and batch ``j``
goes to worker ``(j - C) mod num_workers`` where C batches were already consumed (0 unless resuming): the
DataLoader takes batches from its workers in turn, so it yields ``C, C+1, ...`` whatever the worker count,
and resuming is "skip the first C batches" (:class:`ResumableLoader`).
Workers render, tokenize and pad (the collator), and fetch texts from the docstore. Each group's labels are
its documents' grades (:meth:`.groups.TrainingQuery.label`): positives first, highest grade first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_rank.datamodules.batch import TrainBatch
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.documents import DocumentLookup
from lightning_rank.datamodules.groups import NegativeSampling, TrainingQuery, sample_group


class TrainingGroupStream(IterableDataset):
    """Yields collated training batches of ``batch_size`` groups x ``group_size`` documents."""

    def __init__(
        self,
        index: list[TrainingQuery],
        queries: Mapping[str, str],
        documents: DocumentLookup,
        collator: PairCollator,
        group_size: int,
        batch_size: int,
        seed: int = 0,
        sampling: NegativeSampling = "uniform",
        teacher: Mapping[str, Mapping[str, float]] | None = None,
        first_stage: Mapping[str, Mapping[str, str]] | None = None,
        positives_per_group: int = 1,
    ) -> None:
        self.index = index
        self.queries = queries
        self.documents = documents
        self.collator = collator
        self.group_size = group_size
        self.batch_size = batch_size
        self.seed = seed
        self.sampling = sampling
        self.teacher = teacher
        self.first_stage = first_stage  # score texts, for templates that show them
        self.positives_per_group = positives_per_group
        self.rank, self.world_size = 0, 1
        self.epoch, self.skip_batches = 0, 0

    def rank_queries(self, epoch: int) -> list[int]:
        """Positions (into ``index``) of this rank's queries for ``epoch``, in training order."""
        order = list(range(len(self.index)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        usable = len(order) // self.world_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(len(self.index) // self.world_size / self.batch_size)

    def __iter__(self) -> Iterator[TrainBatch]:
        positions = self.rank_queries(self.epoch)
        batches = [positions[i : i + self.batch_size] for i in range(0, len(positions), self.batch_size)]
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader takes batches from workers 0, 1, ... in turn: counting from the first batch still
        # due keeps the yielded order 0, 1, 2, ... after a resume too.
        for j in range(self.skip_batches + worker, len(batches), num_workers):
            yield self.make_batch(batches[j])

    def make_batch(self, positions: list[int]) -> TrainBatch:
        """The collated groups of the queries at ``positions`` (keys: :data:`.batch.TrainBatch`)."""
        queries, doc_ids, labels, teacher_scores, shown, repeated = [], [], [], [], [], 0
        for p in positions:
            query = self.index[p]
            rng = random.Random(hash((self.seed, self.epoch, p)))
            group, was_repeated = sample_group(
                query, self.group_size, rng, self.sampling, self.positives_per_group
            )
            repeated += was_repeated
            queries.extend([self.queries[query.query_id]] * self.group_size)
            doc_ids.extend(group)
            labels.append([query.label(d) for d in group])
            if self.teacher is not None:
                teacher_scores.append([self.teacher[query.query_id][d] for d in group])
            if self.first_stage is not None:
                shown.extend(self.first_stage[query.query_id][d] for d in group)
        texts = self.documents.texts(set(doc_ids))
        batch = self.collator(
            queries, [texts[d] for d in doc_ids], shown if self.first_stage is not None else None
        )
        batch["labels"] = torch.tensor(labels, dtype=torch.float32)
        if self.teacher is not None:
            batch["teacher_scores"] = torch.tensor(teacher_scores, dtype=torch.float32)
        batch["query_ids"] = [self.index[p].query_id for p in positions]
        batch["repeated_negatives"] = repeated
        return batch


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`TrainingGroupStream` that Lightning checkpoints and restores.

    ``state_dict`` records the epoch and how many batches of it were yielded; after ``load_state_dict`` the
    next iteration of that epoch skips exactly those batches. ``epoch_fn`` tells the current epoch (the
    trainer's), and ``shard_fn`` the ``(global rank, world size)``.
    """

    dataset: TrainingGroupStream

    def __init__(
        self,
        dataset: TrainingGroupStream,
        epoch_fn: Callable[[], int],
        shard_fn: Callable[[], tuple[int, int]],
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn = epoch_fn
        self._shard_fn = shard_fn
        self._resume: dict[str, int] | None = None
        self._epoch, self._yielded = 0, 0

    def __iter__(self) -> Iterator[TrainBatch]:
        epoch = self._epoch_fn()
        skip = self._resume["batches"] if self._resume and self._resume["epoch"] == epoch else 0
        self._resume = None
        ds = self.dataset
        ds.rank, ds.world_size = self._shard_fn()
        ds.epoch, ds.skip_batches = epoch, skip  # read by the workers forked below
        self._epoch, self._yielded = epoch, skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        self.dataset.rank, self.dataset.world_size = self._shard_fn()
        return len(self.dataset)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)
