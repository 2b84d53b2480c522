"""``lifelong report``: a static HTML page of runs (curves, metric table, AUC by length, HR/NDCG@K)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifelong.cli import app
from lifelong.data.schema import EventLog
from lifelong.data.synthetic import synthetic_log
from lifelong.metrics import auc
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.report import auc_by_length, length_buckets, write_report

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny CTR run (P1, with saved test predictions) and a tiny retrieval run (P2) on a synthetic log."""
    root = tmp_path_factory.mktemp("report-runs")
    events, items = synthetic_log(n_users=150, events_per_user=(4, 40), seed=3)
    log = EventLog(events=events, items=items, sources=[], rejected=None, recipe="synthetic")
    out = {}
    for protocol, model, extra in (("ctr-din", "din", ["--save-predictions"]), ("seq-loo", "sasrec", [])):
        data = prepare(log, root / f"data-{protocol}", ProtocolOptions(name=protocol, seed=3))
        result = runner.invoke(app, ["train", "--data", str(data), "--model", model, "--out", str(root / model),
                                     "--epochs", "2", "--threads", "1", "--no-progress", "--seed", "7",
                                     "--set", "embedding_dim=8", *extra])
        assert result.exit_code == 0, result.output
        out[model] = root / model
    return out


def images_of(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_the_page_shows_tables_plots_and_commands_of_several_runs(runs, tmp_path):
    page = write_report([runs["din"], runs["sasrec"]], tmp_path / "report")
    assert page == tmp_path / "report" / "index.html"
    text = page.read_text()
    # every plot is a PNG file next to the page; nothing is fetched from the network
    images = images_of(page)
    assert set(images) == {"curves_ctr.png", "curves_retrieval.png", "auc_by_length.png", "retrieval_at_k.png"}
    for name in images:
        assert (page.parent / name).read_bytes()[:8] == PNG
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # the metric tables: protocol, dataset, seed, the test metrics of results.json, and the commands
    ctr = json.loads((runs["din"] / "results.json").read_text())
    retrieval = json.loads((runs["sasrec"] / "results.json").read_text())
    assert "CTR runs: test metrics" in text and "Retrieval runs: test metrics" in text
    assert "P1 ctr-din" in text and "P2 seq-loo" in text and "data-ctr-din (synthetic)" in text
    assert f"<td>{ctr['test']['auc']:.4f}</td>" in text and f"<td>{ctr['test']['gauc']:.4f}</td>" in text
    assert f"<td>{retrieval['test']['ndcg@10']:.4f}</td>" in text and f"<td>{retrieval['test']['hr@20']:.4f}</td>" in text
    assert "<th>HR@10</th>" in text and "<th>NDCG@20</th>" in text and "<td>7</td>" in text  # the seed
    for run in runs.values():
        command = json.loads((run / "config.json").read_text())["command"]
        assert command and f"<code>{html.escape(command)}</code>" in text
    assert json.loads((page.parent / "report.json").read_text())["format"].startswith("lifelong-report/")


def test_auc_by_length_is_the_auc_of_each_bucket_of_the_saved_predictions(runs, tmp_path):
    predictions = runs["din"] / "test_predictions.npz"
    data = np.load(predictions)
    rows = auc_by_length(predictions)
    assert len(rows) >= 3  # histories of 3 to 39 events, capped at L = 50
    assert sum(r["n"] for r in rows) == data["label"].shape[0]
    for row in rows:
        keep = (data["history_length"] >= row["low"]) & (data["history_length"] <= row["high"])
        assert row["n"] == int(keep.sum())
        assert row["auc"] == pytest.approx(auc(data["label"][keep], data["logit"][keep]))
    page = write_report([runs["din"]], tmp_path / "r").read_text()
    for row in rows:  # the table under the plot
        assert f"{row['auc']:.4f} <span class=note>(n={row['n']:,})</span>" in page
    assert length_buckets(50) == [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 50)]


def test_a_run_without_saved_predictions_says_how_to_get_the_auc_by_length(runs, tmp_path):
    run = tmp_path / "din-copy"
    shutil.copytree(runs["din"], run, ignore=shutil.ignore_patterns("test_predictions.npz"))
    page = write_report([run], tmp_path / "r")
    assert "auc_by_length.png" not in images_of(page) and "--save-predictions" in page.read_text()


def test_a_folder_that_is_not_a_run_is_a_clear_error(runs, tmp_path):
    data = runs["din"].parent / "data-ctr-din"
    for bad, expected in ((data, "is not a training run"), (tmp_path / "missing", "does not exist")):
        result = runner.invoke(app, ["report", str(runs["din"]), str(bad), "--out", str(tmp_path / "r")])
        assert result.exit_code == 2
        assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_report_never_writes_over_what_it_did_not_make(runs, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    result = runner.invoke(app, ["report", str(runs["din"]), "--out", str(mine)])
    assert result.exit_code == 2 and "not a report" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["todo.txt"] and (mine / "todo.txt").read_text() == "keep me"
    # the run's own folder is refused too, and left as it was
    before = sorted(p.name for p in runs["din"].iterdir())
    result = runner.invoke(app, ["report", str(runs["din"]), "--out", str(runs["din"])])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert sorted(p.name for p in runs["din"].iterdir()) == before
    # an earlier report is replaced
    out = tmp_path / "report"
    assert runner.invoke(app, ["report", str(runs["din"]), str(runs["sasrec"]), "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["report", str(runs["sasrec"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "curves_ctr.png").exists() and (out / "retrieval_at_k.png").exists()


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; CI needs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return i.getAttribute('src') + '=' + i.naturalWidth + 'x' + i.naturalHeight; });
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    return t.rows.length; });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: images, tables: tables});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser_with_every_image_loaded(runs, tmp_path):
    browser = chromium()
    page = write_report([runs["din"], runs["sasrec"]], tmp_path / "report")
    probe = page.parent / "probe.html"  # the page as written, plus a script that reads what the browser loaded
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    done = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(seen["images"]) == 4
    for image in seen["images"]:
        name, size = image.split("=")
        width, height = map(int, size.split("x"))
        assert width > 300 and height > 100, f"{name} did not load ({size})"
    assert len(seen["tables"]) >= 4 and all(rows >= 2 for rows in seen["tables"])  # header + a row each
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG
