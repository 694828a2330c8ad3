"""RerankerModule: scoring, length buckets, export round trip."""

from __future__ import annotations

import pytest
import torch

from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.reranker.module import RerankerModule

TINY_BERT = {
    "tokenizer": "builtin:words",
    "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}
QUERIES = ["baba kavo", "zuzu", "dede fafa gigi", "baba"]
DOCS = ["kavo dede baba", "zuzu zuzu bebe kavo lilo momo", "fafa", "baba baba baba baba dede dede dede"]


@pytest.fixture(scope="module")
def bert() -> RerankerModule:
    torch.manual_seed(0)
    return RerankerModule(backbone="bert", backbone_args=TINY_BERT).eval()


def test_length_buckets_give_the_same_scores(bert):
    plain = PairCollator(bert.backbone.tokenizer, bert.backbone.template)
    bucketed = PairCollator(bert.backbone.tokenizer, bert.backbone.template, length_buckets=3)
    with torch.no_grad():
        a = bert(plain(QUERIES, DOCS))
        b = bert(bucketed(QUERIES, DOCS))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_score_batches_pairs_by_length_and_returns_them_in_the_order_given(bert):
    """``score`` sorts pairs by length to pad less: each score still belongs to its own pair."""
    alone = torch.cat([bert.score([q], [d]) for q, d in zip(QUERIES, DOCS, strict=True)])
    torch.testing.assert_close(bert.score(QUERIES, DOCS, batch_size=2), alone, atol=1e-5, rtol=0)
    assert bert.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="4 queries but 3 documents"):
        bert.score(QUERIES, DOCS[:3])


def test_export_round_trip_scores_equal_and_backbone_loads_with_automodel(bert, tmp_path):
    from transformers import AutoModel

    folder = bert.save_pretrained(tmp_path / "export")
    loaded = RerankerModule.from_pretrained(folder)
    torch.testing.assert_close(bert.score(QUERIES, DOCS), loaded.score(QUERIES, DOCS), atol=1e-6, rtol=0)
    assert type(AutoModel.from_pretrained(folder / "backbone")).__name__ == "BertModel"
    # Exporting again over an earlier export replaces it whole, when asked to.
    bert.save_pretrained(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "backbone",
        "head.safetensors",
        "reranker.json",
    ]


def test_from_pretrained_rejects_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a lightning-rank export"):
        RerankerModule.from_pretrained(tmp_path)


def test_unknown_measure_fails_at_construction():
    with pytest.raises(ValueError, match="nDCG@1O"):
        RerankerModule(backbone="bert", backbone_args=TINY_BERT, measures=["nDCG@1O"])


def test_unknown_backbone_argument_names_the_valid_ones():
    from lightning_rank.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['hiden_size'\].*valid arguments"):
        RerankerModule(backbone="bert", backbone_args={**TINY_BERT, "hiden_size": 3})


def test_pretrained_backbone_trains_with_dropout_on(tmp_path):
    """from_pretrained leaves transformers models in eval mode; a fresh module must be in train mode."""
    torch.manual_seed(0)
    source = RerankerModule(backbone="bert", backbone_args=TINY_BERT)
    source.backbone.save_pretrained(tmp_path / "bert")
    module = RerankerModule(backbone="bert", backbone_args={"pretrained": str(tmp_path / "bert")})
    assert all(m.training for m in module.modules())


def test_lora_trains_adapters_only_and_exports_merged_weights(tmp_path):
    from transformers import AutoModel

    from lightning_rank.reranker.lora import LoraSettings

    torch.manual_seed(0)
    module = RerankerModule(backbone="bert", backbone_args=TINY_BERT, lora=LoraSettings(r=4))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    for name, param in module.named_parameters():  # as if trained: non-zero adapter updates
        if "lora_B" in name:
            param.data.normal_(std=0.5)
    module.eval()
    expected = module.score(QUERIES, DOCS)
    folder = module.save_pretrained(tmp_path / "export")
    torch.testing.assert_close(
        RerankerModule.from_pretrained(folder).score(QUERIES, DOCS), expected, atol=1e-5, rtol=0
    )
    keys = AutoModel.from_pretrained(folder / "backbone").state_dict().keys()
    assert not any("lora_" in k or "base_layer" in k for k in keys)


def test_lora_refuses_mamba_layers_that_fused_kernels_read_directly():
    from lightning_rank.reranker.lora import LoraSettings

    args = {"tokenizer": "builtin:words", "config": {"d_model": 32, "n_layer": 1}}
    with pytest.raises(ValueError, match="ignored by the fused Mamba kernels"):
        RerankerModule(backbone="mamba1", backbone_args=args, lora=LoraSettings(target_modules=["out_proj"]))
    module = RerankerModule(backbone="mamba1", backbone_args=args, lora=LoraSettings())
    assert any("in_proj.lora_A" in n for n, _ in module.named_parameters())


def test_weight_decay_spares_biases_norms_and_mamba_ssm_parameters():
    """As mamba_ssm marks them: A_log, D and dt_bias are not decayed (A_log is a matrix in Mamba-1)."""
    module = RerankerModule(
        backbone="mamba1",
        backbone_args={"tokenizer": "builtin:words", "config": {"d_model": 32, "n_layer": 1}},
        weight_decay=0.1,
    )
    decay, no_decay = module.optimizer_param_groups()
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    layer = "backbone.backbone.layers.0"
    assert {f"{layer}.mixer.A_log", f"{layer}.mixer.D", f"{layer}.mixer.dt_proj.bias", "head.bias"} <= spared
    assert {f"{layer}.norm.weight", "backbone.backbone.norm_f.weight"} <= spared
    assert {f"{layer}.mixer.in_proj.weight", f"{layer}.mixer.out_proj.weight", "head.weight"} <= decayed
    assert decayed | spared == set(names.values())
    optimizer = module.default_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]  # fused on CUDA only


def test_lora_checkpoint_hyperparameters_load_with_weights_only(tmp_path):
    """A LoRA run must resume with torch.load(weights_only=True), torch's default: no pickled classes."""
    from lightning_rank.reranker.lora import LoraSettings

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    args = {"tokenizer": "builtin:words", "config": tiny}
    module = RerankerModule(backbone="bert", backbone_args=args, lora=LoraSettings(r=4))
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "hp.ckpt")
    hparams = torch.load(tmp_path / "hp.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["lora"]["r"] == 4
    again = RerankerModule(**hparams)
    assert any("lora_" in name for name, _ in again.named_parameters())
