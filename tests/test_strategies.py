"""Strategy presets: FSDP wraps whichever backbone the model config names; DDP and FSDP2 train as one
process does.

FSDP1 itself needs a GPU (torch's FSDP refuses CPU-only machines), so here its preset is checked up to the
wrap policy it hands to FSDP; benchmarks/gpu_session.sh runs the FSDP fits on a GPU. FSDP2 runs on CPUs
(gloo): its preset trains here on 2 processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import DEMO, REPO, cli, last_val_metrics
from lightning.pytorch import seed_everything
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lightning_rank.reranker.module import RerankerModule
from lightning_rank.strategies import BackboneFSDPStrategy, backbone_block_classes

FSDP = str(REPO / "configs" / "strategy" / "fsdp.yaml")
FSDP2 = str(REPO / "configs" / "strategy" / "fsdp2.yaml")
DDP = str(REPO / "configs" / "strategy" / "ddp.yaml")

TINY_ARGS = {
    "mamba1": {"config": {"d_model": 32, "n_layer": 2}},
    "mamba2": {"config": {"d_model": 32, "n_layer": 2, "headdim": 16, "d_state": 16, "chunk_size": 8}},
    "bert": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 64}},
    "roberta": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 64}},
    "pythia": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 64}},
    "llama": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "intermediate_size": 64}},
    "gru": {"hidden_size": 16},
}  # fmt: skip
EXPECTED_BLOCK = {
    "mamba1": "MambaBlock", "mamba2": "MambaBlock", "bert": "BertLayer", "roberta": "RobertaLayer",
    "pythia": "GPTNeoXLayer", "llama": "LlamaDecoderLayer", "gru": "GRULayer",
}  # fmt: skip


def tiny(name: str) -> RerankerModule:
    return RerankerModule(backbone=name, backbone_args={"tokenizer": "builtin:words", **TINY_ARGS[name]})


@pytest.mark.parametrize("name", list(TINY_ARGS))
def test_policy_wraps_each_backbone_block_and_nothing_else(name: str) -> None:
    module = tiny(name)
    strategy = BackboneFSDPStrategy(activation_checkpointing=True)
    classes = strategy.apply_backbone_policy(module)
    assert [c.__name__ for c in classes] == [EXPECTED_BLOCK[name]]
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == set(classes)
    blocks = [m for m in module.modules() if isinstance(m, classes)]
    assert len(blocks) >= 1
    check = strategy._activation_checkpointing_kwargs["check_fn"]
    assert all(check(b) for b in blocks)
    assert not check(module) and not check(module.head) and not check(module.backbone)


def test_without_activation_checkpointing_nothing_is_recomputed() -> None:
    strategy = BackboneFSDPStrategy()
    strategy.apply_backbone_policy(tiny("bert"))
    assert strategy._activation_checkpointing_kwargs == {}


def test_a_module_without_backbone_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"lightning-rank `backbone`.*explicit auto_wrap_policy"):
        backbone_block_classes(nn.Linear(2, 2))


def test_an_already_wrapped_model_keeps_its_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate-before-fit, fit and validate-after-fit each set the model up: the second time its blocks are
    FSDP units, and the policy must not look for the backbone's layer classes again."""
    from lightning.pytorch.strategies import FSDPStrategy

    module = tiny("pythia")
    unit = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    nn.Module.__init__(unit)
    module.backbone.model.layers[0] = unit  # as FSDP's auto-wrap leaves it
    monkeypatch.setattr(FSDPStrategy, "_setup_model", lambda self, model: model)
    strategy = BackboneFSDPStrategy()
    assert strategy._setup_model(module) is module
    assert "auto_wrap_policy" not in strategy.kwargs


@pytest.mark.parametrize("config", ["mamba2_130m.yaml", "llama_1b.yaml"])
@pytest.mark.slow
def test_fsdp_preset_combines_with_paper_configs(config: str) -> None:
    run = cli("fit", "--config", str(REPO / "configs" / config), "--config", FSDP, "--print_config")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class_path: lightning_rank.strategies.BackboneFSDPStrategy" in run.stdout
    assert "sharding_strategy: FULL_SHARD" in run.stdout and "precision: bf16-mixed" in run.stdout
    assert "inference_mode: false" in run.stdout
    assert "validate_before_fit: false" in run.stdout


