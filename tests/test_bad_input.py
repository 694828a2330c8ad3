"""Bad input fails with one clear message (what, where, how to fix) or is skipped with a warning that counts
it; never a hang, a bare traceback, or damage to files already written (issue #7, "input-safe").

The unknown-backbone case is tested in tests/test_registry.py (test_unknown_backbone_fails_within_a_second_of_
start); a mistyped non-demo id and the training-side download in tests/test_datamodule.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from helpers import DEMO, cli, stub_backbone

from lightning_rank.backbones.base import load_tokenizer
from lightning_rank.cli.preflight import check_argv
from lightning_rank.errors import ConfigError
from lightning_rank.text.templates import PairTemplate


def output_folder(root: Path) -> Path:
    """An output folder holding a checkpoint and a run file of an earlier run."""
    out = root / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"\x80weights of an earlier run")
    (out / "dev.trec").write_text("q1 Q0 d1 1 0.5 earlier\n")
    return out


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def assert_unchanged(before: dict[str, tuple[bytes, int]]) -> None:
    for path, (content, mtime) in before.items():
        assert Path(path).read_bytes() == content and Path(path).stat().st_mtime_ns == mtime, path


def assert_clear_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def write_collection(
    root: Path,
    docs: bytes | None = None,
    queries: bytes | None = None,
    qrels: bytes | None = None,
    run: bytes | None = None,
    queries_name: str = "queries.tsv",
) -> dict:
    """TSV docs p0..p29, 10 queries (0..9) whose positive is p<q>, a run of 8 candidates per query."""
    root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "docs.tsv": b"".join(b"p%d\tbaba kavo%d passage %d\n" % (d, d % 3, d) for d in range(30)),
        queries_name: b"".join(b"%d\tkavo question %d\n" % (q, q) for q in range(10)),
        "qrels.txt": b"".join(b"%d 0 p%d 1\n" % (q, q) for q in range(10)),
        "run.trec": b"".join(
            b"%d Q0 p%d %d %d bm25\n" % (q, (q + k) % 30, k + 1, 9 - k) for q in range(10) for k in range(8)
        ),
    }
    given = {"docs.tsv": docs, queries_name: queries, "qrels.txt": qrels, "run.trec": run}
    for name, default in defaults.items():
        (root / name).write_bytes(default if given[name] is None else given[name])
    return {
        "docs": str(root / "docs.tsv"),
        "queries": str(root / queries_name),
        "qrels": {"train": str(root / "qrels.txt")},
        "runs": {"train": str(root / "run.trec")},
    }


def datamodule(name: str, files: dict, **kwargs):
    from lightning_rank.datamodules import RerankDataModule

    kwargs.setdefault("group_size", 4)
    dm = RerankDataModule(local_collections={name: files}, batch_size=2, **kwargs)
    dm.use_backbone(stub_backbone())
    return dm


def console(caplog, level: int = logging.WARNING) -> list[str]:
    """What the user sees on Lightning's console logger at ``level`` or above."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("lightning") and r.levelno >= level]


# 1 ------------------------------------------------------------------------------------------------------
def test_malformed_yaml_names_the_file_and_line(tmp_path):
    out = output_folder(tmp_path)
    before = snapshot(out)
    indented = tmp_path / "indented.yaml"
    indented.write_text(f"trainer:\n  default_root_dir: {out}\n   max_epochs: 1\n")
    unclosed = tmp_path / "unclosed.yaml"
    unclosed.write_text("data:\n  train_dataset: lightning-rank/demo/train\n  local_collections: [a, b\n")
    start = time.perf_counter()
    result = cli("fit", "--config", str(indented))
    assert time.perf_counter() - start < 3  # caught before Lightning is imported
    assert_clear_error(result, f"{indented}, line 3, column 14: malformed YAML", "indentation")
    with pytest.raises(ConfigError, match=rf"{unclosed}, line 4, column 1: malformed YAML: .*flow sequence"):
        check_argv(["fit", f"--config={unclosed}"])
    assert_unchanged(before)


# 2 ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_config_keys_name_the_key_and_suggest_the_valid_one(tmp_path):
    out = output_folder(tmp_path)
    before = snapshot(out)
    typos = tmp_path / "typos.yaml"
    typos.write_text(
        f"trainer:\n  default_root_dir: {out}\n  max_epoch: 1\ndata:\n  batch_sise: 2\nmodel:\n  lrr: 0.1\n"
    )
    result = cli("fit", "--config", DEMO, "--config", str(typos), "--data.eval_batch_sise", "8")
    assert_clear_error(
        result,
        f"unknown option 'trainer.max_epoch' ({typos}, line 3): did you mean 'trainer.max_epochs'?",
        f"unknown option 'data.batch_sise' ({typos}, line 5): did you mean 'data.batch_size'?",
        f"unknown option 'model.lrr' ({typos}, line 7): did you mean 'model.lr'?",
        "unknown option 'data.eval_batch_sise' (command line): did you mean 'data.eval_batch_size'?",
        "`lightning-rank fit --help` lists every option",
    )
    assert_unchanged(before)


