"""TokensPerSecond: rates against an independent wall clock, exact ratios, MFU, progress bar, DDP sum."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_rank.callbacks.throughput as throughput_module
from lightning_rank.callbacks import TokensPerSecond

VOCAB, HIDDEN = 50, 8


def make_batch(generator: torch.Generator, num_sequences: int, seq_len: int) -> dict[str, Any]:
    """A right-padded dict batch with random real lengths and the counts the collator adds."""
    lengths = torch.randint(1, seq_len + 1, (num_sequences,), generator=generator)
    lengths[0] = seq_len  # padded to the longest sequence
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (num_sequences, seq_len), generator=generator) * mask
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.zeros(num_sequences),
        "real_tokens": int(mask.sum()),
        "padded_tokens": num_sequences * seq_len,
        "num_sequences": num_sequences,
    }


class Batches(Dataset):
    """Pre-built batches with varying shapes (DataLoader with batch_size=None)."""

    def __init__(self, n: int, seed: int = 0, max_len: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(n):
            num_sequences = int(torch.randint(2, 9, (1,), generator=g))
            seq_len = int(torch.randint(4, max_len + 1, (1,), generator=g))
            self.batches.append(make_batch(g, num_sequences, seq_len))

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


class PerRank(Dataset):
    """Short batches on rank 0, long ones on rank 1 (no distributed sampler): per-rank counts differ."""

    def __init__(self, n: int) -> None:
        self.ranks = [Batches(n, seed=0, max_len=8), Batches(n, seed=1, max_len=64)]

    def __len__(self) -> int:
        return len(self.ranks[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.ranks[torch.distributed.get_rank()][i]


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def flops_per_token(self, seq_len: int) -> float:
        """Depends on the length, like attention, so MFU must use each batch's padded length."""
        return 2.0 * sum(p.numel() for p in self.parameters()) + 4.0 * seq_len * HIDDEN


class TinyModule(LightningModule):
    """Sleeps a known time per step on top of a little real work."""

    def __init__(self, sleep: float = 0.01, val_sleep: float = 0.0) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.sleep = sleep
        self.val_sleep = val_sleep

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        hidden = self.backbone.embed(batch["input_ids"]) * batch["attention_mask"][..., None]
        return self.backbone.head(hidden.sum(1) / batch["attention_mask"].sum(1, keepdim=True)).squeeze(-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        time.sleep(self.sleep)
        return (self(batch) - batch["labels"]).pow(2).mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        time.sleep(self.val_sleep)
        self(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Recorder(Callback):
    """Independent wall clock: timestamps of every batch start/end and the counts each batch carried."""

    def __init__(self) -> None:
        self.train: list[dict[str, Any]] = []
        self.val: list[dict[str, Any]] = []
        self._start = 0.0
        self._after_val = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self.train.append(
            {
                "start": self._start,
                "end": time.perf_counter(),
                "after_val": self._after_val,
                "real": batch["real_tokens"],
                "padded": batch["padded_tokens"],
                "seqs": batch["num_sequences"],
                "seq_len": batch["input_ids"].shape[1],
            }
        )
        self._after_val = False

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._after_val = True

    def on_validation_batch_start(self, trainer: Trainer, *_: Any) -> None:
        self._start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        if not trainer.sanity_checking:
            self.val.append({"start": self._start, "end": time.perf_counter(), "real": batch["real_tokens"]})

    def interval(self, i: int) -> float:
        """Wall time of training batch i as the profiler defines it: from the previous batch's end, or from
        its own start right after a validation run."""
        b = self.train[i]
        return b["end"] - (b["start"] if b["after_val"] else self.train[i - 1]["end"])


def read_rows(logger: CSVLogger, key: str) -> list[dict[str, float]]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get(key)]
    return [{k: float(v) for k, v in row.items() if v} for row in rows]


def fit(
    tmp_path: Path,
    callback: TokensPerSecond,
    max_steps: int = 30,
    n_batches: int = 40,
    accelerator: str = "cpu",
    **kwargs: Any,
):
    recorder = Recorder()
    logger = CSVLogger(tmp_path, name="run")
    module = TinyModule(sleep=kwargs.pop("sleep", 0.01), val_sleep=kwargs.pop("val_sleep", 0.0))
    val = kwargs.pop("val", None)
    trainer = Trainer(
        max_steps=max_steps,
        logger=logger,
        # the recorder runs first so its timestamps sit right before the profiler's own
        callbacks=[recorder, callback, *kwargs.pop("callbacks", [])],
        enable_progress_bar=kwargs.pop("enable_progress_bar", False),
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator=accelerator,
        devices=1,
        **kwargs,
    )
    trainer.fit(module, DataLoader(Batches(n_batches), batch_size=None), val)
    return trainer, recorder, logger


GPU = pytest.param(
    "gpu",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-event clock needs a GPU"),
    ],
)


