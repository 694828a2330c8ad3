"""`lightning-rank export --format native | hf | sentence-transformers`: folders other tools load with our
scores, refusals where no exact map exists, safetensors only, a model card, hub ids and --push_to_hub."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from helpers import DEMO, DOCUMENTS, NO_DROPOUT, QUERIES, TINY, TINY_BERT, words

from lightning_rank.cli import main
from lightning_rank.errors import ConfigError, HubModelNotCachedError, UploadError
from lightning_rank.reranker.export import export_reranker, is_export
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.input_format import InputFormat

# one pair whose document is cut (only the document: the query fits max_query_length)
PAIRS_Q = [*QUERIES, words(3, 4)]
PAIRS_D = [*DOCUMENTS, words(500, 120)]
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def run_main(capsys, *args: str) -> SimpleNamespace:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def reranker(backbone: str, bias: float = 0.25, scale: float = 1.0, **args) -> RerankerModule:
    """A tiny random reranker with a non-trivial head, rendered as a short fit would have."""
    torch.manual_seed(0)
    config = {**TINY, **NO_DROPOUT.get(backbone, {}), **args.pop("config", {})}
    module = RerankerModule(
        backbone=backbone, backbone_args={"tokenizer": "builtin:words", "config": config, **args}
    ).eval()
    with torch.no_grad():
        module.head.weight.mul_(scale)
        module.head.bias.fill_(bias)
    module.input_format = InputFormat(max_length=48, max_query_length=12)
    return module


def excerpts(module: RerankerModule) -> RerankerModule:
    module.input_format = InputFormat(max_length=48, max_query_length=12, excerpt="query_biased")
    return module


def cross_encoder_scores(folder: Path) -> torch.Tensor:
    from sentence_transformers import CrossEncoder

    return torch.as_tensor(CrossEncoder(str(folder)).predict(list(zip(PAIRS_Q, PAIRS_D, strict=True))))


def classifier_scores(module: RerankerModule, folder: Path) -> torch.Tensor:
    """AutoModelForSequenceClassification on the pairs as the reranker renders them (its own collator)."""
    from transformers import AutoModelForSequenceClassification

    from lightning_rank.datamodules.collate import PairCollator

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    shape = module.input_format
    batch = PairCollator(
        module.backbone.tokenizer, module.backbone.template, shape.max_length, shape.max_query_length
    )(PAIRS_Q, PAIRS_D)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return model(**inputs).logits.squeeze(-1)


@pytest.fixture(scope="module")
def fitted_bert(tmp_path_factory) -> Path:
    """The checkpoint of a 3-step demo fit of a one-layer BERT (max_length 64, max_query_length 16)."""
    root = tmp_path_factory.mktemp("bert-fit")
    main([
        "fit", "--config", DEMO, "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false", "--validate_before_fit", "false",
        "--validate_after_fit", "false", "--model.backbone", "bert",
        "--model.backbone_args", json.dumps(TINY_BERT),
    ])  # fmt: skip
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt


@pytest.mark.slow  # a fit and three exports
def test_a_fitted_bert_exports_to_cross_encoder_and_transformers_with_its_scores(
    fitted_bert, tmp_path, capsys
):
    from huggingface_hub import ModelCard
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for fmt in ("native", "sentence-transformers", "hf"):
        done = run_main(capsys, "export", "--ckpt_path", str(fitted_bert), "--output", str(tmp_path / fmt),
                        "--format", fmt)  # fmt: skip
        assert done.returncode == 0, done.stderr
    ours = RerankerModule.from_pretrained(tmp_path / "native").score(PAIRS_Q, PAIRS_D)
    pairs = list(zip(PAIRS_Q, PAIRS_D, strict=True))
    encoder = CrossEncoder(str(tmp_path / "sentence-transformers"))
    torch.testing.assert_close(torch.as_tensor(encoder.predict(pairs)), ours, atol=1e-5, rtol=0)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tokenizer(PAIRS_Q, PAIRS_D, truncation="only_second", max_length=64, padding=True,
                      return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits.squeeze(-1), ours, atol=1e-5, rtol=0)
    for fmt, library in (("native", "lightning-rank"), ("sentence-transformers", "sentence-transformers"),
                         ("hf", "transformers")):  # fmt: skip
        assert not [path for pattern in PICKLES for path in (tmp_path / fmt).rglob(pattern)]
        card = ModelCard.load(tmp_path / fmt / "README.md").data
        assert card.pipeline_tag == "text-ranking" and card.library_name == library
        assert card.datasets == ["lightning-rank/demo/train"]
        assert card.lightning_rank["input_format"] == {"max_length": 64, "max_query_length": 16,
                                                       "excerpt": "first"}  # fmt: skip


def test_roberta_maps_exactly_even_with_a_large_head(tmp_path):
    """RoBERTa's dense+tanh+out_proj head carries a head 300x the usual size without leaving float32
    rounding: the tanh runs where it is the identity to below float32's resolution."""
    module = reranker("roberta", bias=-1.5, scale=300.0)
    export_reranker(module, tmp_path / "st", format="sentence-transformers")
    ours = module.score(PAIRS_Q, PAIRS_D)
    assert ours.abs().max() > 5  # the tanh would bend scores this large
    torch.testing.assert_close(cross_encoder_scores(tmp_path / "st"), ours, atol=1e-5, rtol=1e-6)


