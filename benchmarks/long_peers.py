"""Long-history CTR training against FuxiCTR's LongCTR models (SDIM, ETA; SIM, TWIN on request) on the same P5
samples at L = 1,000: training samples/s, peak RSS (DataLoader workers included) and test AUC, side by side.

    python benchmarks/long_peers.py [--models sdim,eta] [--users 1000 | --samples N | --data DIR]
        [--epochs 2] [--batch-size 256] [--threads 1] [--repeats 1] [--out docs/results/long_peers.md]

Data: the lifelong synthetic log (``synthetic-lifelong``: ``--users`` users of ``--events-per-user`` events,
``--seed``) prepared under P5 (``ctr-long``) by ``lifelong prepare`` in ``--work`` (reused while the spec is
the same), or an already prepared P5 dataset (``--data``). Under P5 every user gives 19 training targets, each
with two negatives: 57 training samples per user. ``--samples N`` caps the size: ``ceil(N / 57)`` users.
FuxiCTR reads the very same samples, exported by ``benchmarks/peers/longctr_export.py`` (LongCTR parquet: the
sample rows, every user's item sequence, the item table; checked against lifelong's ``Collator``).

Each run is a fresh process, the two sides interleaved (for each repeat, for each model: lifelong, then
FuxiCTR); the table gives medians over ``--repeats``.

- lifelong: ``lifelong train --data D --model M --max-length L --batch-size B --threads T --epochs E`` (in
  .venv), with ``--set item_features=false`` (the synthetic log also has attribute bags and content vectors;
  the peers read item id and category only) and, for the two-stage models, ``time_gap=false`` (no time
  feature on the FuxiCTR side); ``sim`` runs ``search=soft`` (FuxiCTR's SIM has only the soft search).
  The hashing is the zoo configs' (SDIM ``hashes=8 hash_bits=4``: 2 signatures of 4 bits; ETA ``hashes=32``),
  so both sides train the same model; ``--lifelong-defaults`` keeps lifelong's, the papers' (SDIM 48 bits in
  16 signatures of 3, ETA 64 bits). Everything else is lifelong's defaults (embedding_dim 32, top_k 100,
  short_length 50, ...).
- FuxiCTR: ``benchmarks/peers/fuxictr_longctr.py`` (in .venv-bench) runs the model of FuxiCTR's LongCTR zoo
  (``../shared/peers/fuxictr-longctr``) with the zoo's config as the base and embedding_dim 32, top-k 100,
  the same L, B and T, its DataLoader workers (``--num-workers``, default the zoo config's 3).

Measures (the same definition on both sides):

- samples/s: training samples / wall seconds of an epoch's training loop (batching or data loading included,
  the end-of-epoch validation excluded); the median over the epochs after the first (the warm-up epoch), or
  the only epoch with ``--epochs 1``. lifelong's is its own ``train_samples_per_s`` (metrics.jsonl).
- peak RSS: the high-water marks of the main process plus its largest child (``ru_maxrss`` of
  RUSAGE_SELF + RUSAGE_CHILDREN; FuxiCTR's children are its DataLoader workers, lifelong has none): for
  FuxiCTR as its worker reports it, for lifelong from ``os.wait4`` on the training process. The details
  table adds what the driver sampled from /proc every ``--sample-every`` seconds: the largest sum of RSS and
  of PSS over the whole process tree at one instant (RSS counts pages the forked workers share with the main
  process once per process; PSS splits them).
- test AUC (and GAUC): the best validation epoch's test predictions, scored for both sides by the same code
  (``lifelong.metrics`` via ``benchmarks/peers/lifelong_worker.py score``).

Needs ``make bench-setup`` (.venv-bench with fuxictr 2.3.10 and keras-preprocessing). Raw results (every run):
``<work>/<out's stem>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
LIFELONG = ROOT / ".venv" / "bin" / "lifelong"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
TRAIN_SAMPLES_PER_USER = 57  # P5: 19 training targets per user, each with two negatives
MODELS = ("sdim", "eta", "sim", "twin")
LIFELONG_OPTIONS = {  # the peers' feature set: item id and category, no time
    "sdim": ["item_features=false"],
    "eta": ["item_features=false", "time_gap=false"],
    "sim": ["item_features=false", "time_gap=false", "search=soft"],
    "twin": ["item_features=false", "time_gap=false"],
}
MATCHED_HASHES = {  # the zoo configs' hashing (lifelong's defaults are the papers': SDIM 48 bits / tau 3, ETA 64 bits)
    "sdim": ["hashes=8", "hash_bits=4"],  # num_hashes 2 x hash_bits 4: 2 signatures of 4 bits
    "eta": ["hashes=32"],  # hash_bits 32
}
REFERENCE = "SDIM 723 samples/s at 2.4 GB RSS at L = 1,000 (FuxiCTR's LongCTR loader; this machine kind, 2026-11-22)"
BAR = (3.0, 0.5)  # issue 28: sdim and eta at >= 3x FuxiCTR's samples/s with <= half its peak RSS


def log(message: str) -> None:
    print(f"[long_peers] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- process tree


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(pid: int) -> list[int]:
    children, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    values = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    values[name] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


class TreeSampler(threading.Thread):
    """Samples the RSS and PSS of a process and all its descendants until stopped; keeps the largest sums."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.stop = threading.Event()
        self.rss_kib = self.pss_kib = 0
        self.max_processes = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            rss = pss = 0
            pids = _tree(self.pid)
            for p in pids:
                rss += _kib(f"/proc/{p}/status", ("VmRSS",)).get("VmRSS", 0)
                pss += _kib(f"/proc/{p}/smaps_rollup", ("Pss",)).get("Pss", 0)
            self.rss_kib, self.pss_kib = max(self.rss_kib, rss), max(self.pss_kib, pss)
            self.max_processes = max(self.max_processes, len(pids))
            self.samples += 1
            self.stop.wait(self.every)


