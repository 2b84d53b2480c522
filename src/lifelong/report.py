"""``lifelong report RUN [RUN ...] --out DIR``: one static HTML page about finished (or running) runs.

The page needs no network to be viewed: the plots are PNG files drawn by matplotlib next to
``index.html`` and the style is inline. It shows, for every run given:

- the training and validation curves of ``metrics.jsonl`` (one line per run, the best epoch marked);
- the metric table: protocol, dataset, seed, best epoch and test metrics, and the command that trained it;
- CTR runs: test AUC by history length, from ``test_predictions.npz`` (written by
  ``lifelong train --save-predictions``);
- retrieval runs: HR@K (HitRate@K) and NDCG@K of the test split.

Several runs are drawn side by side in the same plots. ``write_report(runs, out)`` is the Python entry
point (``lifelong demo`` calls it); it returns the page's path.

The report folder carries a marker (``report.json``) and holds only what lifelong writes there, so a
later report may replace it; any other non-empty folder is refused, as are the runs' own folders.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lifelong.errors import UserError
from lifelong.outputs import RUN, OutputKind, check_output, replace_folder

REPORT_FORMAT = "lifelong-report/1"
PROTOCOL_LABELS = {"ctr-din": "P1", "seq-loo": "P2", "mi-split": "P3", "ctr-time": "P4", "ctr-long": "P5"}
PLOTS = ("curves_ctr.png", "curves_retrieval.png", "auc_by_length.png", "retrieval_at_k.png")


def _is_report(folder: Path) -> bool:
    try:
        marker = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and str(marker.get("format", "")).startswith("lifelong-report/")


REPORT = OutputKind("report folder", "report.json", _is_report,
                    lambda e: e in {"report.json", "index.html"} or (e.endswith(".png") and not e.startswith(".")))

# the selection metric of each kind of run, the one the validation curve shows
CTR_METRICS = ("auc", "gauc", "logloss")
FAMILIES = {"hr": "HR", "hitrate": "HR", "ndcg": "NDCG", "recall": "Recall"}  # retrieval metrics by K


@dataclass
class RunInfo:
    """What the page shows of one run folder."""

    path: Path
    name: str
    config: dict
    epochs: list[dict]
    results: dict | None
    test: dict | None
    predictions: Path | None
    manifest: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        model = self.config.get("model", {})
        train = self.config.get("train", {})
        return str(model.get("model_type") or train.get("model") or "?")

    @property
    def task(self) -> str:
        metrics = self.test or (self.epochs[-1] if self.epochs else {})
        keys = set(metrics)
        if any(k.startswith(("recall@", "hr@", "hitrate@", "valid_recall@", "valid_hr@")) for k in keys):
            return "retrieval"
        return "ctr"

    @property
    def protocol(self) -> str:
        name = (self.manifest.get("protocol") or {}).get("name") or "?"
        return f"{PROTOCOL_LABELS[name]} {name}" if name in PROTOCOL_LABELS else str(name)

    @property
    def dataset(self) -> str:
        path = (self.config.get("dataset") or {}).get("path") or self.config.get("train", {}).get("data") or "?"
        recipe = self.manifest.get("recipe")
        return f"{Path(str(path)).name} ({recipe})" if recipe else Path(str(path)).name

    @property
    def seed(self) -> str:
        return str(self.config.get("train", {}).get("seed", "?"))

    @property
    def command(self) -> str:
        return str(self.config.get("command") or "")

    @property
    def selection(self) -> str:
        """The validation metric the run selected its epoch on."""
        if self.task == "ctr":
            return "auc"
        if self.results and self.results.get("select"):
            return str(self.results["select"])
        return "recall@50" if any(k.startswith("valid_hitrate@") for k in (self.epochs[-1] if self.epochs else {})) \
            else "ndcg@20"

    @property
    def best_epoch(self) -> int | None:
        if self.results and "best_epoch" in self.results:
            return int(self.results["best_epoch"])
        key = f"valid_{self.selection}"
        scored = [e for e in self.epochs if isinstance(e.get(key), (int, float))]
        if not scored:
            return None
        return int(max(scored, key=lambda e: e[key])["epoch"])


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_epochs(path: Path) -> list[dict]:
    epochs = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path}, line {number}: not a JSON line; the file is not one `lifelong train` "
                            f"wrote, or it was cut off") from None
        if isinstance(record, dict) and "epoch" in record:
            epochs.append(record)
    return epochs


def load_run(folder: str | Path) -> RunInfo:
    """Read what the report needs from a run folder; a folder that is not a run is a :class:`UserError`."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder} does not exist; pass run folders written by `lifelong train --out RUN`")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a run folder; pass run folders written by `lifelong train --out RUN`")
    if not RUN.made_by_lifelong(folder):
        raise UserError(f"{folder} is not a training run (no config.json written by `lifelong train` in it); "
                        f"pass run folders, e.g. `lifelong report runs/din runs/sumpool --out runs/report`")
    config = _read_json(folder / "config.json") or {}
    epochs = _read_epochs(folder / "metrics.jsonl")
    results = _read_json(folder / "results.json")
    test = (results or {}).get("test") or _read_json(folder / "eval_test.json")
    predictions = folder / "test_predictions.npz"
    return RunInfo(path=folder, name=folder.name, config=config, epochs=epochs, results=results, test=test,
                   predictions=predictions if predictions.is_file() else None,
                   manifest=config.get("dataset_manifest") or {})