def test_fsdp_preset_builds_through_the_cli_and_selects_the_demo_blocks() -> None:
    from lightning_rank.cli.trainer import LightningRankCLI

    built = LightningRankCLI(
        args=["--config", DEMO, "--config", FSDP, "--trainer.accelerator", "cpu", "--trainer.devices", "1"],
        run=False,
    )
    strategy = built.trainer.strategy
    assert isinstance(strategy, BackboneFSDPStrategy) and strategy.sharding_strategy.name == "FULL_SHARD"
    assert [c.__name__ for c in strategy.apply_backbone_policy(built.model)] == ["MambaBlock"]


def test_validation_before_fit_is_skipped_under_fsdp_with_a_warning() -> None:
    """validate() then fit() would set the FSDP model up twice, and its first checkpoint would fail (seen on
    an H100): the CLI skips the pre-fit validation and says how to get those figures."""
    from lightning_rank.cli.trainer import LightningRankCLI

    built = LightningRankCLI(
        args=["--config", DEMO, "--config", FSDP, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
              "--validate_before_fit", "true"],
        run=False,
    )  # fmt: skip
    built.subcommand = "fit"
    built.config = {"fit": built.config}
    with pytest.warns(
        UserWarning, match="validate_before_fit is skipped under FSDP.*lightning-rank validate"
    ):
        built.before_fit()  # would run trainer.validate, which FSDP refuses on a CPU


CPU_FLAGS = (
    "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
    "--validate_before_fit", "false", "--trainer.enable_progress_bar", "false",
)  # fmt: skip