def measured(command: list, label: str, every: float, env: dict, stdout=None) -> dict:
    """Run ``command`` (stderr passes through), sampling its process tree; raise on failure."""
    log(f"{label}: {' '.join(str(c) for c in command)}")
    started = time.perf_counter()
    process = subprocess.Popen([str(c) for c in command], env=env, stdout=stdout or sys.stderr)
    sampler = TreeSampler(process.pid, every)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{label} failed with exit status {process.returncode}")
    return {"wall_s": round(time.perf_counter() - started, 1), "wait4_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "tree_rss_peak_mb": round(sampler.rss_kib / 1024, 1), "tree_pss_peak_mb": round(sampler.pss_kib / 1024, 1),
            "tree_max_processes": sampler.max_processes, "tree_samples": sampler.samples}


def plain(command: list, label: str, env: dict) -> None:
    log(f"{label}: {' '.join(str(c) for c in command)}")
    completed = subprocess.run([str(c) for c in command], env=env, stdout=sys.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{label} failed with exit status {completed.returncode}")


# ------------------------------------------------------------------------------------------- data


def prepare_data(args, env: dict) -> Path:
    if args.data:
        return args.data
    users = math.ceil(args.samples / TRAIN_SAMPLES_PER_USER) if args.samples else args.users
    low, high = (int(x) for x in args.events_per_user.split(","))
    spec = {"n_users": users, "events_per_user": [low, high], "seed": args.seed}
    data = args.work / f"p5-u{users}-e{low}-{high}-s{args.seed}"
    spec_file = args.work / f"{data.name}.spec.json"
    if (data / "manifest.json").exists() and spec_file.exists() and json.loads(spec_file.read_text()) == spec:
        log(f"dataset {data} exists, reusing it")
        return data
    args.work.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec))
    plain([LIFELONG, "prepare", "--recipe", "synthetic-lifelong", "--input", spec_file, "--protocol", "ctr-long",
           "--out", data, "--overwrite"], "prepare", env)
    return data


# ------------------------------------------------------------------------------------------- runs


def score(data: Path, predictions: Path, result: Path, env: dict) -> dict:
    plain([MAIN_PYTHON, PEERS / "lifelong_worker.py", "score", "--data", data, "--predictions", predictions,
           "--result", result], "score", env)
    return json.loads(result.read_text())


