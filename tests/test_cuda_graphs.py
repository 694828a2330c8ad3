"""model.cuda_graphs: graphed training steps equal eager ones; clear errors where graphs cannot run.

The graph bookkeeping (one graph per shape and occurrence, gradients allocated before the first backward,
the limit) is checked on any machine with the capture replaced by the eager function; the captures
themselves need a GPU (benchmarks/gpu_session.sh runs these tests there).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import DEMO, cli

from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.errors import CudaGraphError
from lightning_rank.reranker.cuda_graphs import TrainingGraphs, check_cuda_graphs
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.templates import EncodedPair

CUDA = torch.cuda.is_available()
TINY = {
    "mamba1": {"config": {"d_model": 64, "n_layer": 2}},
    "mamba2": {"config": {"d_model": 64, "n_layer": 2, "headdim": 16, "d_state": 16, "chunk_size": 16}},
    "bert": {"config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 128,
                        # a replay draws other dropout masks than eager code: compare without dropout
                        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
    "pythia": {"config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 128}},
}  # fmt: skip


# ------------------------------------------------------------------------------------ any machine


@pytest.mark.slow
def test_cuda_graphs_on_cpu_fail_before_training_with_the_fix(tmp_path: Path) -> None:
    result = cli(
        "fit", "--config", DEMO, "--model.cuda_graphs", "true", "--trainer.max_steps", "2",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        "model.cuda_graphs needs a CUDA device" in result.stderr
        and "--trainer.accelerator gpu" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("fsdp", ["fsdp1", "fsdp2"])
def test_fsdp_is_refused(fsdp: str) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_rank.strategies import BackboneFSDP2Strategy

    strategy = FSDPStrategy() if fsdp == "fsdp1" else BackboneFSDP2Strategy()
    with pytest.raises(CudaGraphError, match="FSDP"):
        check_cuda_graphs(torch.device("cuda", 0), strategy)


class _Recording(TrainingGraphs):
    """TrainingGraphs with the capture replaced by the eager function, recording what it captured."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.captured: list[tuple[tuple[int, ...], int]] = []

    def _capture(self, tensors: tuple[torch.Tensor, ...]):
        shape = tuple(tensors[0].shape)
        self.captured.append((shape, sum(1 for s, _ in self.captured if s == shape)))
        return self.score


def test_one_graph_per_shape_and_occurrence_within_a_step() -> None:
    """Two buckets of one shape in a step need two graphs (a replay overwrites the saved activations the
    first bucket's backward still needs); the next step replays them instead of capturing again."""
    model = torch.nn.Linear(4, 1)
    graphs = _Recording(model, lambda x: model(x.float()).squeeze(-1), limit=8)
    a, b = torch.zeros(3, 4), torch.zeros(5, 4)
    for _ in range(3):
        graphs.start_step()
        for x in (a, b, a):
            graphs(x)
    assert graphs.captured == [((3, 4), 0), ((5, 4), 0), ((3, 4), 1)]
    assert len(graphs) == 3


def test_gradients_exist_before_the_first_backward() -> None:
    """A graph's backward writes into static buffers; a missing .grad would adopt such a buffer, and the
    next replay would then overwrite the accumulated gradient."""
    model = torch.nn.Linear(4, 1)
    model.bias.requires_grad_(False)
    graphs = TrainingGraphs(model, lambda x: model(x))
    graphs.start_step()
    assert torch.equal(model.weight.grad, torch.zeros(1, 4))
    assert model.bias.grad is None


def test_over_the_limit_new_shapes_run_eagerly_with_one_warning() -> None:
    model = torch.nn.Linear(4, 1)
    graphs = _Recording(model, lambda x: model(x).squeeze(-1), limit=2)
    graphs.start_step()
    graphs(torch.zeros(1, 4))
    graphs(torch.zeros(2, 4))
    with pytest.warns(UserWarning, match="2 graphs captured.*pad_to_multiple_of"):
        out = graphs(torch.ones(3, 4))
    assert out.shape == (3,) and len(graphs) == 2


def test_graphed_models_zero_gradients_in_place() -> None:
    module = RerankerModule(backbone="mamba1", backbone_args={"tokenizer": "builtin:words", **TINY["mamba1"]},
                            cuda_graphs=True)  # fmt: skip
    optimizer = module.default_optimizer()
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    grads = [p.grad for p in module.parameters()]
    module.optimizer_zero_grad(0, 0, optimizer)
    assert all(p.grad is g and not g.any() for p, g in zip(module.parameters(), grads, strict=True))