def _unique_names(runs: list[RunInfo]) -> None:
    """Runs with the same folder name (runs/a/din, runs/b/din) are told apart by their parents."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1:
            run.name = "/".join(run.path.resolve().parts[-2:])


# ------------------------------------------------------------------------------------------------ plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("lifelong report draws its plots with matplotlib, which is not installed: "
                        "pip install 'lifelong[report]' (or make install-report)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def length_buckets(max_length: int) -> list[tuple[int, int]]:
    """History-length buckets for the AUC-by-length plot: 1, 2-3, 4-7, 8-15, ... up to ``max_length``."""
    buckets, low = [], 1
    while low <= max(1, max_length):
        high = min(2 * low - 1, max(1, max_length))
        buckets.append((low, high))
        low = high + 1
    return buckets


def auc_by_length(predictions: Path) -> list[dict]:
    """Test AUC per history-length bucket of a CTR run's saved predictions (buckets with both labels)."""
    from lifelong.metrics import auc

    data = np.load(predictions)
    lengths, labels, logits = data["history_length"], data["label"], data["logit"]
    rows = []
    for low, high in length_buckets(int(lengths.max()) if lengths.size else 1):
        keep = (lengths >= low) & (lengths <= high)
        part = labels[keep]
        if part.size and 0 < part.sum() < part.size:
            rows.append({"low": low, "high": high, "n": int(part.size), "auc": float(auc(part, logits[keep]))})
    return rows


def _metric_name(key: str) -> str:
    """auc -> AUC, ndcg@20 -> NDCG@20, recall@50 -> Recall@50, hitrate@20 -> HR@20."""
    if "@" in key:
        family, k = key.split("@", 1)
        return f"{FAMILIES.get(family, family)}@{k}"
    return {"auc": "AUC", "gauc": "GAUC"}.get(key, key)


def _curves(plt, runs: list[RunInfo], path: Path, train_key: str, train_label: str, title: str) -> bool:
    drawn = [r for r in runs if r.epochs]
    if not drawn:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    selections = sorted({r.selection for r in drawn})
    for index, run in enumerate(drawn):
        color = f"C{index % 10}"
        epochs = [e["epoch"] for e in run.epochs]
        train = [e.get(train_key, e.get("train_loss")) for e in run.epochs]
        left.plot(epochs, [math.nan if v is None else v for v in train], marker="o", color=color, label=run.name)
        key = f"valid_{run.selection}"
        valid = [e.get(key) for e in run.epochs]
        label = run.name if len(selections) == 1 else f"{run.name} ({_metric_name(run.selection)})"
        right.plot(epochs, [math.nan if v is None else v for v in valid], marker="o", color=color, label=label)
        best = run.best_epoch
        if best is not None and best in epochs and valid[epochs.index(best)] is not None:
            right.plot([best], [valid[epochs.index(best)]], marker="*", markersize=14, color=color,
                       markeredgecolor="black", linestyle="none")
    left.set_title(f"{title}: training {train_label}")
    left.set_xlabel("epoch")
    left.set_ylabel(train_label)
    shown = " / ".join(_metric_name(s) for s in selections)
    right.set_title(f"{title}: validation {shown} (★ best)")
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation {shown}")
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    _save(plt, fig, (left, right), path)
    return True


