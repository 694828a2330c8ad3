"""Backbone discovery: built-ins and plugins through one entry-point path, failures reported, not fatal."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
from helpers import plugin_installed

from lightning_rank.backbones import registry
from lightning_rank.backbones.base import Backbone

BUILTINS = ("mamba1", "mamba2", "bert", "roberta", "pythia", "llama")


@pytest.fixture
def fresh_registry():
    registry.available_backbones.cache_clear()
    registry._load.cache_clear()
    yield
    registry.available_backbones.cache_clear()
    registry._load.cache_clear()


def _fake_distribution(root, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A dist-info folder on sys.path is all importlib.metadata needs to see an installed plugin."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[lightning_rank.backbones]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def test_builtins_are_entry_points_of_our_distribution():
    found = registry.available_backbones()
    for name in BUILTINS:
        assert found[name].distribution == "lightning-rank"


def test_unknown_name_lists_available_and_suggests(fresh_registry):
    with pytest.raises(registry.UnknownBackboneError) as err:
        registry.check_backbone_name("mamba3")
    message = str(err.value)
    assert "'mamba3'" in message
    assert all(name in message for name in BUILTINS)
    assert "Did you mean" in message


def test_import_path_names_a_backbone_class(fresh_registry):
    cls = registry.get_backbone_class("lightning_rank_gru:GRUBackbone") if plugin_installed() else None
    if cls is None:
        pytest.skip("example plugin not installed")
    assert issubclass(cls, Backbone)


def test_broken_plugin_warns_and_others_still_load(tmp_path, monkeypatch, fresh_registry):
    _fake_distribution(
        tmp_path,
        "broken-plugin",
        {"broken": "broken_plugin_mod:Thing"},
        {"broken_plugin_mod": "raise ImportError('needs a GPU library that is not installed')"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(registry.BackbonePluginWarning, match="broken.*needs a GPU library"):
        outcome = registry.load_all_backbones()
    assert isinstance(outcome["broken"], Exception)
    assert issubclass(outcome["bert"], Backbone)


def test_two_plugins_claiming_one_name_warn(tmp_path, monkeypatch, fresh_registry):
    _fake_distribution(tmp_path, "other-bert", {"bert": "other_bert_mod:Bert"}, {"other_bert_mod": ""})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(registry.BackbonePluginWarning, match="'bert' is claimed by"):
        found = registry.available_backbones()
    assert found["bert"].distribution == "lightning-rank"  # our own built-in wins


@pytest.mark.slow
def test_cli_lists_builtins_and_reports_broken_plugin(tmp_path, run_cli):
    _fake_distribution(
        tmp_path, "broken-plugin", {"broken": "broken_plugin_mod:Thing"}, {"broken_plugin_mod": "import nope"}
    )
    result = run_cli("backbones", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    for name in BUILTINS:
        assert name in names
        assert "[ok]" in lines[names.index(name)]
    broken = lines[names.index("broken")]
    assert "broken-plugin" in broken and "FAILED" in broken and "nope" in broken
    if plugin_installed():
        gru = lines[names.index("gru")]
        assert "lightning-rank-gru" in gru and "lightning_rank_gru:GRUBackbone" in gru and "[ok]" in gru


def test_unknown_backbone_fails_within_a_second_of_start(run_cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  backbone: mamba3\n")
    start = time.perf_counter()
    result = run_cli("fit", "--config", str(config))
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    assert "unknown backbone 'mamba3'" in result.stderr and "mamba1" in result.stderr
    # Interpreter start included; Lightning (seconds to import) must not have been loaded.
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    override = run_cli("fit", "--config", "configs/demo.yaml", "--model.backbone", "bertt")
    assert override.returncode == 2 and "Did you mean 'bert'" in override.stderr


def test_preflight_reads_last_backbone(tmp_path):
    from lightning_rank.cli.preflight import backbone_from_argv

    config = tmp_path / "c.yaml"
    config.write_text("model:\n  backbone: bert\n")
    assert backbone_from_argv(["fit", "--config", str(config)]) == "bert"
    assert backbone_from_argv(["fit", f"--config={config}", "--model.backbone=llama"]) == "llama"
    assert backbone_from_argv(["fit", "--config", str(tmp_path / "missing.yaml")]) is None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