def _fit(root: Path, *args: str, strategy: str | None = None, devices: int = 1, steps: int = 40) -> Path:
    """Fit the demo with the global batch of 8 split over ``devices`` processes; returns last.ckpt."""
    preset = ("--config", strategy) if strategy else ()  # before the flags, which override its GPU settings
    run = cli(
        "fit", "--config", DEMO, *preset, *CPU_FLAGS,
        "--trainer.devices", str(devices), "--data.batch_size", str(8 // devices),
        "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(root), *args,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    # the validation metrics are gathered on every rank already: no advice to reduce them again
    assert "sync_dist=True" not in run.stderr, run.stderr[-3000:]
    return root / "checkpoints" / "last.ckpt"


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_training(
    one: Path, other: Path, what: str, shift_only: tuple[str, ...] = ("head.bias",)
) -> None:
    """Same validation metrics (within 1e-4) and weights (up to float summation order) as one process."""
    expected, got = last_val_metrics(one.parent.parent), last_val_metrics(other.parent.parent)
    assert set(expected) == {"val/nDCG@10", "val/RR@10", "val/R@100"}
    for name, value in expected.items():
        assert abs(got[name] - value) <= 1e-4, (what, name, expected, got)
    # Adam's normalisation amplifies summation-order noise only in entries whose gradient is ~0. head.bias is
    # such a parameter throughout (`shift_only`): group CE is invariant to a common shift of a group's scores,
    # so its gradient is rounding noise and its value never changes a ranking.
    single, multi = _weights(one), _weights(other)
    assert set(single) == set(multi), what  # the same names: checkpoints are interchangeable
    for name, tensor in single.items():
        if name not in shift_only:
            # relative, plus 1e-5 per entry for parameters that start at zero (norm biases)
            bound = 1e-4 * tensor.norm() + 1e-5 * tensor.numel() ** 0.5
            assert (multi[name] - tensor).norm() <= bound, (what, name)


@pytest.mark.slow
def test_ddp_and_fsdp2_on_two_processes_train_as_one_process(tmp_path: Path) -> None:
    """The DDP and FSDP2 presets on 2 CPU processes with half the per-process batch see the same global
    batches as one process (queries are sharded from one seeded permutation, negatives seeded per query), so
    they end at the same validation metrics and weights. FSDP2 replaces every parameter by a shard: Mamba's
    A_log, D and dt_bias must still be exempt from weight decay (they were not, before)."""
    single = _fit(tmp_path / "one")
    _assert_same_training(single, _fit(tmp_path / "ddp", strategy=DDP, devices=2), "ddp")
    _assert_same_training(single, _fit(tmp_path / "fsdp2", strategy=FSDP2, devices=2), "fsdp2")


@pytest.mark.slow
def test_fsdp2_resumes_a_single_process_checkpoint_and_back(tmp_path: Path) -> None:
    """A checkpoint moves between one process and FSDP2 on two with its optimizer state: Lightning's own
    loader numbered the moments in model order and resumed a single-process checkpoint with them swapped
    between parameters (a shape error at best)."""
    start = _fit(tmp_path / "start", steps=30)
    single = _fit(tmp_path / "one", "--ckpt_path", str(start), steps=45)
    sharded = _fit(tmp_path / "fsdp2", "--ckpt_path", str(start), strategy=FSDP2, devices=2, steps=45)
    _assert_same_training(single, sharded, "single -> fsdp2")
    back = _fit(tmp_path / "back", "--ckpt_path", str(sharded), steps=55)
    onward = _fit(tmp_path / "onward", "--ckpt_path", str(single), steps=55)
    _assert_same_training(onward, back, "fsdp2 -> single")


BERT = (
    "--model.backbone", "bert", "--model.backbone_args",
    '{"tokenizer": "builtin:words", "config": {"hidden_size": 32, "num_hidden_layers": 2, '
    '"num_attention_heads": 4, "intermediate_size": 64, "hidden_dropout_prob": 0.0, '
    '"attention_probs_dropout_prob": 0.0}}',  # dropout masks depend on the process count
)  # fmt: skip
#: The last LayerNorm's bias adds one vector to every token state, so (pooled, then the linear head) it too
#: only shifts all scores alike.
BERT_SHIFT_ONLY = ("head.bias", "backbone.model.encoder.layer.1.output.LayerNorm.bias")


@pytest.mark.slow
def test_fsdp2_trains_on_packed_rows_as_one_process_on_padded_ones(tmp_path: Path) -> None:
    """Packed batches enter the backbone by forward_packed, which FSDP2 must gather parameters for too
    (it failed with "mixed torch.Tensor and DTensor" before)."""
    single = _fit(tmp_path / "one", *BERT, steps=20)
    packed = _fit(tmp_path / "fsdp2", *BERT, "--data.packing", "true", strategy=FSDP2, devices=2, steps=20)
    _assert_same_training(single, packed, "fsdp2 + packing", BERT_SHIFT_ONLY)


@pytest.mark.slow
def test_fsdp2_with_frozen_parameters_and_activation_checkpointing(tmp_path: Path) -> None:
    """A BERT-family backbone with frozen word embeddings (as configs/beir_minilm.yaml) and recomputed blocks
    trains on 2 FSDP2 processes as on one: frozen and trainable parameters share a unit, recomputation
    changes nothing, and the frozen weights stay as they were."""
    bert = ("--model.frozen", '["*word_embeddings*"]', *BERT)
    single = _fit(tmp_path / "one", *bert, steps=20)
    sharded = _fit(
        tmp_path / "fsdp2", *bert, "--trainer.strategy.init_args.activation_checkpointing", "true",
        strategy=FSDP2, devices=2, steps=20,
    )  # fmt: skip
    _assert_same_training(single, sharded, "fsdp2 + frozen + activation checkpointing", BERT_SHIFT_ONLY)
    # the frozen embeddings are still as initialised (the CLI seeds, then builds the model)
    seed_everything(yaml.safe_load(Path(DEMO).read_text())["seed_everything"])
    initial = RerankerModule(backbone="bert", backbone_args=json.loads(bert[-1])).state_dict()
    trained = _weights(sharded)
    (frozen,) = [k for k in trained if "word_embeddings" in k]
    assert torch.equal(trained[frozen], initial[frozen])
    assert not torch.equal(
        trained[frozen.replace("word", "position")], initial[frozen.replace("word", "position")]
    )


@pytest.mark.slow
def test_fsdp2_preset_combines_with_paper_configs() -> None:
    run = cli(
        "fit", "--config", str(REPO / "configs" / "mamba2_130m.yaml"), "--config", FSDP2, "--print_config"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class_path: lightning_rank.strategies.BackboneFSDP2Strategy" in run.stdout
    assert "precision: bf16-mixed" in run.stdout and "reshard_after_forward: true" in run.stdout


def test_no_weight_decay_marks_survive_parameter_replacement() -> None:
    """FSDP swaps each parameter for a new one (its shard) without the backbone's `_no_weight_decay` mark,
    and FSDP1 flattens shards to 1-D: the groups are decided on the model as built."""
    module = tiny("mamba1")

    def groups() -> tuple[set[str], set[str]]:
        names = {id(p): n for n, p in module.named_parameters()}
        decay, no_decay = module.optimizer_param_groups()
        return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}

    decay, no_decay = groups()
    assert any(n.endswith("mixer.A_log") for n in no_decay) and any(n.endswith("mixer.D") for n in no_decay)
    assert any(n.endswith("in_proj.weight") for n in decay) and "head.weight" in decay
    for name, param in list(module.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner), leaf, nn.Parameter(param.detach().reshape(-1)))
    assert groups() == (decay, no_decay)