def test_gpt_neox_maps_onto_its_classifier_with_the_bias_in_the_final_norm(tmp_path):
    module = reranker("pythia", bias=0.75)
    export_reranker(module, tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["pad_token_id"] == module.backbone.tokenizer.pad_token_id
    assert config["lightning_rank"]["template"] == module.backbone.template.text
    torch.testing.assert_close(classifier_scores(module, tmp_path / "hf"), module.score(PAIRS_Q, PAIRS_D),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_llama_maps_only_without_a_head_bias(tmp_path):
    exact = reranker("llama", bias=0.0)
    export_reranker(exact, tmp_path / "hf", format="hf")
    torch.testing.assert_close(classifier_scores(exact, tmp_path / "hf"), exact.score(PAIRS_Q, PAIRS_D),
                               atol=1e-5, rtol=0)  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"score layer has no bias .* shifted by -0\.5 \(rankings unchanged\)"
    ):
        export_reranker(reranker("llama", bias=0.5), tmp_path / "biased", format="hf")
    assert not (tmp_path / "biased").exists()


@pytest.mark.parametrize("backbone", ["bert", "roberta"])
def test_a_mean_pooled_reranker_exports_as_a_cross_encoder_of_modules_with_its_scores(backbone, tmp_path):
    """No sequence classifier reads a mean of the tokens: the CrossEncoder is Transformer, Pooling(mean),
    Dense, and CrossEncoder(path) gives our scores; the hf format stays refused."""
    module = reranker(backbone, pooling="mean", bias=-0.5)
    export_reranker(module, tmp_path / "st", format="sentence-transformers")
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Dense"]
    pooling = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "mean"
    assert not [p for pattern in PICKLES for p in (tmp_path / "st").rglob(pattern)]
    assert "sentence-transformers 6" in (tmp_path / "st" / "README.md").read_text()
    torch.testing.assert_close(
        cross_encoder_scores(tmp_path / "st"), module.score(PAIRS_Q, PAIRS_D), atol=1e-5, rtol=0
    )
    with pytest.raises(ConfigError, match="it pools the 'mean' token"):
        export_reranker(module, tmp_path / "hf", format="hf")


def test_a_cross_encoder_that_scores_otherwise_is_caught_before_writing(tmp_path, monkeypatch):
    """The probe check reads CrossEncoder's own predictions: a map that is off (here a Pooling of the
    first token for a mean-pooled reranker) fails the export, and nothing is written."""
    from lightning_rank.reranker import cross_encoder_map

    monkeypatch.setitem(cross_encoder_map.POOLING_MODES, "mean", "cls")
    with pytest.raises(RuntimeError, match="CrossEncoder scores differ"):
        export_reranker(reranker("bert", pooling="mean"), tmp_path / "st", format="sentence-transformers")
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize(
    ("build", "fmt", "reason"),
    [
        (lambda: reranker("bert", pooling="mean"), "hf", "it pools the 'mean' token"),
        (lambda: reranker("bert", template="pair+score"), "sentence-transformers", "template 'pair\\+score'"),
        (lambda: reranker("pythia"), "sentence-transformers", "template 'document: {document}; query"),
        (lambda: excerpts(reranker("bert")), "sentence-transformers", "'query_biased' excerpts of long"),
    ],
    ids=["mean-pooling", "score-template", "text-template", "query-biased"],
)
def test_formats_that_cannot_hold_the_model_exactly_are_refused_and_write_nothing(
    build, fmt, reason, tmp_path
):
    target = tmp_path / "parent" / "export"
    with pytest.raises(ConfigError, match=reason):
        export_reranker(build(), target, format=fmt)
    assert not (tmp_path / "parent").exists()


def test_the_cli_refuses_with_the_reason_and_writes_nothing(trained, tmp_path, capsys):
    """The `trained` fixture is a Mamba reranker fitted on query-biased excerpts."""
    ckpt = str(trained[0])
    done = run_main(capsys, "export", "--ckpt_path", ckpt, "--output", str(tmp_path / "a" / "st"),
                    "--format", "sentence-transformers")  # fmt: skip
    assert done.returncode == 2 and "trained on template 'document: {document}" in done.stderr, done.stderr
    done = run_main(capsys, "export", "--ckpt_path", ckpt, "--output", str(tmp_path / "a" / "hf"),
                    "--format", "hf")  # fmt: skip
    assert done.returncode == 2 and "its backbone is not a transformers model" in done.stderr, done.stderr
    assert "--format native" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_mamba_export_holds_no_pickle_and_reloads_to_the_same_scores(trained, tmp_path):
    ckpt, export, _ = trained
    assert not [p for pattern in PICKLES for p in export.rglob(pattern)]
    assert (export / "backbone" / "model.safetensors").is_file() and (export / "README.md").is_file()
    module = RerankerModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    want = module.score(PAIRS_Q, PAIRS_D)
    torch.testing.assert_close(RerankerModule.from_pretrained(export).score(PAIRS_Q, PAIRS_D), want)
    # an export written before: the backbone as mamba_ssm's pickled pytorch_model.bin, read weights-only
    old = tmp_path / "old"
    shutil.copytree(export, old)
    shutil.rmtree(old / "backbone")
    module.backbone.save_pretrained(old / "backbone", layout="mamba_ssm")
    assert (old / "backbone" / "pytorch_model.bin").is_file()
    torch.testing.assert_close(RerankerModule.from_pretrained(old).score(PAIRS_Q, PAIRS_D), want)


def test_a_backbone_that_saves_a_pickle_is_refused(tmp_path, monkeypatch):
    module = reranker("bert")
    saved = type(module.backbone).save_pretrained

    def pickling(self, folder):
        saved(self, folder)
        torch.save({}, Path(folder) / "extra.bin")

    monkeypatch.setattr(type(module.backbone), "save_pretrained", pickling)
    with pytest.raises(ConfigError, match=r"saved backbone/extra\.bin: pickled files"):
        export_reranker(module, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_other_formats_replace_only_their_own_folders(tmp_path):
    from lightning_rank.errors import OutputError

    module = reranker("bert")
    folder = export_reranker(module, tmp_path / "hf", format="hf")
    assert is_export(folder) and (folder / "lightning_rank_export.json").is_file()
    with pytest.raises(OutputError, match="holds an earlier export; pass --overwrite true"):
        export_reranker(module, folder, format="hf")
    export_reranker(module, folder, overwrite=True, format="sentence-transformers")
    assert (folder / "modules.json").is_file()
    card = (folder / "README.md").read_text()
    (folder / "README.md").write_text(card + "my notes\n")  # the card edited: the user's now
    with pytest.raises(OutputError, match=r"model card \(README.md\) was edited since"):
        export_reranker(module, folder, overwrite=True, format="hf")
    assert (folder / "README.md").read_text() == card + "my notes\n"
    (folder / "README.md").write_text(card)
    (folder / "mine.txt").write_text("a file of mine\n")
    with pytest.raises(OutputError, match="is not an earlier lightning-rank export"):
        export_reranker(module, folder, overwrite=True, format="hf")
    assert (folder / "mine.txt").read_text() == "a file of mine\n" and (folder / "modules.json").is_file()
    with pytest.raises(FileNotFoundError, match="a --format sentence-transformers export, which sentence_tr"):
        RerankerModule.from_pretrained(folder)


def test_from_pretrained_takes_a_cached_hub_id_offline_and_names_an_uncached_one(tmp_path, monkeypatch):
    from huggingface_hub import constants

    module = reranker("bert")
    commit = "0" * 40
    repo = tmp_path / "models--lightning-rank--tiny-reranker"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    module.save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = RerankerModule.from_pretrained("lightning-rank/tiny-reranker")
    torch.testing.assert_close(loaded.score(PAIRS_Q, PAIRS_D), module.score(PAIRS_Q, PAIRS_D))
    with pytest.raises(HubModelNotCachedError, match="model 'lightning-rank/not-cached' is not in the local"):
        RerankerModule.from_pretrained("lightning-rank/not-cached")


class FakeApi:
    """HfApi's two calls an upload makes, recorded; ``fail`` makes the upload raise as a network error."""

    calls: ClassVar[list] = []
    fail = False

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs.get("private")))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        if FakeApi.fail:
            raise ConnectionError("no route to host")
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        FakeApi.calls.append(("upload_folder", repo_id, files))
        return SimpleNamespace(repo_url=f"https://huggingface.co/{repo_id}")