def lifelong_run(args, data: Path, model: str, repeat: int, env: dict) -> dict:
    run = args.work / "runs" / f"lifelong-{model}-{repeat}"
    options = LIFELONG_OPTIONS[model] + ([] if args.lifelong_defaults else MATCHED_HASHES.get(model, [])) \
        + args.lifelong_set
    command = [LIFELONG, "train", "--data", data, "--model", model, "--max-length", args.max_length,
               "--epochs", args.epochs, "--batch-size", args.batch_size, "--threads", args.threads,
               "--out", run, "--overwrite", "--no-progress", *[a for o in options for a in ("--set", o)]]
    m = measured(command, f"lifelong {model} #{repeat + 1}", args.sample_every, env)
    results = json.loads((run / "results.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["train_samples_per_s"] for r in records]
    return {"side": "lifelong", "model": model, "repeat": repeat, "options": options,
            "samples_per_s": results["train_samples_per_s"], "epoch_samples_per_s": speeds,
            "peak_rss_mb": m["wait4_maxrss_mb"], "peak_rss_self_mb": m["wait4_maxrss_mb"], "peak_rss_children_mb": 0.0,
            "test_auc": results["test"]["auc"], "test_gauc": results["test"]["gauc"],
            "best_epoch": results["best_epoch"], **m}


def fuxictr_run(args, data: Path, inputs: Path, model: str, repeat: int, env: dict) -> dict:
    work = args.work / "fuxictr"
    result = args.work / "runs" / f"fuxictr-{model}-{repeat}.json"
    predictions = args.work / "runs" / f"fuxictr-{model}-{repeat}-test.npy"
    for path in (result, predictions):
        path.unlink(missing_ok=True)
    command = [BENCH_PYTHON, PEERS / "fuxictr_longctr.py", "train", "--model", model, "--inputs", inputs,
               "--work", work, "--epochs", args.epochs, "--batch-size", args.batch_size, "--threads", args.threads,
               "--result", result, "--predictions", predictions, *[a for o in args.fuxictr_set for a in ("--set", o)]]
    if args.num_workers is not None:
        command += ["--num-workers", args.num_workers]
    m = measured(command, f"FuxiCTR {model} #{repeat + 1}", args.sample_every, env, stdout=subprocess.DEVNULL)
    r = json.loads(result.read_text())
    metrics = score(data, predictions, args.work / "runs" / f"fuxictr-{model}-{repeat}-metrics.json", env)
    return {"side": "FuxiCTR", "model": model, "repeat": repeat, "samples_per_s": r["samples_per_s"],
            "epoch_samples_per_s": r["epoch_samples_per_s"], "peak_rss_mb": r["peak_rss_mb"],
            "peak_rss_self_mb": r["peak_rss_self_mb"], "peak_rss_children_mb": r["peak_rss_children_mb"],
            "test_auc": metrics["auc"], "test_gauc": metrics["gauc"], "test_auc_fuxictr": r["test_auc"],
            "best_epoch": r["best_epoch"], "params": r["params"], "pad_sequences": r["pad_sequences"],
            "version": r["version"], **m}


# ------------------------------------------------------------------------------------------- report


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(statistics.median(values)) if values else None


def fmt(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def summary(rows: list[dict], models: list[str]) -> list[dict]:
    out = []
    for model in models:
        entry = {"model": model}
        for side in ("lifelong", "FuxiCTR"):
            runs = [r for r in rows if r["model"] == model and r["side"] == side and "error" not in r]
            errors = [r["error"] for r in rows if r["model"] == model and r["side"] == side and "error" in r]
            entry[side] = {k: median(runs, k) for k in ("samples_per_s", "peak_rss_mb", "peak_rss_self_mb",
                                                        "peak_rss_children_mb", "tree_rss_peak_mb",
                                                        "tree_pss_peak_mb", "test_auc", "test_gauc")}
            entry[side]["runs"], entry[side]["errors"] = len(runs), errors
        ll, fx = entry["lifelong"], entry["FuxiCTR"]
        both = ll["samples_per_s"] and fx["samples_per_s"]
        entry["speed_ratio"] = ll["samples_per_s"] / fx["samples_per_s"] if both else None
        entry["rss_ratio"] = ll["peak_rss_mb"] / fx["peak_rss_mb"] if ll["peak_rss_mb"] and fx["peak_rss_mb"] else None
        if entry["speed_ratio"] is not None and entry["rss_ratio"] is not None and model in ("sdim", "eta"):
            entry["bar"] = entry["speed_ratio"] >= BAR[0] and entry["rss_ratio"] <= BAR[1]
        out.append(entry)
    return out


def markdown(args, data: Path, info: dict, rows: list[dict], entries: list[dict]) -> str:
    fx_run = next((r for r in rows if r["side"] == "FuxiCTR" and "error" not in r), {})
    speed_over = "the only epoch (warm-up included)" if args.epochs == 1 else \
        f"median of epochs 2..{args.epochs} (epoch 1 is the warm-up)"
    lines = [
        "# Long-history training: lifelong vs FuxiCTR's LongCTR models (issue 28)", "",
        f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}) by `python benchmarks/long_peers.py "
        f"{' '.join(args.argv)}`.", "",
        f"- Data: `{data}` (P5 `ctr-long`), {info['samples']['train']:,} training, {info['samples']['valid']:,} "
        f"validation, {info['samples']['test']:,} test samples; L = {args.max_length:,} "
        f"(mean kept training history {info['mean_train_history']:,.0f} events); the same samples on both sides "
        f"(exported by `benchmarks/peers/longctr_export.py`).",
        f"- Both sides: batch {args.batch_size}, {args.threads} torch thread(s) (OMP_NUM_THREADS={args.threads}), "
        f"{args.epochs} epoch(s), each run a fresh process, median of {args.repeats} run(s).",
        "- lifelong: `lifelong train` with its defaults (embedding_dim 32, top_k 100, short_length 50) and "
        "`item_features=false` (item id + category, as the peers), `time_gap=false` for the two-stage models, "
        "`search=soft` for sim; batches built in the training process (no workers). "
        + ("Hashing: lifelong's defaults, the papers' (SDIM 48 bits in signatures of 3, ETA 64 bits)."
           if args.lifelong_defaults else
           "Hashing as the zoo configs have it, so both sides run the same model: SDIM `hashes=8 hash_bits=4` (2 "
           "signatures of 4 bits), ETA `hashes=32` (lifelong's defaults are the papers': SDIM 48 bits in 16 "
           "signatures of 3, ETA 64 bits; `--lifelong-defaults`)."),
        f"- FuxiCTR {fx_run.get('version', '2.3.10')}: the LongCTR zoo's model (../shared/peers/fuxictr-longctr), its "
        "model config as the base with embedding_dim 32 and top-k 100, LongCTRDataLoader with "
        f"{fx_run.get('params', {}).get('num_workers', '?')} DataLoader workers; pad_sequences from "
        f"{fx_run.get('pad_sequences', '?')}.",
        f"- samples/s: training samples / wall seconds of the epoch's training loop (data loading included, "
        f"validation excluded), {speed_over}.",
        "- peak RSS: ru_maxrss of the training process + its largest child (RUSAGE_SELF + RUSAGE_CHILDREN; "
        "FuxiCTR's children are its DataLoader workers; lifelong has none).",
        "- test AUC: best validation epoch, both sides scored by `lifelong.metrics`.", "",
        "| model | lifelong samples/s | FuxiCTR samples/s | speed ratio | lifelong peak RSS MB | "
        "FuxiCTR peak RSS MB | RSS ratio | lifelong test AUC | FuxiCTR test AUC | bar (>= 3x, <= 0.5x RSS) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        ll, fx = e["lifelong"], e["FuxiCTR"]
        bar = "-" if "bar" not in e else ("met" if e["bar"] else "not met")
        lines.append(f"| {e['model']} | {fmt(ll['samples_per_s'], ',.0f')} | {fmt(fx['samples_per_s'], ',.0f')} | "
                     f"{fmt(e['speed_ratio'], '.2f')} | {fmt(ll['peak_rss_mb'], ',.0f')} | "
                     f"{fmt(fx['peak_rss_mb'], ',.0f')} | {fmt(e['rss_ratio'], '.2f')} | "
                     f"{fmt(ll['test_auc'], '.4f')} | {fmt(fx['test_auc'], '.4f')} | {bar} |")
        for side in ("lifelong", "FuxiCTR"):
            for error in e[side]["errors"]:
                lines.append(f"| {e['model']} | {side} FAILED: {error} | | | | | | | | |")
    lines += ["", f"Reference (not measured in this run): {REFERENCE}.", "",
              "Details (medians): peak RSS split into the main process and its largest child; the largest "
              f"sum over the process tree at one instant, sampled every {args.sample_every}s from /proc (RSS "
              "counts the pages forked workers share with the main process in every process; PSS splits them); "
              "test GAUC.", "",
              "| model | side | samples/s per epoch (first run) | self MB | largest child MB | tree RSS MB | "
              "tree PSS MB | test GAUC |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for e in entries:
        for side in ("lifelong", "FuxiCTR"):
            s = e[side]
            first = next((r for r in rows if r["model"] == e["model"] and r["side"] == side and "error" not in r), None)
            epochs = ", ".join(f"{v:,.0f}" for v in first["epoch_samples_per_s"]) if first else "-"
            lines.append(f"| {e['model']} | {side} | {epochs} | {fmt(s['peak_rss_self_mb'], ',.0f')} | "
                         f"{fmt(s['peak_rss_children_mb'], ',.0f')} | {fmt(s['tree_rss_peak_mb'], ',.0f')} | "
                         f"{fmt(s['tree_pss_peak_mb'], ',.0f')} | {fmt(s['test_gauc'], '.4f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sdim,eta", help=f"comma-separated, of {','.join(MODELS)}")
    parser.add_argument("--data", type=Path, help="an already prepared P5 dataset (instead of --users/--samples)")
    parser.add_argument("--users", type=int, default=1000, help="synthetic users to prepare (57 training samples each)")
    parser.add_argument("--samples", type=int, help="cap: about this many training samples (ceil(N / 57) users)")
    parser.add_argument("--events-per-user", default="1100,1300", help="LOW,HIGH events per synthetic user")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic log's seed")
    parser.add_argument("--max-length", type=int, default=1000, help="L")
    parser.add_argument("--epochs", type=int, default=2, help="per run; samples/s skips the first when > 1")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--num-workers", type=int, help="FuxiCTR DataLoader workers (default: its config's 3)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--lifelong-defaults", action="store_true",
                        help="lifelong's own hashing (the papers': SDIM 48 bits / tau 3, ETA 64 bits) instead of the "
                             "zoo configs' (SDIM 2 x 4 bits, ETA 32 bits)")
    parser.add_argument("--lifelong-set", action="append", default=[], help="extra lifelong model option key=value")
    parser.add_argument("--fuxictr-set", action="append", default=[], help="extra FuxiCTR parameter key=value")
    parser.add_argument("--sample-every", type=float, default=0.1, help="seconds between /proc samples")
    parser.add_argument("--work", type=Path, default=Path("/tmp/long_peers"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "long_peers.md")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {MODELS}")
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: run `make bench-setup` first")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(exist_ok=True)

    data = prepare_data(args, env)
    inputs = args.work / "longctr"
    plain([MAIN_PYTHON, PEERS / "longctr_export.py", "--data", data, "--out", inputs, "--max-length",
           args.max_length], "export", env)
    info = json.loads((inputs / "info.json").read_text())
    plain([BENCH_PYTHON, PEERS / "fuxictr_longctr.py", "feature-map", "--inputs", inputs, "--work",
           args.work / "fuxictr"], "FuxiCTR feature map", env)

    rows = []
    for repeat in range(args.repeats):
        for model in models:
            for side, run in (("lifelong", lambda: lifelong_run(args, data, model, repeat, env)),
                              ("FuxiCTR", lambda: fuxictr_run(args, data, inputs, model, repeat, env))):
                try:
                    rows.append(run())
                except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as exc:
                    rows.append({"side": side, "model": model, "repeat": repeat, "error": str(exc)})
                log(json.dumps(rows[-1]))
    entries = summary(rows, models)
    text = markdown(args, data, info, rows, entries)
    raw = args.work / f"{args.out.stem}.json"
    raw.write_text(json.dumps({"rows": rows, "summary": entries, "data": str(data), "info": info}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
