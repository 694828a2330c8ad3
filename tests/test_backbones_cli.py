"""The six built-ins through the real paper configs: --print_config offline, 2 training steps with a tiny
random-init model swapped in by overrides, and padding invariance of the score."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO

from lightning_rank.cli import main
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.reranker.module import RerankerModule

HF_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY = {
    "mamba1": {"config": {"d_model": 32, "n_layer": 2}},
    "mamba2": {"config": {"d_model": 32, "n_layer": 2, "headdim": 16, "d_state": 16, "chunk_size": 8}},
    "bert": {"config": HF_TINY},
    "roberta": {"config": HF_TINY},
    "pythia": {"config": {**HF_TINY, "num_attention_heads": 4}},
    "llama": {"config": {**HF_TINY, "num_key_value_heads": 2}},
}
CONFIGS = {
    "mamba1": "mamba1_130m",
    "mamba2": "mamba2_130m",
    "bert": "bert_base",
    "roberta": "roberta_base",
    "pythia": "pythia_160m",
    "llama": "llama_1b",
}


def tiny_args(name: str) -> dict:
    return {"pretrained": None, "tokenizer": "builtin:words", **TINY[name]}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_paper_config_prints_offline(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(REPO / "configs" / f"{CONFIGS[name]}.yaml"), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert f"backbone: {name}" in printed and "group_size: 8" in printed and "lr: 2.0e-05" in printed
    assert "precision: bf16-mixed" in printed


@pytest.mark.parametrize("name", list(CONFIGS))
def test_paper_config_trains_two_steps_with_a_tiny_model(name, tmp_path):
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / f"{CONFIGS[name]}.yaml"),
            "--model.backbone_args",
            json.dumps(tiny_args(name)),
            "--data.train_dataset",
            "lightning-rank/demo/train",
            "--data.val_datasets",
            '["lightning-rank/demo/dev"]',
            "--data.num_workers",
            "0",
            "--data.max_length",
            "48",
            "--data.batch_size",
            "2",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.val_check_interval",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_score_does_not_depend_on_the_rest_of_the_batch(name):
    torch.manual_seed(0)
    module = RerankerModule(backbone=name, backbone_args=tiny_args(name)).eval()
    collate = PairCollator(module.backbone.tokenizer, module.backbone.template, max_length=64)
    query, doc = "baba kavo", "kavo dede"
    longer = [("zuzu lilo momo", "dede " * 30), ("fafa", "baba " * 12 + "kavo")]
    with torch.no_grad():
        alone = module(collate([query], [doc]))
        batch = collate([query] + [q for q, _ in longer], [doc] + [d for _, d in longer])
        assert batch["input_ids"].shape[1] > int(batch["attention_mask"][0].sum())  # really padded
        together = module(batch)
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=0)
