"""CTR training throughput: lifelong (DIN, DIEN, TIN, BST, DiffuMIN) vs FuxiCTR 2.3.10 and DeepCTR-Torch 0.3.0's
DIN, same samples, same settings.

    python benchmarks/throughput.py [--epochs 3] [--skip-peers] [--models din,dien,tin,bst,diffumin]

Data: P1 (ctr-din protocol) Amazon Beauty prepared by lifelong into /tmp/bench-beauty (prepared on first
use from ../shared/data/amazon-beauty with the ``amazon-s3rec`` recipe). Settings for every library: DIN,
embedding 32 per feature (item id and category, for history and target, history and target sharing
tables), attention MLP [64, 32] (Dice), DNN [200, 80], batch 1024, 2 torch threads, the 50 most recent
events, Adam lr 1e-3, no regulariser. Metric: training samples/s, median over the epochs after the
first (the first is warm-up); per-epoch validation is not timed. Test AUC / GAUC: the epoch with the best
validation AUC, every library's test predictions scored by the same code (``lifelong.metrics``). Peak
RSS: ``ru_maxrss`` of each library's own process (one subprocess per library; a DataLoader worker
process, FuxiCTR's, is reported apart in the JSON).

Data model: lifelong batches straight from its CSR event store (``Collator``); DeepCTR-Torch gets
pre-padded (N, 50) numpy arrays exported with lifelong's Collator; FuxiCTR gets its LongCTR layout
(sample rows user/target/seq_len + per-user item sequences + item table), also exported from the same
prepared dataset. The data-model difference is part of what is compared.

Processes: lifelong rows run in the main venv (.venv/bin/python); the peers in .venv-bench. Without
.venv-bench (or with --skip-peers) only the lifelong rows and the reference line are printed.
Results: a table on stdout and benchmarks/results/throughput.json.

Peers' venv (exact commands, from the repository root; every pip call passes -c constraints.txt):

    python3 -m venv .venv-bench
    echo '*' > .venv-bench/.gitignore
    .venv-bench/bin/pip install --disable-pip-version-check -c constraints.txt \\
        torch==2.13.0 fuxictr==2.3.10 deepctr-torch==0.3.0

(lifelong itself is not installed there: the lifelong parts, data preparation, export of the peers'
inputs and scoring, run in .venv.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"

REFERENCE = {
    "library": "FuxiCTR 2.3.10 (CEO reference)", "model": "din", "threads": 2, "batch": 1024,
    "samples_per_s": 5500.0, "test_auc": 0.7747, "test_gauc": 0.7500, "peak_rss_mb": 1600.0,
    "note": "reference figure measured by the CEO on this machine kind, not measured in this run",
}


def run(command: list, label: str) -> float:
    """Run a worker (its stderr passes through); return the wall seconds; raise on failure."""
    print(f"[throughput] {label}: {' '.join(str(c) for c in command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run([str(c) for c in command], env=env, stdout=sys.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{label} failed with exit status {completed.returncode}")
    return time.perf_counter() - started


def lifelong_rows(args, models: list[str]) -> list[dict]:
    rows = []
    for spec in models:  # NAME or NAME:key=value:key=value (model options)
        model, *options = spec.split(":")
        tag = spec.replace(":", "-").replace("=", "")
        result = args.work / f"lifelong-{tag}.json"
        result.unlink(missing_ok=True)
        try:
            run([MAIN_PYTHON, PEERS / "lifelong_worker.py", "train", "--data", args.data, "--model", model,
                 "--epochs", args.epochs, "--run", args.work / f"run-lifelong-{tag}", "--result", result,
                 *[a for o in options for a in ("--set", o)]], f"lifelong {spec}")
        except RuntimeError as exc:
            rows.append({"library": "lifelong", "model": spec, "error": str(exc)})
            continue
        r = json.loads(result.read_text())
        label = model + (f" ({', '.join(options)})" if options else "")
        rows.append({"library": "lifelong", "model": label, "threads": 2, "batch": 1024,
                     "samples_per_s": r["samples_per_s"], "epoch_samples_per_s": r["epoch_samples_per_s"],
                     "test_auc": r["test"]["auc"], "test_gauc": r["test"]["gauc"],
                     "test_logloss": r["test"]["logloss"], "best_epoch": r["best_epoch"],
                     "peak_rss_mb": r["peak_rss_mb"], "data": "CSR event store, batched by lifelong.batch.Collator"})
    return rows


def peer_row(args, name: str, script: str, extra: list, data_note: str) -> dict:
    result = args.work / f"{name}.json"
    predictions = args.work / f"{name}-test-predictions.npy"
    scored = args.work / f"{name}-test-metrics.json"
    for path in (result, predictions, scored):
        path.unlink(missing_ok=True)
    try:
        run([BENCH_PYTHON, PEERS / script, "--info", args.work / "peer-inputs" / "info.json", "--epochs", args.epochs,
             "--result", result, "--predictions", predictions, *extra], name)
        run([MAIN_PYTHON, PEERS / "lifelong_worker.py", "score", "--data", args.data, "--predictions", predictions,
             "--result", scored], f"score {name}")
    except RuntimeError as exc:
        return {"library": name, "model": "din", "error": str(exc)}
    r, metrics = json.loads(result.read_text()), json.loads(scored.read_text())
    return {"library": f"{r['library']} {r.get('version', '')}".strip(), "model": "din", "threads": 2, "batch": 1024,
            "samples_per_s": r["samples_per_s"], "epoch_samples_per_s": r["epoch_samples_per_s"],
            "test_auc": metrics["auc"], "test_gauc": metrics["gauc"], "test_logloss": metrics["logloss"],
            "best_epoch": r["best_epoch"], "peak_rss_mb": r["peak_rss_mb"],
            "peak_rss_children_mb": r.get("peak_rss_children_mb"), "settings": r.get("settings"), "data": data_note}


def peers_rows(args) -> list[dict]:
    inputs = args.work / "peer-inputs"
    run([MAIN_PYTHON, PEERS / "lifelong_worker.py", "export", "--data", args.data, "--out", inputs], "export peer inputs")
    rows = [peer_row(args, "FuxiCTR", "fuxictr_din.py",
                     ["--inputs", inputs / "fuxictr", "--work", args.work / "fuxictr", "--num-workers", args.fuxictr_workers],
                     "LongCTR parquet (samples + user sequences + item table), exported from lifelong's dataset"),
            peer_row(args, "DeepCTR-Torch", "deepctr_din.py", ["--inputs", inputs / "deepctr"],
                     "pre-padded (N, 50) numpy arrays, exported with lifelong's Collator")]
    return rows


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or value != value else format(value, spec)


def table(rows: list[dict]) -> str:
    fuxi = next((r["samples_per_s"] for r in rows if r["library"].startswith("FuxiCTR 2") and "samples_per_s" in r), None)
    deep = next((r["samples_per_s"] for r in rows if r["library"].startswith("DeepCTR") and "samples_per_s" in r), None)
    head = ["library", "model", "threads", "batch", "samples/s", "x FuxiCTR", "x DeepCTR", "test AUC", "test GAUC",
            "peak RSS MB"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["library"], r["model"], "", "", "FAILED: " + r["error"], "", "", "", "", ""])
            continue
        sps = r["samples_per_s"]
        lines.append([r["library"], r["model"], str(r["threads"]), str(r["batch"]), fmt(sps, ",.0f"),
                      fmt(sps / fuxi if fuxi else None, ".2f"), fmt(sps / deep if deep else None, ".2f"),
                      fmt(r.get("test_auc"), ".4f"), fmt(r.get("test_gauc"), ".4f"), fmt(r.get("peak_rss_mb"), ",.0f")])
    ref = REFERENCE
    lines.append([ref["library"], ref["model"], str(ref["threads"]), str(ref["batch"]), fmt(ref["samples_per_s"], ",.0f"),
                  fmt(ref["samples_per_s"] / fuxi if fuxi else None, ".2f"),
                  fmt(ref["samples_per_s"] / deep if deep else None, ".2f"),
                  fmt(ref["test_auc"], ".4f"), fmt(ref["test_gauc"], ".4f"), fmt(ref["peak_rss_mb"], ",.0f")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per library (the first is warm-up)")
    parser.add_argument("--skip-peers", action="store_true", help="lifelong rows only (and the reference line)")
    parser.add_argument("--models", default="din,din:attention_normalization=softmax:l2_mba=0.1,dien,tin,bst,diffumin",
                        help="lifelong models, comma separated, each NAME[:key=value...] (peers always run DIN)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-beauty"), help="prepared P1 dataset folder")
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "amazon-beauty")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-throughput"), help="runs and peer inputs")
    parser.add_argument("--fuxictr-workers", type=int, default=1, help="FuxiCTR DataLoader workers (its default: 1)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if not MAIN_PYTHON.exists():
        parser.error(f"{MAIN_PYTHON} is missing: run `make install` first")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.work.mkdir(parents=True, exist_ok=True)

    run([MAIN_PYTHON, PEERS / "lifelong_worker.py", "prepare", "--data", args.data, "--source", args.source], "prepare")
    rows = lifelong_rows(args, models)
    peers_note = None
    if args.skip_peers:
        peers_note = "skipped (--skip-peers)"
    elif not BENCH_PYTHON.exists():
        peers_note = f"skipped: {BENCH_PYTHON} is missing (see this script's docstring for the set-up)"
    else:
        rows += peers_rows(args)
    text = table(rows)
    notes = [
        f"samples/s: training samples per second, median of epochs 2..{args.epochs} (epoch 1 is warm-up; "
        "validation untimed); test AUC/GAUC at the best validation epoch, all scored with lifelong.metrics.",
        "data: lifelong batches from its CSR store; DeepCTR-Torch gets pre-padded (N, 50) arrays; FuxiCTR gets its "
        "LongCTR parquet layout; both exported from the same prepared samples.",
        "DeepCTR-Torch's DNN uses relu (dnn_activation='dice' fails in its DIN); FuxiCTR clips gradients at norm 10 "
        "(its default).",
        "last line: reference figure measured by the CEO on this machine kind, not measured in this run.",
    ]
    if peers_note:
        notes.append(f"peers: {peers_note}")
    print(text)
    print()
    for note in notes:
        print("  - " + note)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(), "cpus": os.cpu_count(),
        "epochs": args.epochs, "data": str(args.data), "rows": rows, "reference": REFERENCE, "notes": notes,
        "table": text,
    }, indent=2))
    print(f"\nwritten {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