# 3: unknown backbone -> tests/test_registry.py::test_unknown_backbone_fails_within_a_second_of_start


# 4 ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_misspelled_dataset_id_suggests_close_ids(tmp_path):
    out = output_folder(tmp_path)
    before = snapshot(out)
    result = cli(
        "fit",
        "--config",
        DEMO,
        "--data.train_dataset",
        "lightning-rank/demo/trian",
        "--trainer.default_root_dir",
        str(out),
        "--run_writer.output",
        str(out / "dev.trec"),
    )
    assert_clear_error(
        result,
        "data.train_dataset: unknown ir_datasets id 'lightning-rank/demo/trian'. "
        "Did you mean: lightning-rank/demo/train",
    )
    assert_unchanged(before)


# 5 ------------------------------------------------------------------------------------------------------
def test_evaluation_dataset_that_needs_a_download_fails_fast_offline(tmp_path, monkeypatch):
    """The evaluation side (the training side is in test_datamodule.py), offline for real: every request
    goes to a proxy that refuses connections, as on a machine without network."""
    from lightning_rank.errors import DatasetDownloadError

    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    from lightning_rank.datamodules import RerankDataModule

    dm = RerankDataModule(test_dataset="beir/scifact/test")
    dm.use_backbone(stub_backbone())
    start = time.perf_counter()
    with pytest.raises(DatasetDownloadError) as err:
        dm.setup("test")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "'beir/scifact/test' needs files that are not on this machine" in message
    assert "Download the dataset first" in message and str(tmp_path / "irds") in message


# 6 ------------------------------------------------------------------------------------------------------
def test_entries_naming_unknown_queries_or_documents_are_skipped_with_counts(tmp_path, caplog):
    qrels = b"".join(b"%d 0 p%d 1\n" % (q, q) for q in range(9)) + b"9 0 gone 1\n77 0 p1 1\n"
    run = b"".join(
        b"%d Q0 p%d %d %d bm25\n" % (q, (q + k) % 30, k + 1, 9 - k) for q in range(10) for k in range(8)
    )
    run += b"0 Q0 missing 9 0.5 bm25\n88 Q0 p3 1 9 bm25\n88 Q0 p4 2 8 bm25\n"
    files = write_collection(tmp_path / "files", qrels=qrels, run=run)
    dm = datamodule("skips", files, train_dataset="skips/train", val_dataset="skips/train")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        dm.setup("fit")
    train, val = console(caplog)
    assert train.startswith("skips/train: 9 training queries; skipped ")
    for part in (
        "1 positives missing from the corpus",
        "1 queries without positives",  # query 9: its only positive is not in the corpus
        "1 run entries naming missing documents",
        "3 run/qrels entries for unknown queries",  # 77 (qrels) and 88 (2 run lines)
        "queries or documents that the collection does not hold",
    ):
        assert part in train, train
    assert val.startswith("skips/train: reranking 80 pairs of 10 queries; skipped ")
    assert "2 run entries for unknown queries" in val and "1 run entries naming missing documents" in val
    assert len(dm._train.index) == 9 and len(dm.eval_split("val").pairs) == 80


# 7 ------------------------------------------------------------------------------------------------------
def test_empty_corpus_is_an_error(tmp_path):
    from lightning_rank.errors import DataFileError

    files = write_collection(tmp_path / "files", docs=b"\n")
    with pytest.raises(DataFileError, match=r"local collection 'no-docs': .*docs.tsv holds no documents"):
        datamodule("no-docs", files, train_dataset=None)


def test_empty_texts_are_scored_with_a_warning(tmp_path, caplog):
    """An empty document is valid reranker input: the pair is kept and scored, and the count is reported."""
    docs = b"".join(b"p%d\t%s\n" % (d, b"" if d in (1, 2) else b"baba passage %d" % d) for d in range(30))
    queries = b"".join(b"%d\t%s\n" % (q, b" " if q == 3 else b"kavo question %d" % q) for q in range(10))
    files = write_collection(tmp_path / "files", docs=docs, queries=queries)
    dm = datamodule("empty-texts", files, train_dataset="empty-texts/train", val_dataset="empty-texts/train")
    with caplog.at_level(logging.WARNING, logger="lightning.pytorch"):
        dm.setup("fit")
    assert console(caplog) == [
        f"empty-texts/train: {n} documents and 1 queries have empty text; they are kept and scored as they "
        "are (an empty document is valid reranker input: the template is rendered with nothing in its "
        "place). Check the collection's files if this is unexpected."
        for n in (2, 2)
    ]
    split = dm.eval_split("val")
    assert {"p1", "p2"} <= set(split.doc_ids) and len(split.pairs) == 80
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 64


