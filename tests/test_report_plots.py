"""`lightning-rank report`: a fit's logged curves become PNG plots (opened and checked non-blank) and an
HTML page with the fit's config; it writes only where a report may go."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DEMO
from PIL import Image

from lightning_rank.cli import main


@pytest.fixture(scope="module")
def fit_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    code = main([
        "fit", "--config", DEMO, "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--validate_before_fit", "true", "--validate_after_fit", "true", "--tokens_per_sec.window_size", "2",
    ])  # fmt: skip
    assert code in (0, None)
    return root


def is_drawn(path) -> bool:
    """A PNG of a plot: opens, has the figure's size, and holds more than one flat colour."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    return pixels.shape == (400, 700) and pixels.std() > 5 and (pixels < 128).mean() > 0.005


@pytest.mark.slow  # a demo fit
def test_report_plots_loss_validation_and_throughput_and_shows_the_config(fit_root, capsys):
    assert main(["report", str(fit_root)]) in (0, None)
    folder = fit_root / "report"
    for name in ("loss", "validation", "throughput"):
        assert is_drawn(folder / f"{name}.png"), name
    page = (folder / "index.html").read_text()
    assert page.count("<img ") == len(list(folder.glob("*.png"))) >= 3
    assert "max_steps: 6" in page  # the fit's config.yaml, shown with the plots
    assert f"wrote {len(list(folder.glob('*.png')))} plots" in capsys.readouterr().out
    # a blank image would not pass: the check itself is sound
    Image.new("RGB", (700, 400), "white").save(folder / "blank.png")
    assert not is_drawn(folder / "blank.png")
    (folder / "blank.png").unlink()
    # an earlier report is replaced; a folder of other files is refused and left as it was
    assert main(["report", str(fit_root), "--output", str(folder)]) in (0, None)
    mine = fit_root / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("<p>my page</p>")
    assert main(["report", str(fit_root), "--output", str(mine)]) == 2
    assert "is not an earlier report" in capsys.readouterr().err
    assert (mine / "index.html").read_text() == "<p>my page</p>" and len(list(mine.iterdir())) == 1


def test_a_folder_without_logged_metrics_is_named_with_what_report_reads(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.csv below it" in capsys.readouterr().err
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path / "metrics.csv")]) == 2
    assert "not a Lightning CSV logger file" in capsys.readouterr().err
    (tmp_path / "metrics.csv").write_text("step,epoch,other\n1,0,2\n")
    assert main(["report", str(tmp_path / "metrics.csv")]) == 2
    assert "no curve to plot (columns: other)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    (tmp_path / "lightning_logs" / "version_0" / "events.out.tfevents.1.host").write_bytes(b"")
    assert main(["report", str(tmp_path)]) == 2
    assert "This run was logged to TensorBoard" in capsys.readouterr().err


def test_the_per_query_plot_compares_a_run_with_its_baseline_on_every_judged_query(tmp_path, capsys):
    from lightning_rank.commands.plots import per_query_gains
    from lightning_rank.datamodules.collections import load_dataset
    from lightning_rank.datamodules.files import read_trec_run
    from lightning_rank.metrics import evaluate
    from lightning_rank.runs import write_trec_run

    (tmp_path / "metrics.csv").write_text("step,epoch,train/loss\n1,0,2.0\n2,0,1.5\n3,0,1.2\n")
    bm25 = tmp_path / "bm25.trec"
    assert main(["bm25", "--dataset", "lightning-rank/demo/dev", "--depth", "20", "--output", str(bm25)]) == 0
    lexical = read_trec_run(bm25)
    flipped = {q: ({d: -s for d, s in docs.items()} if i % 3 == 0 else docs)
               for i, (q, docs) in enumerate(sorted(lexical.items()))}  # fmt: skip
    del flipped[sorted(flipped)[1]]  # a judged query the run leaves out: it scores 0 (trec_eval -c)
    worse = tmp_path / "worse.trec"
    write_trec_run(flipped, worse)
    out = tmp_path / "report"
    code = main(["report", str(tmp_path), "--output", str(out), "--run", str(worse), "--baseline", str(bm25),
                 "--qrels", "lightning-rank/demo/dev"])  # fmt: skip
    assert code in (0, None), capsys.readouterr().err
    assert is_drawn(out / "per_query.png") and 'src="per_query.png"' in (out / "index.html").read_text()
    qrels = load_dataset("lightning-rank/demo/dev").qrels_dict()
    gains = per_query_gains(str(worse), str(bm25), "lightning-rank/demo/dev", "nDCG@10")
    assert len(gains) == len(qrels) and gains == sorted(gains, reverse=True)
    ours, base = evaluate(flipped, qrels, ["nDCG@10"]), evaluate(lexical, qrels, ["nDCG@10"])
    assert sum(gains) / len(gains) == pytest.approx(ours.values["nDCG@10"] - base.values["nDCG@10"])
    assert main(["report", str(tmp_path), "--output", str(out), "--run", str(worse)]) == 2
    assert "--run, --baseline and --qrels go together" in capsys.readouterr().err
