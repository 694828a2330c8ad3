"""Existing rerankers as starting points: a sequence-classification checkpoint's classifier becomes the head,
and the reranker scores as transformers' own AutoModelForSequenceClassification does (zero-shot, through the
CLI, after an export, and at the first fine-tuning step)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import DOCUMENTS, NO_DROPOUT, QUERIES, TINY, words
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.cli import main
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.datamodule import RerankDataModule
from lightning_rank.errors import ConfigError
from lightning_rank.losses import GroupCrossEntropy
from lightning_rank.metrics import evaluate_run
from lightning_rank.reranker.module import RerankerModule

# our backbone name -> transformers model type and its tiny config
FAMILIES = {
    "bert": ("bert", NO_DROPOUT["bert"]),
    "roberta": ("roberta", {**NO_DROPOUT["roberta"], "type_vocab_size": 1}),
    "llama": ("llama", NO_DROPOUT["llama"]),
    "pythia": ("gpt_neox", NO_DROPOUT["pythia"]),
}


def checkpoint(folder: Path, family: str, num_labels: int, seed: int = 0, **config) -> PreTrainedModel:
    """A tiny random ``*ForSequenceClassification`` with a BERT-style word tokenizer (pair format, pad 0),
    saved to ``folder`` as transformers writes one; its weights are widened so that scores spread out."""
    tokenizer = load_tokenizer("builtin:words")
    tokenizer.save_pretrained(folder)
    model_type, settings = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        model_type, **TINY, **settings, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels, classifier_dropout=0.0, **config,
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(cfg)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return model.eval()


def transformers_scores(model: PreTrainedModel, batch: dict[str, Tensor]) -> Tensor:
    """The relevance score transformers' model gives each row: its logit, or logit[1] - logit[0]."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if model.config.model_type == "bert":
        inputs["token_type_ids"] = batch["token_type_ids"]
    logits = model(**inputs).logits
    return logits[:, 0] if logits.size(1) == 1 else logits[:, 1] - logits[:, 0]


def our_batch(module: RerankerModule, queries: list[str], documents: list[str]) -> dict[str, Tensor]:
    return PairCollator(module.backbone.tokenizer, module.backbone.template)(queries, documents)


def exact(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("family", "num_labels"),
    [("bert", 1), ("bert", 2), ("roberta", 1), ("roberta", 2), ("llama", 2), ("pythia", 1)],
)
def test_scores_are_transformers_scores_and_survive_an_export(tmp_path, caplog, family, num_labels):
    model = checkpoint(tmp_path / "ckpt", family, num_labels)
    with caplog.at_level(logging.INFO):
        module = RerankerModule(backbone=family, backbone_args={"pretrained": str(tmp_path / "ckpt")}).eval()
    assert f"head: the classifier of {tmp_path / 'ckpt'}" in caplog.text
    batch = our_batch(module, QUERIES, DOCUMENTS)
    with torch.no_grad():
        expected = transformers_scores(model, batch)
    assert expected.std() > 0.1  # the pairs are told apart: an equality of near-constants would prove little
    scores = module.score(QUERIES, DOCUMENTS)
    exact(scores, expected)
    if family == "bert":  # the tokenizer's own pair encoding is the one the reranker renders
        own = AutoTokenizer.from_pretrained(tmp_path / "ckpt")(
            QUERIES, DOCUMENTS, padding=True, return_token_type_ids=True, return_tensors="pt"
        )
        assert torch.equal(own["input_ids"], batch["input_ids"])
        with torch.no_grad():
            exact(scores, transformers_scores(model, own))
    module.save_pretrained(tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "reranker.json").read_text())
    assert manifest["head"]["num_labels"] == num_labels
    exact(RerankerModule.from_pretrained(tmp_path / "export").score(QUERIES, DOCUMENTS), expected)


def test_a_fresh_head_is_asked_for_and_logged(tmp_path, caplog):
    checkpoint(tmp_path, "bert", 3)
    args = {"backbone": "bert", "backbone_args": {"pretrained": str(tmp_path)}}
    with pytest.raises(
        ConfigError, match=r"BertForSequenceClassification, 3 labels.*3 labels do not map.*fresh"
    ):
        RerankerModule(**args)
    with caplog.at_level(logging.INFO):
        module = RerankerModule(**args, init_head="fresh")
    assert isinstance(module.head, nn.Linear) and module.head.out_features == 1
    assert "head: a new Linear, as model.init_head is 'fresh'; not the classifier of" in caplog.text