def _auc_by_length_plot(plt, runs: list[RunInfo], path: Path) -> dict[str, list[dict]]:
    measured = {r.name: auc_by_length(r.predictions) for r in runs if r.task == "ctr" and r.predictions}
    measured = {name: rows for name, rows in measured.items() if rows}
    if not measured:
        return {}
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
    buckets = sorted({(row["low"], row["high"]) for rows in measured.values() for row in rows})
    x = {bucket: i for i, bucket in enumerate(buckets)}
    for index, (name, rows) in enumerate(measured.items()):
        ax.plot([x[(r["low"], r["high"])] for r in rows], [r["auc"] for r in rows], marker="o",
                color=f"C{index % 10}", label=name)
    ax.set_xticks(range(len(buckets)), [f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in buckets])
    ax.set_xlabel("history length (events before the target, capped at the run's L)")
    ax.set_ylabel("test AUC")
    ax.set_title("CTR: test AUC by history length")
    _save(plt, fig, (ax,), path)
    return measured


def _save(plt, fig, axes, path: Path) -> None:
    """Every plot's finish: a light grid and a small legend on each of ``axes``, then the PNG."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _at_k(test: dict, prefixes: Iterable[str]) -> list[tuple[int, float]]:
    points = []
    for key, value in test.items():
        for prefix in prefixes:
            if key.startswith(prefix + "@") and isinstance(value, (int, float)):
                try:
                    points.append((int(key.split("@", 1)[1]), float(value)))
                except ValueError:
                    pass
    return sorted(points)


def _retrieval_plot(plt, runs: list[RunInfo], path: Path) -> bool:
    drawn = [r for r in runs if r.task == "retrieval" and r.test]
    if not drawn:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    ks = set()
    for index, run in enumerate(drawn):
        color = f"C{index % 10}"
        for ax, prefixes in ((left, ("hr", "hitrate")), (right, ("ndcg",))):
            points = _at_k(run.test, prefixes)
            ks.update(k for k, _ in points)
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", color=color, label=run.name)
    for ax, name in ((left, "HR@K (hit rate)"), (right, "NDCG@K")):
        ax.set_title(f"retrieval: test {name}")
        ax.set_xlabel("K")
        ax.set_ylabel(name.split(" ")[0])
        ax.set_xticks(sorted(ks))
    _save(plt, fig, (left, right), path)
    return True


# ------------------------------------------------------------------------------------------------- page


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _display_metrics(test: dict) -> dict[str, float]:
    """A run's test metrics under one naming: CTR's AUC / GAUC / logloss, retrieval's HR@K (P3's hitrate@K),
    NDCG@K and Recall@K."""
    shown = {}
    for key, value in test.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key in CTR_METRICS:
            shown[key] = float(value)
        elif "@" in key and key.split("@")[0] in FAMILIES and key.split("@")[1].isdigit():
            family, k = key.split("@")
            shown[f"{FAMILIES[family]}@{k}"] = float(value)
    return shown


def _metric_columns(runs: list[RunInfo]) -> list[str]:
    keys = {key for run in runs for key in _display_metrics(run.test or {})}
    order = {"auc": 0, "gauc": 1, "logloss": 2, "HR": 3, "NDCG": 4, "Recall": 5}
    return sorted(keys, key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1]) if "@" in k else 0))


def _metrics_table(runs: list[RunInfo], task: str) -> str:
    chosen = [r for r in runs if r.task == task]
    if not chosen:
        return ""
    columns = _metric_columns(chosen)
    names = {"auc": "AUC", "gauc": "GAUC", "logloss": "logloss"}
    headers = ["run", "model", "protocol", "dataset", "seed", "best epoch / run", *(names.get(c, c) for c in columns),
               "test rows"]
    rows = []
    for run in chosen:
        test = _display_metrics(run.test or {})
        epochs_run = (run.results or {}).get("epochs_run", run.epochs[-1]["epoch"] if run.epochs else None)
        status = "" if run.results else ' <span class="note">(not finished)</span>'
        rows.append([html.escape(run.name) + status, html.escape(run.model), html.escape(run.protocol),
                     html.escape(run.dataset), html.escape(run.seed), f"{_fmt(run.best_epoch)} / {_fmt(epochs_run)}",
                     *(_fmt(test.get(c)) for c in columns), _fmt((run.test or {}).get("n"))])
    title = "CTR runs" if task == "ctr" else "Retrieval runs"
    return (f"<h2>{title}: test metrics</h2><div class=\"scroll\">" + _table(headers, rows, "metrics") + "</div>")


def _provenance_table(runs: list[RunInfo]) -> str:
    rows = [[html.escape(r.name), html.escape(str(r.path.resolve())), html.escape(r.protocol), html.escape(r.dataset),
             html.escape(r.seed), f"<code>{html.escape(r.command) or '–'}</code>"] for r in runs]
    return "<h2>Commands</h2>" + _table(["run", "folder", "protocol", "dataset", "seed", "command"], rows, "commands")


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1180px;
       color: #1d2330; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #dde2ea; padding-bottom: .2em; }
p.sub { color: #5a6373; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .85em; }
th, td { border: 1px solid #dde2ea; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
table.metrics td { font-variant-numeric: tabular-nums; }
table.commands code { font-size: .92em; white-space: pre-wrap; word-break: break-all; }
figure { margin: .5em 0 1.2em; }
figure img { max-width: 100%; border: 1px solid #e6e9ef; }
figcaption { color: #5a6373; font-size: .88em; }
.note { color: #8a5a00; font-size: .9em; }
div.scroll { overflow-x: auto; }
"""