def test_push_to_hub_uploads_exactly_the_export_and_a_failure_keeps_it(
    trained, tmp_path, capsys, monkeypatch
):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(FakeApi, "calls", [])
    out = tmp_path / "export"
    done = run_main(capsys, "export", "--ckpt_path", str(trained[0]), "--output", str(out),
                    "--push_to_hub", "me/my-reranker")  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "README.md" in files and "reranker.json" in files
    assert FakeApi.calls == [
        ("create_repo", "me/my-reranker", True),
        ("upload_folder", "me/my-reranker", files),
    ]
    assert "uploaded" in done.stdout and "https://huggingface.co/me/my-reranker" in done.stdout
    monkeypatch.setattr(FakeApi, "fail", True)
    before = {f: (out / f).read_bytes() for f in files}
    done = run_main(capsys, "export", "--ckpt_path", str(trained[0]), "--output", str(out), "--overwrite",
                    "true", "--push_to_hub", "me/my-reranker")  # fmt: skip
    assert (
        done.returncode == 2 and "no route to host" in done.stderr and "is complete and kept" in done.stderr
    )
    assert {f: (out / f).read_bytes() for f in files} == before and is_export(out)
    with pytest.raises(UploadError):
        from lightning_rank.commands.export import upload

        upload(out, "me/my-reranker", True)