@pytest.mark.parametrize(
    ("family", "num_labels", "config", "args", "message"),
    [
        ("bert", 2, {"problem_type": "multi_label_classification"}, {}, "problem_type 'multi_label_class"),
        ("bert", 1, {}, {"pooling": "mean"}, "reads the 'first' state, not 'mean'"),
        ("llama", 1, {}, {"pooling": "first"}, "reads the 'last' state, not 'first'"),
    ],
)
def test_a_classifier_that_does_not_map_is_refused_with_the_reason(
    tmp_path, family, num_labels, config, args, message
):
    checkpoint(tmp_path, family, num_labels, **config)
    with pytest.raises(ConfigError, match=message):
        RerankerModule(backbone=family, backbone_args={"pretrained": str(tmp_path), **args})


def test_an_unmapped_architecture_and_a_missing_classifier_are_refused(tmp_path):
    tokenizer = load_tokenizer("builtin:words")
    cfg = AutoConfig.for_model("electra", **TINY, embedding_size=32, vocab_size=len(tokenizer))
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "electra")
    tokenizer.save_pretrained(tmp_path / "electra")
    with pytest.raises(ConfigError, match=r"not ElectraForSequenceClassification.*init_head: fresh"):
        RerankerModule(backbone="bert", backbone_args={"pretrained": str(tmp_path / "electra")})
    bare = tmp_path / "bare"
    checkpoint(bare, "bert", 1)
    AutoModelForSequenceClassification.from_pretrained(bare).base_model.save_pretrained(bare)
    with pytest.raises(ConfigError, match="init_head is 'pretrained' but BertBackbone loaded no sequence"):
        RerankerModule(backbone="bert", backbone_args={"pretrained": str(bare)}, init_head="pretrained")
    assert isinstance(
        RerankerModule(backbone="bert", backbone_args={"pretrained": str(bare)}).head, nn.Linear
    )


