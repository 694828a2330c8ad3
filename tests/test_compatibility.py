"""Every model x data rule lives in one function (``datamodules/compatibility.py``): each rule is checked
through it, through the CLI (exit 2 before any data is read) and through the Python API (``trainer.fit``
with a ``RerankDataModule``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import DEMO, TINY_BERT
from lightning.pytorch import Trainer

from lightning_rank.backbones.mamba import backbone as mamba_backbone
from lightning_rank.cli import main
from lightning_rank.datamodules import RerankDataModule
from lightning_rank.datamodules.collate import PairCollator
from lightning_rank.datamodules.compatibility import PACKING_CONFLICT, check_model_fits_data
from lightning_rank.errors import ConfigError
from lightning_rank.losses import GroupCrossEntropy, KLDistillation
from lightning_rank.reranker.module import RerankerModule

TEACHER = "distils a teacher but data.teacher_run is not set"
GROUP = "needs groups of at least 3 documents, got data.group_size 2"
CANNOT_PACK = "cannot score packed rows"
BUCKETS = "data.packing and data.length_buckets > 1 are two ways"
GRAPHS = "model.cuda_graphs needs a fixed set of input shapes"
TRAIN = {"teacher_run": None, "group_size": 8, "packing": False, "length_buckets": 1}


class Packs:
    """A backbone that scores packed rows (by having the method, as a duck)."""

    def forward_packed(self, *args):
        raise AssertionError("not called by the check")


class CannotPack:
    def packing_unsupported(self) -> str:
        return "no block-diagonal mask here"


def model(loss=None, backbone=None, **hparams) -> SimpleNamespace:
    return SimpleNamespace(loss=loss, backbone=backbone or Packs(), hparams=hparams)


# -- the function ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("candidate", "data", "message"),
    [
        (model(KLDistillation()), {}, TEACHER),
        (model(KLDistillation(negatives_only=True)), {"teacher_run": "t.trec", "group_size": 2}, GROUP),
        (model(backbone=CannotPack()), {"packing": True}, "CannotPack cannot score packed rows (no block"),
        (model(backbone=object()), {"packing": True}, "(object does not implement forward_packed)"),
        (model(cuda_graphs=True), {"packing": True}, GRAPHS),
        (None, {"packing": True, "length_buckets": 4}, BUCKETS),
    ],
    ids=[
        "teacher",
        "group-size",
        "packing-unsupported",
        "no-forward-packed",
        "cuda-graphs",
        "length-buckets",
    ],
)
def test_each_rule_refuses_what_the_model_cannot_use(candidate, data, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_model_fits_data(candidate, {**TRAIN, **data})


def test_settings_the_model_can_use_pass() -> None:
    check_model_fits_data(model(GroupCrossEntropy()), TRAIN)
    check_model_fits_data(model(KLDistillation()), {**TRAIN, "teacher_run": "t.trec"})
    check_model_fits_data(model(backbone=Packs()), {**TRAIN, "packing": True})
    check_model_fits_data(model(cuda_graphs=True), {**TRAIN, "length_buckets": 4})
    check_model_fits_data(None, {**TRAIN, "length_buckets": 4})
    check_model_fits_data(
        SimpleNamespace(), {"packing": True}
    )  # nothing known of the model: nothing to refuse


def test_training_rules_apply_to_fit_only() -> None:
    """Evaluation needs no teacher and runs no training graphs; packing support matters in every stage."""
    for stage in ("validate", "test", "predict"):
        check_model_fits_data(model(KLDistillation(), cuda_graphs=True), {**TRAIN, "packing": True}, stage)
        with pytest.raises(ConfigError, match=CANNOT_PACK):
            check_model_fits_data(model(backbone=CannotPack()), {**TRAIN, "packing": True}, stage)


def test_a_data_module_without_the_option_skips_its_rule() -> None:
    """Another data module's settings (no teacher_run, no packing) pass whatever the model."""
    check_model_fits_data(model(KLDistillation(), backbone=CannotPack(), cuda_graphs=True), {"batch_size": 4})


def test_the_collator_backstop_and_the_cuda_graphs_message_are_the_same_rules() -> None:
    from lightning_rank.backbones.base import load_tokenizer
    from lightning_rank.reranker import cuda_graphs
    from lightning_rank.text.templates import PairTemplate

    with pytest.raises(ConfigError, match=BUCKETS):
        PairCollator(load_tokenizer("builtin:words"), PairTemplate("pair"), packing=True, length_buckets=2)
    assert cuda_graphs.PACKING_CONFLICT is PACKING_CONFLICT