@pytest.mark.parametrize("accelerator", ["cpu", GPU])
@pytest.mark.parametrize(("window", "warmup"), [(29, 1), (10, 1), (8, 3)])
def test_rates_match_independent_wall_clock(
    tmp_path: Path, window: int, warmup: int, accelerator: str
) -> None:
    """Acceptance: logged real tokens/sec = real tokens of the measured steps / their wall time, within 5%
    (on a GPU the profiler's clock is CUDA events; the recorder's is the host's)."""
    _, recorder, logger = fit(
        tmp_path,
        TokensPerSecond(window_size=window, warmup_steps=warmup),
        log_every_n_steps=1,
        accelerator=accelerator,
    )
    rows = read_rows(logger, "train/tokens_per_sec")
    assert len(rows) == 30 - warmup - window + 1  # one per step once the window is full
    assert rows[0]["step"] == warmup + window - 1
    for row in rows:
        step = int(row["step"])
        batches = recorder.train[step - window + 1 : step + 1]
        wall = recorder.train[step]["end"] - recorder.train[step - window]["end"]
        real = sum(b["real"] for b in batches)
        padded = sum(b["padded"] for b in batches)
        seqs = sum(b["seqs"] for b in batches)

        assert row["train/tokens_per_sec"] == pytest.approx(real / wall, rel=0.05)
        assert row["train/padded_tokens_per_sec"] == pytest.approx(padded / wall, rel=0.05)
        assert row["train/sequences_per_sec"] == pytest.approx(seqs / wall, rel=0.05)
        assert row["train/step_time"] == pytest.approx(wall / window, rel=0.05)
        # exact relations between the figures (the clock cancels)
        assert row["train/padded_tokens_per_sec"] >= row["train/tokens_per_sec"]
        assert row["train/sequences_per_sec"] / row["train/tokens_per_sec"] == pytest.approx(
            seqs / real, rel=1e-9
        )
        assert row["train/tokens_per_sec"] * row["train/step_time"] * window == pytest.approx(real, rel=1e-9)
        # CPU: no peak FLOPs, no CUDA memory
        if accelerator == "cpu":
            assert "train/mfu" not in row
            assert "train/peak_memory_gib" not in row
        else:
            assert row["train/peak_memory_gib"] >= 0
    # the last window's rate is well above what the 10 ms sleep allows only if warm-up leaked in
    assert rows[-1]["train/step_time"] >= 0.01


def test_logs_every_n_steps(tmp_path: Path) -> None:
    """None follows the trainer's log_every_n_steps; an explicit value overrides it."""
    _, _, logger = fit(tmp_path / "a", TokensPerSecond(window_size=5), log_every_n_steps=4, sleep=0.0)
    assert [int(r["step"]) for r in read_rows(logger, "train/tokens_per_sec")] == [7, 11, 15, 19, 23, 27]
    _, _, logger = fit(
        tmp_path / "b", TokensPerSecond(window_size=5, log_every_n_steps=10), log_every_n_steps=1, sleep=0.0
    )
    assert [int(r["step"]) for r in read_rows(logger, "train/tokens_per_sec")] == [9, 19, 29]
    _, _, logger = fit(tmp_path / "c", TokensPerSecond(window_size=5, log_every_n_steps=0), sleep=0.0)
    assert not (Path(logger.log_dir) / "metrics.csv").exists() or not read_rows(
        logger, "train/tokens_per_sec"
    )