# -- through the CLI -----------------------------------------------------------------------------------------
def collection(root: Path) -> dict:
    """Ten documents and six queries of vocabulary words, one relevant document each, four candidates."""
    root.mkdir()
    docs = {f"p{d}": words(40 * d, 4 + d % 5) for d in range(10)}
    queries = {str(q): words(13 * q, 2 + q % 3) for q in range(6)}
    (root / "docs.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in docs.items()))
    (root / "queries.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in queries.items()))
    (root / "qrels.txt").write_text("".join(f"{q} 0 p{(int(q) + 1) % 10} 1\n" for q in queries))
    run = {q: [f"p{(int(q) + k) % 10}" for k in range(4)] for q in queries}
    lines = [f"{q} Q0 {d} {k + 1} {9 - k} bm25\n" for q, ds in run.items() for k, d in enumerate(ds)]
    (root / "run.trec").write_text("".join(lines))
    files = {"docs": str(root / "docs.tsv"), "queries": str(root / "queries.tsv"),
             "qrels": {"dev": str(root / "qrels.txt")}, "runs": {"dev": str(root / "run.trec")}}  # fmt: skip
    return {"files": files, "docs": docs, "queries": queries, "run": run}


def test_validate_and_predict_give_transformers_metrics_and_scores(tmp_path):
    model = checkpoint(tmp_path / "ckpt", "bert", 2)
    data = collection(tmp_path / "data")
    backbone_args = json.dumps({"pretrained": str(tmp_path / "ckpt")})
    common = [
        "--model.backbone", "bert", "--model.backbone_args", backbone_args,
        "--model.measures", '["nDCG@10", "RR@10"]', "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.local_collections", json.dumps({"mini": data["files"]}), "--data.rerank_depth", "4",
        "--data.max_length", "64", "--data.max_query_length", "16",
    ]  # fmt: skip
    main(["validate", *common, "--data.val_dataset", "mini/dev"])
    main(
        [
            "predict",
            *common,
            "--data.predict_dataset",
            "mini/dev",
            "--run_writer.output",
            str(tmp_path / "p.trec"),
        ]
    )
    pairs = [(q, d) for q, ds in data["run"].items() for d in ds]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    texts = ([data["queries"][q] for q, _ in pairs], [data["docs"][d] for _, d in pairs])
    with torch.no_grad():
        expected = transformers_scores(
            model, tokenizer(*texts, padding=True, return_token_type_ids=True, return_tensors="pt")
        ).tolist()
    run: dict[str, dict[str, float]] = {}
    for (q, d), score in zip(pairs, expected, strict=True):
        run.setdefault(q, {})[d] = score
    predicted = {}
    for line in (tmp_path / "p.trec").read_text().splitlines():
        q, _, d, _, score, _ = line.split()
        predicted[(q, d)] = float(score)
    assert predicted.keys() == set(pairs)
    exact(torch.tensor([predicted[p] for p in pairs]), torch.tensor(expected))
    qrels = {q: {f"p{(int(q) + 1) % 10}": 1} for q in data["queries"]}
    want = evaluate_run(run, qrels, ["nDCG@10", "RR@10"])
    (metrics,) = (tmp_path / "runs").rglob("metrics.csv")
    rows = [line.split(",") for line in metrics.read_text().splitlines()]
    got = {name: float(value) for name, value in zip(rows[0], rows[-1], strict=True) if value}
    assert want["RR@10"] < 1  # the classifier reorders the candidates: metrics that could differ
    assert got["val/nDCG@10"] == pytest.approx(want["nDCG@10"], abs=1e-6)
    assert got["val/RR@10"] == pytest.approx(want["RR@10"], abs=1e-6)


# -- fine-tuning ---------------------------------------------------------------------------------------------
class FirstStep(pl.Callback):
    """Keeps the first training batch and the loss the step computed on it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.batch = {k: v.clone() for k, v in batch.items() if isinstance(v, Tensor)}
            self.loss = outputs["loss"].detach().clone()


def test_fine_tuning_starts_from_the_classifier(tmp_path):
    model = checkpoint(tmp_path / "ckpt", "bert", 2)
    module = RerankerModule(backbone="bert", backbone_args={"pretrained": str(tmp_path / "ckpt")}, lr=1e-3)
    before = {k: v.clone() for k, v in module.head.state_dict().items()}
    first = FirstStep()
    data = RerankDataModule(
        train_dataset="lightning-rank/demo/train",
        group_size=4,
        batch_size=2,
        max_length=48,
        max_query_length=12,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=3, callbacks=[first], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    labels = first.batch["labels"]
    model.train()  # dropout is 0: training mode computes what eval mode does
    expected = GroupCrossEntropy()(transformers_scores(model, first.batch).view_as(labels), labels)
    exact(first.loss, expected.detach())
    assert any(not torch.equal(v, module.head.state_dict()[k]) for k, v in before.items())  # and it trains


def test_a_checkpoint_from_before_init_head_keeps_its_linear_head(tmp_path):
    """Such a fit started from a classifier checkpoint with a new Linear head; its hparams lack init_head."""
    checkpoint(tmp_path / "ckpt", "bert", 2)
    args = {"backbone": "bert", "backbone_args": {"pretrained": str(tmp_path / "ckpt")}}
    module = RerankerModule(**args, init_head="fresh")
    with torch.no_grad():
        module.head.weight.fill_(0.5)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    saved = torch.load(tmp_path / "old.ckpt", weights_only=True)
    del saved["hyper_parameters"]["init_head"]
    torch.save(saved, tmp_path / "old.ckpt")
    loaded = RerankerModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert isinstance(loaded.head, nn.Linear) and bool((loaded.head.weight == 0.5).all())


def test_a_checkpoints_head_choice_cannot_be_changed_under_it():
    """A checkpoint trained on a classifier head cannot be read with a fresh Linear one (or the reverse): one
    error naming the setting, not torch's strict-load traceback."""
    from lightning_rank.errors import ConfigError
    from lightning_rank.reranker.checkpoints import settle_model_settings

    saved = {"backbone": "bert", "backbone_args": {}, "init_head": "pretrained"}
    with pytest.raises(ConfigError, match=r"model.init_head: checkpoint 'pretrained' -> yours 'fresh'"):
        settle_model_settings(saved, {"init_head": "fresh"}, "test", "x.ckpt")
    settings, _ = settle_model_settings(
        {"backbone": "bert", "backbone_args": {}}, {"init_head": "auto"}, "test", "x"
    )
    assert settings["init_head"] == "auto"  # a checkpoint from before the setting: nothing to compare


@pytest.mark.parametrize(("family", "num_labels"), [("bert", 2), ("roberta", 1), ("pythia", 1), ("llama", 2)])
def test_a_checkpoints_classifier_exports_to_transformers_and_cross_encoder_with_its_scores(
    tmp_path, family, num_labels
):
    checkpoint(tmp_path / "ckpt", family, num_labels)
    module = RerankerModule(backbone=family, backbone_args={"pretrained": str(tmp_path / "ckpt")}).eval()
    ours = module.score(QUERIES, DOCUMENTS)
    module.save_pretrained(tmp_path / "hf", format="hf")
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert exported.config.num_labels == 1  # two labels became their difference: the logit is the score
    with torch.no_grad():
        exact(transformers_scores(exported, our_batch(module, QUERIES, DOCUMENTS)), ours)
    if family in ("bert", "roberta"):
        from sentence_transformers import CrossEncoder

        module.save_pretrained(tmp_path / "st", format="sentence-transformers")
        predicted = CrossEncoder(str(tmp_path / "st")).predict(list(zip(QUERIES, DOCUMENTS, strict=True)))
        exact(torch.as_tensor(predicted), ours)