# 8 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["docs.tsv", "queries.jsonl", "qrels.txt", "run.trec"])
def test_invalid_utf8_names_the_file_line_and_byte_offset(tmp_path, bad):
    import json

    from lightning_rank.errors import DataFileError

    queries = b"".join(
        json.dumps({"_id": str(q), "text": f"kavo question {q}"}).encode() + b"\n" for q in range(10)
    )
    files = write_collection(tmp_path / "files", queries=queries, queries_name="queries.jsonl")
    path = tmp_path / "files" / bad
    lines = path.read_bytes().splitlines(keepends=True)
    space = lines[3].index(b" ") + 1
    lines[3] = lines[3][:space] + b"\xe9" + lines[3][space:]  # Latin-1 "é" on line 4
    path.write_bytes(b"".join(lines))
    offset = len(b"".join(lines[:3])) + space
    dm = datamodule(f"utf8-{path.stem}", files, train_dataset=f"utf8-{path.stem}/train")
    with pytest.raises(DataFileError) as err:
        dm.setup("fit")
    assert str(err.value).startswith(f"{path}:4: not valid UTF-8 (byte 0xe9 at byte offset {offset}).")
    assert "re-encode the file" in str(err.value)


# 9 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("excerpt", ["first", "query_biased"])
@pytest.mark.parametrize("style", ["document: {document}; query: {query}", "pair"])
def test_documents_far_beyond_max_length_are_truncated_fast(style, excerpt):
    from lightning_rank.text.builtin_tokenizer import VOCABULARY

    tokenizer = load_tokenizer("builtin:words")
    words = list(VOCABULARY)
    document = " ".join(words[i % len(words)] for i in range(200_000))
    template = PairTemplate(style)
    start = time.perf_counter()
    encoded = template.encode(tokenizer, ["kavo question"] * 16, [document] * 16, 64, 16, excerpt=excerpt)
    assert time.perf_counter() - start < 1.0  # ~0.03 s; tokenizing the whole documents took 4-7 s
    assert all(len(e.input_ids) <= 64 for e in encoded)
    if excerpt == "first":
        head = " ".join(document.split()[:100])  # the same tokens as the whole text, truncated away
        assert encoded[0] == template.encode(tokenizer, ["kavo question"], [head], 64, 16)[0]


# 10 -----------------------------------------------------------------------------------------------------
def test_group_size_below_two_fails_at_configuration_before_any_data(tmp_path):
    out = output_folder(tmp_path)
    before = snapshot(out)
    missing = tmp_path / "not-there"  # reading data first would fail on this folder instead
    start = time.perf_counter()
    result = cli(
        "fit",
        "--config",
        DEMO,
        f"--data.local_collections={{mine: {missing}}}",
        "--data.train_dataset=mine/train",
        "--data.group_size=1",
        f"--trainer.default_root_dir={out}",
    )
    assert time.perf_counter() - start < 3  # the pre-flight check: Lightning is not even imported
    assert_clear_error(
        result,
        "data.group_size must be >= 2, got 1: a training group is one positive and at least one negative",
    )
    assert "not-there" not in result.stderr
    assert_unchanged(before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--model.loss=KLDistillation"],
            "model.loss KLDistillation distils a teacher but data.teacher_run is not set: pass "
            "--data.teacher_run",
        ),
        (
            [
                "--model.loss={class_path: KLDistillation, init_args: {negatives_only: true}}",
                "--data.teacher_run=TEACHER",
                "--data.group_size=2",
            ],
            "model.loss KLDistillation needs groups of at least 3 documents, got data.group_size 2: set "
            "--data.group_size 3 or more",
        ),
    ],
)
@pytest.mark.slow
def test_a_loss_the_training_data_cannot_feed_fails_before_any_data_is_read(tmp_path, options, message):
    out = output_folder(tmp_path)
    before = snapshot(out)
    # Without the check: a traceback at the first training step. Reading the (missing) teacher run first
    # would name that file instead.
    options = [o.replace("TEACHER", str(tmp_path / "teacher-not-there.trec")) for o in options]
    result = cli("fit", "--config", DEMO, f"--trainer.default_root_dir={out}", *options)
    assert_clear_error(result, message)
    assert "teacher-not-there" not in result.stderr
    assert_unchanged(before)


# 11 -----------------------------------------------------------------------------------------------------
def test_runs_shorter_than_a_group_repeat_negatives_with_one_warning(tmp_path, caplog):
    short = {2: 2, 5: 3, 7: 2}  # query -> candidates in the run (its positive among them)
    run = b"".join(
        b"%d Q0 p%d %d %d bm25\n" % (q, (q + k) % 30, k + 1, 9 - k)
        for q in range(10)
        for k in range(short.get(q, 8))
    )
    files = write_collection(tmp_path / "files", run=run)
    dm = datamodule("short-run", files, train_dataset="short-run/train", group_size=4)
    with caplog.at_level(logging.WARNING, logger="lightning.pytorch"):
        dm.setup("fit")
    assert console(caplog) == [
        "short-run/train: 3 of 10 training queries have fewer than 3 negatives (fewest: 1) for "
        "data.group_size 4; their groups repeat negatives. Use a deeper run (data.train_run, "
        "data.negatives_depth) or a smaller data.group_size to avoid it."
    ]
    stream = dm._train
    position = next(i for i, q in enumerate(stream.index) if q.query_id == "2")
    batch = stream.make_batch([position])
    assert batch["input_ids"].shape[0] == 4 and batch["repeated_negatives"] == 1