def test_model_card_records_base_model_and_monitored_metric():
    from lightning_rank.commands.export import card_facts
    from lightning_rank.reranker.model_card import hub_id

    assert hub_id("cross-encoder/ms-marco-MiniLM-L6-v2") == "cross-encoder/ms-marco-MiniLM-L6-v2"
    assert hub_id("./local/folder") is None and hub_id(None) is None
    facts = card_facts({
        "datamodule_hyper_parameters": {"train_dataset": "msmarco-passage/train", "val_dataset": "v/dev"},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/nDCG@10'}": {"monitor": "val/nDCG@10",
                                                                     "best_model_score": torch.tensor(0.5)}},
    })  # fmt: skip
    assert facts.datasets == ["msmarco-passage/train"] and facts.metrics == {"nDCG@10": 0.5}
    module = copy.deepcopy(reranker("bert"))
    module.hparams["backbone_args"]["pretrained"] = "cross-encoder/ms-marco-MiniLM-L6-v2"
    from huggingface_hub import ModelCard

    from lightning_rank.reranker.model_card import model_card

    card = model_card("bert", module.hparams["backbone_args"], "pair", None, "hf", facts, "note", "out")
    parsed = ModelCard(str(card)).data
    assert parsed.base_model == "cross-encoder/ms-marco-MiniLM-L6-v2"
    assert parsed.eval_results[0].metric_type == "nDCG@10" and parsed.eval_results[0].metric_value == 0.5


def test_a_decoder_padding_with_its_eos_has_no_exact_classifier(tmp_path):
    """The classifier skips pad tokens to find the last one: with pad = EOS it would score the token before
    the EOS that ends every pair."""
    module = reranker("pythia")
    module.backbone.tokenizer.pad_token = module.backbone.tokenizer.eos_token
    with pytest.raises(ConfigError, match="pads with '\\[EOS\\]', a token that also ends or starts"):
        export_reranker(module, tmp_path / "hf", format="hf")


def test_a_map_that_leaves_float_rounding_is_caught_before_writing(tmp_path, monkeypatch):
    """With the tanh driven out of its linear range the probe scores differ: refused, nothing written."""
    from lightning_rank.reranker import classifier_map

    monkeypatch.setattr(classifier_map, "_TANH_INPUT_LIMIT", 4.0)
    with pytest.raises(RuntimeError, match="RobertaForSequenceClassification scores differ"):
        export_reranker(reranker("roberta", scale=300.0), tmp_path / "hf", format="hf")
    assert list(tmp_path.iterdir()) == []