def test_mfu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MFU = 3 x flops_per_token(padded length) x padded tokens per second / the device's peak FLOPs."""
    peak = 1e9
    monkeypatch.setattr(throughput_module, "get_available_flops", lambda device, dtype: peak)
    window = 10
    trainer, recorder, logger = fit(tmp_path, TokensPerSecond(window_size=window), log_every_n_steps=5)
    backbone = trainer.lightning_module.backbone
    rows = read_rows(logger, "train/mfu")
    assert rows
    for row in rows:
        step = int(row["step"])
        batches = recorder.train[step - window + 1 : step + 1]
        flops = sum(3 * backbone.flops_per_token(b["seq_len"]) * b["padded"] for b in batches)
        padded = sum(b["padded"] for b in batches)
        expected = row["train/padded_tokens_per_sec"] * flops / padded / peak
        assert row["train/mfu"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bar", [RichProgressBar, TQDMProgressBar])
def test_progress_bar(tmp_path: Path, bar: type) -> None:
    trainer, _, logger = fit(
        tmp_path,
        TokensPerSecond(window_size=5),
        max_steps=12,
        log_every_n_steps=2,
        enable_progress_bar=True,
        callbacks=[bar()],
        sleep=0.0,
    )
    assert isinstance(trainer.progress_bar_callback, bar)
    shown = trainer.progress_bar_metrics["train/tokens_per_sec"]
    logged = read_rows(logger, "train/tokens_per_sec")[-1]["train/tokens_per_sec"]
    assert shown == pytest.approx(logged, rel=1e-6)
    assert "train/tokens_per_sec" in trainer.progress_bar_callback.get_metrics(
        trainer, trainer.lightning_module
    )


def test_validation_is_measured_and_left_out_of_training(tmp_path: Path) -> None:
    """Validation inside fit logs val/ rates and does not sink the training rate of windows that span it."""
    window = 8
    val = DataLoader(Batches(5, seed=1), batch_size=None)
    _, recorder, logger = fit(
        tmp_path,
        TokensPerSecond(window_size=window),
        log_every_n_steps=1,
        val=val,
        val_check_interval=12,
        val_sleep=0.05,  # 5 x 50 ms of validation vs a 10 ms training step
    )
    val_rows = read_rows(logger, "val/tokens_per_sec")
    assert len(val_rows) == 2  # after steps 12 and 24
    runs = [recorder.val[:5], recorder.val[5:]]
    for row, run in zip(val_rows, runs, strict=True):
        measured = run[1:]  # the first batch is warm-up
        wall = run[-1]["end"] - run[0]["end"]
        assert row["val/tokens_per_sec"] == pytest.approx(sum(b["real"] for b in measured) / wall, rel=0.05)
        assert row["val/padded_tokens_per_sec"] >= row["val/tokens_per_sec"]

    rows = read_rows(logger, "train/tokens_per_sec")
    spanning = [r for r in rows if int(r["step"]) - window < 12 <= int(r["step"])]
    assert spanning
    for row in rows:
        step = int(row["step"])
        wall = sum(recorder.interval(i) for i in range(step - window + 1, step + 1))
        real = sum(b["real"] for b in recorder.train[step - window + 1 : step + 1])
        assert row["train/tokens_per_sec"] == pytest.approx(real / wall, rel=0.05)


def test_predict(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run")
    trainer = Trainer(
        logger=logger, callbacks=[TokensPerSecond()], enable_progress_bar=False, accelerator="cpu"
    )
    trainer.predict(TinyModule(), DataLoader(Batches(6), batch_size=None))
    (row,) = read_rows(logger, "predict/tokens_per_sec")
    assert row["predict/padded_tokens_per_sec"] >= row["predict/tokens_per_sec"] > 0


def test_attention_mask_fallback() -> None:
    batch = make_batch(torch.Generator().manual_seed(0), 3, 7)
    counts = (batch["real_tokens"], batch["padded_tokens"], batch["num_sequences"])
    del batch["real_tokens"], batch["padded_tokens"], batch["num_sequences"]
    assert throughput_module._batch_counts(batch) == counts
    assert throughput_module._batch_counts({"x": torch.zeros(2)}) is None


def test_args_validated() -> None:
    with pytest.raises(ValueError, match="window_size"):
        TokensPerSecond(window_size=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        TokensPerSecond(warmup_steps=-1)


def test_ddp_sums_counts_over_ranks(tmp_path: Path) -> None:
    """Two CPU ranks with different sequence lengths: the figure is the sum over ranks, not rank 0 x 2."""
    window = 4
    data = PerRank(12)
    logger = CSVLogger(
        tmp_path, name="run", version=0
    )  # the forked rank 0 writes; fix the folder for the parent
    trainer = Trainer(
        max_steps=10,
        logger=logger,
        callbacks=[TokensPerSecond(window_size=window)],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        use_distributed_sampler=False,
    )
    trainer.fit(TinyModule(sleep=0.0), DataLoader(data, batch_size=None))
    rows = read_rows(logger, "train/tokens_per_sec")
    assert len(rows) == 10 - 1 - window + 1
    for row in rows:
        step = int(row["step"])
        batches = [data.ranks[r][s] for s in range(step - window + 1, step + 1) for r in (0, 1)]
        real = sum(b["real_tokens"] for b in batches)
        padded = sum(b["padded_tokens"] for b in batches)
        seqs = sum(b["num_sequences"] for b in batches)
        # the clock cancels in these ratios; rank 0 x world size would give rank 0's ratios
        assert row["train/sequences_per_sec"] / row["train/tokens_per_sec"] == pytest.approx(
            seqs / real, rel=1e-9
        )
        assert row["train/padded_tokens_per_sec"] / row["train/tokens_per_sec"] == pytest.approx(
            padded / real, rel=1e-9
        )
