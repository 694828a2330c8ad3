"""Strategy presets: FSDP wraps whichever backbone the model config names; DDP trains as one process does.

FSDP itself needs a GPU (torch's FSDP refuses CPU-only machines), so here the preset is checked up to the
wrap policy it hands to FSDP; benchmarks/gpu_session.sh runs the FSDP fits on a GPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lightning_rank.module import RerankerModule
from lightning_rank.strategies import BackboneFSDPStrategy, backbone_block_classes

FSDP = str(REPO / "configs" / "strategy" / "fsdp.yaml")
DDP = str(REPO / "configs" / "strategy" / "ddp.yaml")
DEMO = str(REPO / "configs" / "demo.yaml")

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
def test_fsdp_preset_combines_with_paper_configs(config: str) -> None:
    run = cli("fit", "--config", str(REPO / "configs" / config), "--config", FSDP, "--print_config")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class_path: lightning_rank.strategies.BackboneFSDPStrategy" in run.stdout
    assert "sharding_strategy: FULL_SHARD" in run.stdout and "precision: bf16-mixed" in run.stdout
    assert "inference_mode: false" in run.stdout
    assert "validate_before_fit: false" in run.stdout


def test_fsdp_preset_builds_through_the_cli_and_selects_the_demo_blocks() -> None:
    from lightning_rank.trainer_cli import LightningRankCLI

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
    from lightning_rank.trainer_cli import LightningRankCLI

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


def _last_val(root: Path) -> dict[str, float]:
    (metrics,) = root.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/nDCG@10")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v and "@" in k}


def test_ddp_fit_on_two_processes_equals_one_process(tmp_path: Path) -> None:
    """The DDP preset on 2 CPU processes with half the per-process batch sees the same global batches as one
    process (queries are sharded from one seeded permutation, negatives seeded per query), so it ends at the
    same validation metrics and weights."""
    common = (
        "--config", DEMO, "--config", DDP, "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--trainer.max_steps", "40", "--validate_before_fit", "false",
        "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    results, weights = {}, {}
    for devices, batch in ((1, 8), (2, 4)):
        root = tmp_path / f"ddp{devices}"
        run = cli(
            "fit", *common, "--trainer.devices", str(devices), "--data.batch_size", str(batch),
            "--trainer.default_root_dir", str(root),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        results[devices] = _last_val(root)
        ckpt = torch.load(next(root.rglob("*.ckpt")), map_location="cpu", weights_only=True)
        weights[devices] = ckpt["state_dict"]
    assert set(results[1]) == {"val/nDCG@10", "val/RR@10", "val/R@100"}
    for name, value in results[1].items():
        assert abs(results[2][name] - value) <= 1e-4, (name, results)
    # Weights agree up to float summation order, which Adam's normalisation amplifies only in entries whose
    # gradient is ~0. head.bias is such a parameter throughout: group CE is invariant to a common shift of a
    # group's scores, so its gradient is rounding noise and its value never changes a ranking.
    for name, tensor in weights[1].items():
        if name != "head.bias":
            assert (weights[2][name] - tensor).norm() <= 1e-4 * tensor.norm(), name
