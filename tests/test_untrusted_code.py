"""A model folder never runs its own Python code unless the user asks in the call or on the command line:
an export whose reranker.json sets trust_remote_code is refused without the flag, whatever the folder says."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import TINIEST as TINY
from helpers import cli, tiny_bi_encoder

from lightning_rank.cli import main
from lightning_rank.datamodules.collections import load_dataset
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import UntrustedCodeError
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.runs import write_trec_run

MARKER_VARIABLE = "LIGHTNING_RANK_TEST_CODE_RAN"
# imported, it leaves a file behind: the proof that the folder's code ran
SIDE_EFFECT = f"""
import os
from pathlib import Path

Path(os.environ["{MARKER_VARIABLE}"]).write_text("the folder's code ran")
"""
CUSTOM_CONFIG = (
    SIDE_EFFECT
    + """
from transformers import BertConfig, BertModel


class ShippedConfig(BertConfig):
    model_type = "bert"


class ShippedModel(BertModel):
    config_class = ShippedConfig
"""
)


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "code-ran.txt"
    monkeypatch.setenv(MARKER_VARIABLE, str(path))
    return path


@pytest.fixture
def code_bearing_export(tmp_path: Path) -> Path:
    """A tiny BERT export that ships a config class (``auto_map``) and whose manifest asks to run it."""
    folder = tmp_path / "export"
    RerankerModule(
        backbone="bert", backbone_args={"tokenizer": "builtin:words", "config": TINY}
    ).save_pretrained(folder)
    (folder / "backbone" / "shipped_config.py").write_text(CUSTOM_CONFIG)
    config = json.loads((folder / "backbone" / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "shipped_config.ShippedConfig",
        "AutoModel": "shipped_config.ShippedModel",
    }
    (folder / "backbone" / "config.json").write_text(json.dumps(config))
    manifest = json.loads((folder / "reranker.json").read_text())
    manifest["backbone_args"]["trust_remote_code"] = True
    (folder / "reranker.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def demo_run(tmp_path: Path) -> Path:
    """The demo's dev first-stage run, cut to 3 candidates of 2 queries."""
    run: dict[str, dict[str, float]] = {}
    for entry in load_dataset("lightning-rank/demo/dev").scoreddocs_iter():
        docs = run.setdefault(entry.query_id, {})
        if len(docs) < 3:
            docs[entry.doc_id] = entry.score
        if len(run) > 2:
            break
    path = tmp_path / "first-stage.trec"
    write_trec_run(dict(list(run.items())[:2]), path)
    return path


def rerank_args(export: Path, run: Path, output: Path) -> list[str]:
    return ["rerank", "--model", str(export), "--dataset", "lightning-rank/demo/dev", "--run", str(run),
            "--output", str(output), "--device", "cpu"]  # fmt: skip


def test_from_pretrained_does_not_run_a_folders_code_because_its_manifest_asks(code_bearing_export, marker):
    with pytest.raises(
        UntrustedCodeError, match=r"sets trust_remote_code: true.*ships backbone/shipped_config"
    ):
        RerankerModule.from_pretrained(code_bearing_export)
    with pytest.raises(
        UntrustedCodeError, match=r"trust_remote_code=True to RerankerModule\.from_pretrained"
    ):
        RerankerModule.from_pretrained(code_bearing_export, trust_remote_code=False)
    assert not marker.exists()


def test_rerank_refuses_a_code_bearing_export_without_the_flag(code_bearing_export, demo_run, marker, capsys):
    output = demo_run.with_name("reranked.trec")
    capsys.readouterr()
    status = main(rerank_args(code_bearing_export, demo_run, output))
    done = SimpleNamespace(returncode=status, stderr=capsys.readouterr().err)
    assert done.returncode == 2, done.stderr
    assert (
        "error:" in done.stderr and "pass --trust_remote_code true to `lightning-rank rerank`" in done.stderr
    )
    assert not marker.exists() and not output.exists()


@pytest.mark.slow
def test_the_users_flag_runs_the_folders_code(code_bearing_export, demo_run, marker, tmp_path):
    """With ``--trust_remote_code true`` the shipped config class is imported (transformers' own loader, in a
    private module cache) and the export reranks the run."""
    output = tmp_path / "reranked.trec"
    env = {MARKER_VARIABLE: str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = cli(*rerank_args(code_bearing_export, demo_run, output), "--trust_remote_code", "true", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.read_text() == "the folder's code ran"
    assert set(read_trec_run(output)) == set(read_trec_run(demo_run))


def test_dense_does_not_import_a_module_class_a_model_folder_names(tmp_path, demo_run, marker, capsys):
    """sentence-transformers' modules.json may name a class of the folder's own Python: it never runs."""
    model = tiny_bi_encoder(tmp_path / "bi-encoder")
    (model / "shipped_module.py").write_text(SIDE_EFFECT + "\nclass ShippedModule:\n    pass\n")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "shipped_module.ShippedModule"}]
    (model / "modules.json").write_text(json.dumps(modules))
    capsys.readouterr()
    output = tmp_path / "dense.trec"
    status = main(["dense", "--dataset", "lightning-rank/demo/dev", "--run", str(demo_run),
                   "--output", str(output), "--model", str(model), "--device", "cpu"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert status == 2 and "trust_remote_code" in stderr, stderr
    assert not marker.exists() and not output.exists()


def test_a_manifest_backbone_that_is_the_folders_own_module_is_not_imported(tmp_path, marker, monkeypatch):
    """``python -m`` run from an export folder puts it on ``sys.path``: a manifest naming a module there as
    its backbone class would import the folder's own code."""
    folder = tmp_path / "export"
    RerankerModule(
        backbone="bert", backbone_args={"tokenizer": "builtin:words", "config": TINY}
    ).save_pretrained(folder)
    (folder / "shipped_backbone.py").write_text(SIDE_EFFECT + "\nfrom lightning_rank.backbones.hf import *\n")
    manifest = json.loads((folder / "reranker.json").read_text())
    manifest["backbone"] = "shipped_backbone:BertBackbone"
    (folder / "reranker.json").write_text(json.dumps(manifest))
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(
        UntrustedCodeError, match=r"backbone 'shipped_backbone:BertBackbone' is Python code inside"
    ):
        RerankerModule.from_pretrained(folder)
    assert not marker.exists()
