"""The embedded default, what ``make demo`` runs: the library's breadth in about two minutes on two cores.

A synthetic log with planted, drifting interests is prepared twice, under P1 (ctr-din) for ranking and
under P2 (seq-loo) for retrieval; a CTR pair (``sumpool``, the pooled baseline, and ``din``, target
attention) and a retrieval model (``sasrec``) train on it through the Python API (:mod:`lifelong.api`,
the functions ``lifelong prepare`` / ``train`` call), and an HTML report of the three runs is written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lifelong.data.schema import EventLog
from lifelong.data.synthetic import synthetic_log
from lifelong.display import wrapped
from lifelong.outputs import DEMO, replace_folder

CTR_MODELS = ("sumpool", "din")
RETRIEVAL_MODELS = ("sasrec",)
DEMO_MODELS = CTR_MODELS + RETRIEVAL_MODELS
# Sized for ~2 minutes on two busy cores: a catalogue small enough for each item to be seen often.
DEMO_ITEMS = 600
DEMO_CATEGORIES = 20
RETRIEVAL_OPTIONS = {"embedding_dim": 32, "loss": "full"}
RETRIEVAL_EPOCHS_PER_CTR_EPOCH = 10  # a sasrec epoch over 800 users is a fraction of a second
# One intra-op thread: on two cores shared with other work, two OpenMP threads per process ran the demo's
# small batches 2-5x slower than one (measured: sumpool 2,321 vs 11,801 samples/s at load 5).
THREADS = 1


def run_demo(out: Path, *, n_users: int = 800, epochs: int = 2, seed: int = 2024, console=None,
             report: bool = True) -> dict:
    """Generate, prepare, train the three models, write the report.

    Returns ``{"ctr": [row per CTR model], "retrieval": [row per retrieval model], "report": path or
    None, "report_note": why there is none, "seconds": wall time}``; a row holds the model's test metrics,
    its best epoch, its training throughput and its run folder."""
    from lifelong.api import train
    from lifelong.pipeline import ProtocolOptions, prepare

    started = time.perf_counter()
    out = Path(out)
    replace_folder(out, DEMO)  # only an earlier demo folder (its demo.json, nothing else in it) is replaced
    out.mkdir(parents=True)
    (out / "demo.json").write_text(json.dumps({"format": "lifelong-demo/2", "users": n_users, "epochs": epochs,
                                               "seed": seed}))
    def say(message: str) -> None:  # a line of prose, wrapped at 120 columns in a terminal and a log alike
        if console is not None:
            console.print(wrapped(message, "  "), highlight=False, markup=False)

    events, items = synthetic_log(n_users=n_users, n_items=DEMO_ITEMS, n_categories=DEMO_CATEGORIES, seed=seed)
    log = EventLog(events=events, items=items, sources=[], rejected=None, recipe="synthetic")
    data_ctr = prepare(log, out / "data", ProtocolOptions(name="ctr-din", seed=seed))
    data_seq = prepare(log, out / "data-seq", ProtocolOptions(name="seq-loo", seed=seed))
    say(f"synthetic log: {events.height:,} events, {n_users:,} users, {DEMO_ITEMS:,} items; prepared under P1 "
        f"ctr-din ({data_ctr}) and P2 seq-loo ({data_seq})")
    command = f"lifelong demo --out {out} --users {n_users} --epochs {epochs} --seed {seed}"
    progress = console is not None
    ctr, retrieval = [], []
    for model in CTR_MODELS:
        say(f"training {model} (CTR, P1) ...")
        results = train(data_ctr, model, out / model, epochs=epochs, batch_size=256, patience=2, seed=seed,
                        threads=THREADS, results_csv=str(out / "results.csv"), progress=progress, command=command)
        ctr.append({"model": model, **results["test"], "best_epoch": results["best_epoch"],
                    "samples_per_s": results["train_samples_per_s"], "run": str(out / model)})
    for model in RETRIEVAL_MODELS:
        say(f"training {model} (retrieval, P2 full ranking) ...")
        results = train(data_seq, model, out / model, epochs=epochs * RETRIEVAL_EPOCHS_PER_CTR_EPOCH, batch_size=128,
                        lr=0.003, patience=3, seed=seed, threads=THREADS, progress=progress,
                        model_options=RETRIEVAL_OPTIONS, command=command)
        speed = next((v for k, v in results.items() if k.startswith("train_") and k.endswith("_per_s")), 0.0)
        retrieval.append({"model": model, **results["test"], "best_epoch": results["best_epoch"],
                          "samples_per_s": speed, "run": str(out / model)})
    page, note = None, None
    if report:
        page, note = _report([out / m for m in DEMO_MODELS], out / "report")
    return {"ctr": ctr, "retrieval": retrieval, "report": page, "report_note": note,
            "seconds": time.perf_counter() - started}


def _report(runs: list[Path], out: Path) -> tuple[Path | None, str | None]:
    """The HTML report of the demo's runs (:func:`lifelong.report.write_report`), or why there is none."""
    try:
        from lifelong.report import write_report
    except ImportError:
        return None, "no report: this lifelong has no lifelong.report module"
    try:
        return write_report(runs, out), None
    except ValueError as error:  # a UserError: matplotlib missing ...
        return None, f"no report: {error}"