def _figure(name: str, caption: str) -> str:
    return (f'<figure><img src="{name}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out/index.html`` (with its PNG plots beside it) about ``runs``; return the page's path.

    Raises :class:`UserError` for a path that is not a run folder, for ``out`` being (or holding) one of
    the runs, and for an ``out`` that exists, is not empty and is not a report folder lifelong wrote."""
    if not runs:
        raise UserError("lifelong report needs at least one run folder")
    infos = [load_run(run) for run in runs]
    _unique_names(infos)
    out = Path(out)
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()) and not _is_report(out):
        raise UserError(f"--out {out} is not empty and is not a report lifelong wrote (no report.json in it); "
                        f"lifelong report writes only into a new or empty folder or over an earlier report: "
                        f"choose another --out")
    check_output(out, REPORT, inputs=[info.path for info in infos], overwrite=True)  # inputs, files, foreign entries
    plt = _pyplot()
    replace_folder(out, REPORT, inputs=[info.path for info in infos])
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"format": REPORT_FORMAT,
                                                 "runs": [str(i.path.resolve()) for i in infos]}, indent=2))

    sections = []
    sections.append(_metrics_table(infos, "ctr"))
    sections.append(_metrics_table(infos, "retrieval"))
    ctr = [i for i in infos if i.task == "ctr"]
    retrieval = [i for i in infos if i.task == "retrieval"]
    figures = []
    if ctr and _curves(plt, ctr, out / "curves_ctr.png", "train_logloss", "logloss", "CTR"):
        figures.append(("Training and validation curves (CTR)",
                        _figure("curves_ctr.png", "Training logloss and validation AUC by epoch; ★ the epoch each run "
                                                  "selected (best validation AUC).")))
    if retrieval and _curves(plt, retrieval, out / "curves_retrieval.png", "train_loss", "loss", "retrieval"):
        figures.append(("Training and validation curves (retrieval)",
                        _figure("curves_retrieval.png", "Training loss and the validation selection metric by "
                                                        "epoch; ★ the epoch each run selected.")))
    measured = _auc_by_length_plot(plt, ctr, out / "auc_by_length.png") if ctr else {}
    if measured:
        rows = []
        for name, points in measured.items():
            rows.append([html.escape(name), *(f"{p['auc']:.4f} <span class=note>(n={p['n']:,})</span>" for p in points)])
        buckets = next(iter(measured.values()))
        same = all([(p["low"], p["high"]) for p in v] == [(p["low"], p["high"]) for p in buckets]
                   for v in measured.values())
        table = _table(["run", *(f"{p['low']}–{p['high']}" for p in buckets)], rows, "metrics") if same else ""
        figures.append(("CTR: test AUC by history length",
                        _figure("auc_by_length.png", "Test AUC of the runs' saved test predictions, by the number of "
                                                     "history events before the target.") + table))
    missing = [i.name for i in ctr if i.predictions is None]
    if missing:
        figures.append(("", f'<p class="note">No AUC by history length for {html.escape(", ".join(missing))}: '
                            f"train with <code>--save-predictions</code> to keep the test predictions.</p>"))
    if retrieval and _retrieval_plot(plt, retrieval, out / "retrieval_at_k.png"):
        figures.append(("Retrieval: HR@K and NDCG@K",
                        _figure("retrieval_at_k.png", "Test hit rate and NDCG at each K the run's protocol reports "
                                                      "(P2: 5, 10, 20; P3: 20, 50).")))
    for title, body in figures:
        sections.append((f"<h2>{html.escape(title)}</h2>" if title else "") + body)
    sections.append(_provenance_table(infos))

    names = ", ".join(i.name for i in infos)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>lifelong report: {html.escape(names)}</title><style>{STYLE}</style></head><body>"
            f"<h1>lifelong report</h1><p class=\"sub\">{len(infos)} run(s): {html.escape(names)}. Test metrics are "
            f"those of each run's best validation epoch.</p>" + "\n".join(s for s in sections if s)
            + "</body></html>\n")
    page_path = out / "index.html"
    page_path.write_text(page)
    return page_path
