"""backbones/hub.py: one offline/hub policy for every backbone, seen through the CLI and the Python API.

HF_HUB_OFFLINE=1 is set by conftest.py; each test points the hub cache at an empty folder of its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import DEMO, TINIEST, cli, spy_on_trust_remote_code

from lightning_rank.backbones import base, hub
from lightning_rank.backbones.hf import BertBackbone
from lightning_rank.backbones.mamba import Mamba1Backbone
from lightning_rank.errors import HubModelNotCachedError, InputError, ModelNotFoundError

MAMBA = {"config": {"d_model": 32, "n_layer": 1}, "use_kernels": "never"}
# the model's own options besides `pretrained`, as each backbone takes them on the command line
EXTRA = {"bert": {}, "mamba1": {"use_kernels": "never"}}


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache: no hub id is on this machine."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent))
    return cache


def fit_with(backbone: str, pretrained: str, tmp_path: Path) -> list[str]:
    """`lightning-rank fit` of the demo config with ``backbone`` loaded from ``pretrained``."""
    args = json.dumps({"pretrained": pretrained, **EXTRA[backbone]})
    return ["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "run"),
            "--model.backbone", backbone, "--model.backbone_args", args]  # fmt: skip


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a failed command wrote: an ``error:`` line, no traceback."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.slow  # a CLI process per backbone
@pytest.mark.parametrize("backbone", ["bert", "mamba1"])
def test_an_uncached_hub_id_offline_is_one_line_naming_the_id_and_the_fix(
    backbone: str, tmp_path: Path
) -> None:
    home = tmp_path / "hf"
    done = cli(*fit_with(backbone, "lightning-rank-tests/not-cached", tmp_path), env={"HF_HOME": str(home)})
    line = error_line(done)
    assert "pretrained 'lightning-rank-tests/not-cached' is not in the local Hugging Face cache" in line
    assert f"({home / 'hub'}, HF_HOME={home})" in line and "offline mode is on (HF_HUB_OFFLINE)" in line
    assert "`hf download lightning-rank-tests/not-cached`" in line and "or pass a local folder" in line


@pytest.mark.slow  # a CLI process per backbone
@pytest.mark.parametrize("backbone", ["bert", "mamba1"])
def test_a_missing_local_folder_is_one_line_naming_it(backbone: str, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    line = error_line(cli(*fit_with(backbone, str(missing), tmp_path)))
    assert line == f"error: pretrained {str(missing)!r} is neither a local folder nor a Hugging Face hub id"


def test_both_backbones_load_a_local_folder(tmp_path: Path, empty_cache: Path) -> None:
    bert = BertBackbone(config=dict(TINIEST), tokenizer="builtin:words").eval()
    bert.save_pretrained(tmp_path / "bert")
    mamba = Mamba1Backbone(tokenizer="builtin:words", **MAMBA).eval()
    mamba.save_pretrained(tmp_path / "mamba", layout="transformers")
    ids = torch.tensor([[2, 5, 7, 3]])
    mask = torch.ones_like(ids)
    for original, loaded in (
        (bert, BertBackbone(pretrained=str(tmp_path / "bert"))),
        (mamba, Mamba1Backbone(pretrained=str(tmp_path / "mamba"), use_kernels="never")),
    ):
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(ids, mask), original(ids, mask))


def test_a_checkpoint_without_tokenizer_reports_its_default_tokenizer_by_the_same_policy(
    tmp_path: Path, empty_cache: Path
) -> None:
    """A mamba_ssm checkpoint ships no tokenizer: the GPT-NeoX default is looked up like any hub id."""
    Mamba1Backbone(tokenizer="builtin:words", **MAMBA).save_pretrained(tmp_path / "ssm", layout="mamba_ssm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / "ssm" / name).unlink(missing_ok=True)
    with pytest.raises(HubModelNotCachedError, match=r"tokenizer 'EleutherAI/gpt-neox-20b' .*hf download"):
        Mamba1Backbone(pretrained=str(tmp_path / "ssm"), use_kernels="never")


def test_the_tokenizer_runs_shipped_code_only_with_the_backbones_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    BertBackbone(config=dict(TINIEST), tokenizer="builtin:words").save_pretrained(tmp_path)
    seen = spy_on_trust_remote_code(monkeypatch, base.AutoTokenizer)
    BertBackbone(pretrained=str(tmp_path))
    BertBackbone(pretrained=str(tmp_path), trust_remote_code=True)
    base.load_tokenizer(str(tmp_path))
    assert seen == [False, True, False]


def test_resolve_keeps_folders_and_builtins_and_refuses_what_is_neither(tmp_path: Path) -> None:
    assert hub.resolve(str(tmp_path), "pretrained") == str(tmp_path)
    assert hub.resolve("builtin:words", "tokenizer") == "builtin:words"
    for bad in ("./relative/missing", "/absolute/missing", "a/b/c", "not a name"):
        with pytest.raises(ModelNotFoundError, match="neither a local folder nor a Hugging Face hub id"):
            hub.resolve(bad, "pretrained")
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelNotFoundError):
        hub.resolve(str(tmp_path / "file"), "pretrained")
    assert issubclass(ModelNotFoundError, InputError) and issubclass(HubModelNotCachedError, InputError)


def test_hub_errors_map_the_hub_librarys_failures_and_pass_others() -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    def wrapped(inner: BaseException) -> OSError:
        """As transformers raises them: a plain OSError raised from the hub library's error."""
        try:
            raise inner
        except BaseException as err:
            outer = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
            outer.__cause__ = err
            return outer

    not_cached = pytest.raises(HubModelNotCachedError, match=r"tokenizer 'org/model' is not in the local")
    with not_cached, hub.hub_errors("org/model", "tokenizer"):
        raise wrapped(LocalEntryNotFoundError("no file in the cache"))
    with pytest.raises(ValueError, match=r"^something else$"), hub.hub_errors("org/model", "tokenizer"):
        raise ValueError("something else")
