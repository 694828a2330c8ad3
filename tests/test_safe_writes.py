"""Writes replace only what they own: an export replaces only an earlier export (and only with --overwrite),
a run or metrics file replaces only a run or metrics file; anything else is refused, before the work, and
left byte for byte as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import DEMO
from helpers import TINIEST as TINY

from lightning_rank.callbacks import TrecRunWriter
from lightning_rank.cli import main
from lightning_rank.datamodules.files import read_trec_run
from lightning_rank.errors import OutputError
from lightning_rank.reranker.export import EXPORT_ENTRIES, export_reranker, is_export
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.runs import write_metrics_file, write_trec_run

EARLIER_RUN = "q1 Q0 d1 1 2.5 earlier\nq1 Q0 d2 2 1.5 earlier\n"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def run_main(capsys, *args: str) -> SimpleNamespace:
    """``lightning-rank ARGS`` in this process: its exit status and what it printed."""
    capsys.readouterr()
    returncode = main(list(args))
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=returncode, stdout=captured.out, stderr=captured.err)


def export(capsys, ckpt: Path | str, output: str, *extra: str) -> SimpleNamespace:
    return run_main(capsys, "export", "--ckpt_path", str(ckpt), "--output", output, *extra)


@pytest.fixture
def project(trained, tmp_path: Path) -> Path:
    """A user's project folder: a checkpoint, notes, and a folder of their own files."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(trained[0], folder / "model.ckpt")
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "somefolder").mkdir()
    (folder / "somefolder" / "data.csv").write_text("a,b\n1,2\n")
    (folder / "results.out").write_text("a file of mine\n")
    return folder


@pytest.mark.parametrize("overwrite", [[], ["--overwrite", "true"]], ids=["plain", "overwrite"])
def test_export_never_replaces_a_folder_or_file_it_did_not_write(project, capsys, monkeypatch, overwrite):
    monkeypatch.chdir(project)
    before = snapshot(project)
    done = export(capsys, "model.ckpt", ".", *overwrite)
    assert done.returncode == 2, done.stderr
    assert f"--output {project} is not an earlier lightning-rank export" in done.stderr
    assert "notes.txt" in done.stderr and "model.ckpt" in done.stderr
    done = export(capsys, "model.ckpt", "somefolder", *overwrite)
    assert done.returncode == 2 and "(it holds data.csv)" in done.stderr, done.stderr
    done = export(capsys, "model.ckpt", "results.out", *overwrite)
    assert done.returncode == 2 and "is an existing file, not a folder" in done.stderr, done.stderr
    done = export(capsys, "model.ckpt", "results.out/inner", *overwrite)
    assert done.returncode == 2 and "results.out is a file, not a folder" in done.stderr, done.stderr
    assert snapshot(project) == before  # nothing moved, nothing left behind (no staging folder)


def test_export_refuses_a_wrong_output_before_reading_the_checkpoint(project, capsys):
    garbage = project / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    done = export(capsys, garbage, str(project / "somefolder"))
    assert done.returncode == 2 and "is not an earlier lightning-rank export" in done.stderr, done.stderr