# ------------------------------------------------------------------------------------ GPU


def _batches(module: RerankerModule, n: int, sequences: int = 32, buckets: int = 2) -> list[dict[str, Any]]:
    """Length-bucketed batches padded to multiples of 16: a few shapes, some twice within a batch."""
    collator = PairCollator(
        module.backbone.tokenizer, module.backbone.template, max_length=96, pad_to_multiple_of=16,
        length_buckets=buckets,
    )  # fmt: skip
    vocab = len(module.backbone.tokenizer)
    rng = random.Random(0)
    out = []
    for _ in range(n):
        pairs = []
        for _ in range(sequences):
            length = rng.randint(8, 40) if rng.random() < 0.8 else rng.randint(41, 96)
            ids = [rng.randrange(5, vocab) for _ in range(length)]
            types = [0] * 4 + [1] * (length - 4) if collator.template.is_pair else None
            pairs.append(EncodedPair(input_ids=ids, token_type_ids=types))
        batch = collator.collate(pairs)
        labels = torch.zeros(sequences // 8, 8)
        labels[:, 0] = 1.0
        batch["labels"] = labels
        out.append(batch)
    return out


def _to(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to(v, device) for v in batch]
    return batch


def _train(name: str, graphs: bool, bf16: bool = False, steps: int = 4, accumulate: int = 2):
    torch.manual_seed(0)
    args = {"tokenizer": "builtin:words", **TINY[name]}
    module = RerankerModule(backbone=name, backbone_args=args, lr=1e-3, cuda_graphs=graphs).cuda().train()
    optimizer = module.default_optimizer()
    batches = _batches(module, accumulate * 2)
    losses = []
    for step in range(steps * accumulate):
        batch = _to(batches[step % len(batches)], "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            scores = module(batch).view_as(batch["labels"])
            loss = module.loss(scores, batch["labels"]) / accumulate
        loss.backward()
        losses.append(loss.item())
        if (step + 1) % accumulate == 0:
            optimizer.step()
            module.optimizer_zero_grad(0, step, optimizer)
    return module, losses


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", list(TINY))
def test_graphed_training_equals_eager_training(name: str) -> None:
    """Buckets with repeated shapes and gradient accumulation: after 4 optimizer steps the weights differ
    from the eager run's by no more than two eager runs differ from each other (mamba_ssm's backward and
    the embedding gradient add atomically, so kernel runs are not bit-identical), and graphs were captured
    (not silently skipped). head.bias is left out: group CE is shift-invariant, so its gradient is pure
    rounding noise that Adam scales up to full steps."""
    eager, eager_losses = _train(name, graphs=False)
    again, _ = _train(name, graphs=False)
    graphed, graphed_losses = _train(name, graphs=True)
    assert graphed._graphs is not None and len(graphed._graphs) >= 3
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-3, abs=1e-5)
    reference, rerun, got = eager.state_dict(), again.state_dict(), graphed.state_dict()
    for key, value in reference.items():
        if key == "head.bias":
            continue
        noise = (rerun[key] - value).abs().max().item()
        error = (got[key] - value).abs().max().item()
        assert error <= 4 * noise + 1e-5 * (1 + value.abs().max().item()), (key, error, noise)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_graphed_training_under_bf16_autocast_tracks_eager(name: str) -> None:
    _, eager_losses = _train(name, graphs=False, bf16=True)
    _, graphed_losses = _train(name, graphs=True, bf16=True)
    assert graphed_losses == pytest.approx(eager_losses, rel=2e-2, abs=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_cli_fit_with_cuda_graphs_matches_eager_fit(tmp_path: Path) -> None:
    common = [
        "fit", "--config", DEMO, "--trainer.accelerator", "gpu", "--trainer.max_steps", "150",
        "--trainer.enable_progress_bar", "false", "--data.length_buckets", "2", "--data.pad_to_multiple_of",
        "16", "--trainer.accumulate_grad_batches", "2", "--validate_before_fit", "false",
    ]  # fmt: skip
    metrics = {}
    for graphs in ("false", "true"):
        out = tmp_path / graphs
        result = cli(*common, "--model.cuda_graphs", graphs, "--trainer.default_root_dir", str(out),
                     "--metrics_file", str(out / "metrics.json"))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[graphs] = json.loads((out / "metrics.json").read_text())
    assert metrics["true"] == pytest.approx(metrics["false"], abs=0.02)
    assert metrics["true"]["val/nDCG@10"] > 0.35  # trained beyond chance (0.24)