# -- the CLI: exit 2, before any data is read -----------------------------------------------------------
# every case names a training or validation run that does not exist: reading data first would name it
MISSING = "missing-run.trec"
BERT = ["--model.backbone", "bert", "--model.backbone_args", json.dumps(TINY_BERT)]


def kernels_may_run(monkeypatch) -> list[str]:
    """The demo's Mamba with the fused kernels allowed (and said to be there): it cannot pack."""
    monkeypatch.setattr(mamba_backbone, "kernels_available", lambda: True)
    return ["--model.backbone_args.use_kernels", "auto"]


@pytest.mark.parametrize(
    ("subcommand", "flags", "message"),
    [
        ("fit", ["--model.loss", "KLDistillation"], TEACHER),
        (
            "fit",
            [
                "--model.loss={class_path: KLDistillation, init_args: {negatives_only: true}}",
                "--data.teacher_run",
                MISSING,
                "--data.group_size",
                "2",
            ],
            GROUP,
        ),
        ("fit", ["--data.packing", "true", "KERNELS"], CANNOT_PACK),
        ("validate", ["--data.packing", "true", "KERNELS"], CANNOT_PACK),
        ("fit", [*BERT, "--data.packing", "true", "--model.cuda_graphs", "true"], GRAPHS),
        ("fit", ["--data.packing", "true", "--data.length_buckets", "4"], BUCKETS),
    ],
    ids=["teacher", "group-size", "packing-fit", "packing-validate", "cuda-graphs", "length-buckets"],
)
def test_the_cli_refuses_before_any_data_is_read(subcommand, flags, message, tmp_path, capsys, monkeypatch):
    if "KERNELS" in flags:
        flags = [f for f in flags if f != "KERNELS"] + kernels_may_run(monkeypatch)
    root = tmp_path / "run"
    runs = ["--data.train_run", MISSING] if subcommand == "fit" else ["--data.val_run", MISSING]
    argv = [subcommand, "--config", DEMO, *runs, *flags, "--trainer.default_root_dir", str(root)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert MISSING not in err, err  # refused before the run was read
    assert not list(root.rglob("*.ckpt"))


# -- the Python API: trainer.fit with a RerankDataModule ----------------------------------------------------
def tiny_module(**kwargs) -> RerankerModule:
    args = {"tokenizer": "builtin:words", "use_kernels": kwargs.pop("use_kernels", "never")}
    return RerankerModule(
        backbone="mamba1", backbone_args={**args, "config": {"d_model": 16, "n_layer": 1}}, **kwargs
    )


def trainer(root: Path) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


@pytest.mark.parametrize(
    ("module_args", "data_args", "message"),
    [
        ({"loss": KLDistillation()}, {}, TEACHER),
        ({"loss": KLDistillation(negatives_only=True)}, {"teacher_run": MISSING, "group_size": 2}, GROUP),
        ({"use_kernels": "auto"}, {"packing": True}, CANNOT_PACK),
        ({"cuda_graphs": True}, {"packing": True}, GRAPHS),
    ],
    ids=["teacher", "group-size", "packing-unsupported", "cuda-graphs"],
)
def test_the_python_api_refuses_in_the_data_module_setup(
    module_args, data_args, message, tmp_path, monkeypatch
):
    monkeypatch.setattr(mamba_backbone, "kernels_available", lambda: True)
    module = tiny_module(**module_args)
    data = RerankDataModule(train_dataset="lightning-rank/demo/train", train_run=MISSING, **data_args)
    with pytest.raises(ConfigError, match=message):  # not the missing run: nothing was read
        trainer(tmp_path).fit(module, datamodule=data)


def test_the_python_api_refuses_an_unpackable_backbone_in_evaluation_too(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(mamba_backbone, "kernels_available", lambda: True)
    data = RerankDataModule(val_dataset="lightning-rank/demo/dev", val_run=MISSING, packing=True)
    with pytest.raises(ConfigError, match=CANNOT_PACK):
        trainer(tmp_path).validate(tiny_module(use_kernels="auto"), datamodule=data)