def test_export_fills_an_empty_folder_and_replaces_an_earlier_export_only_with_overwrite(
    trained, tmp_path, capsys, monkeypatch
):
    ckpt = trained[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert export(capsys, ckpt, ".").returncode == 0  # the working folder itself, filled in place
    assert sorted(p.name for p in Path.cwd().iterdir()) == sorted(EXPORT_ENTRIES)
    target = tmp_path / "export"
    assert export(capsys, ckpt, str(target)).returncode == 0  # absent: created
    assert is_export(target)
    theirs = tmp_path / ".export.old"  # a name the replacement once used for its scratch folder
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine\n")
    (target / "reranker.json").write_text((target / "reranker.json").read_text().replace("\n", "\n "))
    before = snapshot(target)
    done = export(capsys, ckpt, str(target))
    assert done.returncode == 2 and "holds an earlier export; pass --overwrite true" in done.stderr
    assert snapshot(target) == before
    done = export(capsys, ckpt, str(target), "--overwrite", "true")
    assert done.returncode == 0, done.stderr
    assert snapshot(target) != before and sorted(p.name for p in target.iterdir()) == sorted(EXPORT_ENTRIES)
    assert (
        RerankerModule.from_pretrained(target).input_format
        == RerankerModule.from_pretrained(trained[1]).input_format
    )
    assert (theirs / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.old", "empty", "export"]


def test_export_reranker_follows_the_same_rule(tmp_path):
    module = RerankerModule(backbone="bert", backbone_args={"tokenizer": "builtin:words", "config": TINY})
    folder = module.save_pretrained(tmp_path / "export")
    with pytest.raises(OutputError, match="overwrite=True"):
        export_reranker(module, folder)
    assert export_reranker(module, folder, overwrite=True) == folder and is_export(folder)
    (folder / "README.md").write_text("my notes on this model\n")
    with pytest.raises(OutputError, match=r"model card \(README.md\) was edited since: the card is yours"):
        export_reranker(module, folder, overwrite=True)
    assert (folder / "README.md").read_text() == "my notes on this model\n"


def test_a_run_replaces_only_a_run_or_an_empty_file(tmp_path):
    code = tmp_path / "some.py"
    code.write_text("print('hello')\n")
    with pytest.raises(OutputError, match=r"some.py exists and is not a TREC run file: line 1 \("):
        write_trec_run({"q1": {"d1": 1.0}}, code)
    assert code.read_text() == "print('hello')\n"
    with pytest.raises(OutputError, match="is a folder; the TREC run file is written to a file"):
        write_trec_run({"q1": {"d1": 1.0}}, tmp_path)
    for earlier in (EARLIER_RUN, ""):
        path = tmp_path / "run.trec"
        path.write_text(earlier)
        write_trec_run({"q9": {"d9": 1.0}}, path)
        assert read_trec_run(path) == {"q9": {"d9": 1.0}}
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x80\x04\x95 pickled")
    with pytest.raises(OutputError, match="not UTF-8 text"):
        write_trec_run({"q1": {"d1": 1.0}}, binary)


def test_a_metrics_file_replaces_only_metrics(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics_file(path, {"val/nDCG@10": 0.5})
    write_metrics_file(path, {"val/nDCG@10": 0.75})
    assert json.loads(path.read_text()) == {"val/nDCG@10": 0.75}
    for content in ('{"name": "my experiment"}\n', "[1, 2]\n", "notes\n"):
        path.write_text(content)
        with pytest.raises(OutputError, match="is not a metrics file"):
            write_metrics_file(path, {"val/nDCG@10": 0.5})
        assert path.read_text() == content


def test_run_commands_refuse_a_file_that_is_not_a_run_and_a_folder(tmp_path, capsys, monkeypatch):
    code = tmp_path / "some.py"
    code.write_text("import os\n")
    missing = str(tmp_path / "no-such.trec")  # the outputs are checked before the inputs are read

    def retrieval_ran(*args, **kwargs):
        raise AssertionError("BM25 ran before the output was checked")

    monkeypatch.setattr("lightning_rank.commands.bm25.bm25_run", retrieval_ran)
    commands = {
        "bm25": ["bm25", "--dataset", "lightning-rank/demo/dev"],
        "dense": ["dense", "--dataset", "lightning-rank/demo/dev", "--run", missing, "--model", missing],
        "rerank": ["rerank", "--model", missing, "--dataset", "lightning-rank/demo/dev", "--run", missing],
        "fuse": ["fuse", "--run", missing, "--first_stage", missing],
    }
    for name, args in commands.items():
        done = run_main(capsys, *args, "--output", str(code))
        assert done.returncode == 2, (name, done.stderr)
        assert f"error: --output {code} exists and is not a TREC run file: line 1" in done.stderr, name
        done = run_main(capsys, *args, "--output", str(tmp_path))
        assert done.returncode == 2 and "is a folder" in done.stderr, (name, done.stderr)
    assert code.read_text() == "import os\n" and sorted(p.name for p in tmp_path.iterdir()) == ["some.py"]


def test_bm25_replaces_an_earlier_run(tmp_path, capsys):
    output = tmp_path / "bm25.trec"
    output.write_text(EARLIER_RUN)
    done = run_main(capsys, "bm25", "--dataset", "lightning-rank/demo/dev", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert "q1" not in read_trec_run(output) and len(read_trec_run(output)) > 1


def test_trainer_outputs_that_are_not_ours_are_refused_before_anything_loads(trained, tmp_path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"experiment": "baseline", "owner": "me"}\n')
    done = run_main(capsys, "validate", "--config", DEMO, "--metrics_file", str(notes),
                    "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and f"--metrics_file {notes} exists and is not a metrics file" in done.stderr
    code = tmp_path / "some.py"
    code.write_text("import os\n")
    done = run_main(capsys, "predict", "--config", DEMO, "--ckpt_path", str(trained[0]),
                    "--data.predict_dataset", "lightning-rank/demo/dev", "--run_writer.output", str(code),
                    "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and f"--run_writer.output {code} exists and is not a TREC run" in done.stderr
    assert notes.read_text() == '{"experiment": "baseline", "owner": "me"}\n'
    assert code.read_text() == "import os\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json", "some.py"]  # no logs: nothing ran


def test_the_run_writer_checks_its_default_path_at_setup(tmp_path):
    (tmp_path / "predict.trec").write_text("my own predict.trec\n")
    trainer = SimpleNamespace(default_root_dir=str(tmp_path))
    with pytest.raises(OutputError, match=r"predict\.trec exists and is not a TREC run file"):
        TrecRunWriter().setup(trainer, None, "predict")
    TrecRunWriter().setup(trainer, None, "fit")  # fit writes no run
    (tmp_path / "predict.trec").write_text(EARLIER_RUN)
    TrecRunWriter().setup(trainer, None, "predict")
