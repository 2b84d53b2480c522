"""The embedded default: a synthetic log with planted, drifting interests, prepared under P1 and used
to train ``sumpool`` and ``din`` side by side. What ``make demo`` runs."""

from __future__ import annotations

import json
from pathlib import Path

from lifelong.data.schema import EventLog
from lifelong.data.synthetic import synthetic_log
from lifelong.outputs import DEMO, replace_folder
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.train import TrainConfig, train

DEMO_MODELS = ("sumpool", "din")


def run_demo(out: Path, *, n_users: int = 2000, epochs: int = 4, seed: int = 2024, console=None) -> list[dict]:
    """Generate, prepare and train; return one row of test metrics per model."""
    out = Path(out)
    replace_folder(out, DEMO)  # only an earlier demo folder (its demo.json, nothing else in it) is replaced
    out.mkdir(parents=True)
    (out / "demo.json").write_text(json.dumps({"format": "lifelong-demo/1", "users": n_users, "epochs": epochs,
                                               "seed": seed}))
    events, items = synthetic_log(n_users=n_users, seed=seed)
    log = EventLog(events=events, items=items, sources=[], rejected=None, recipe="synthetic")
    data = prepare(log, out / "data", ProtocolOptions(name="ctr-din", seed=seed))
    if console is not None:
        console.print(f"synthetic log: {events.height:,} events of {n_users:,} users -> {data}")
    rows = []
    for model in DEMO_MODELS:
        config = TrainConfig(data=str(data), model=model, out=str(out / model), epochs=epochs, batch_size=1024,
                             patience=2, seed=seed, results_csv=str(out / "results.csv"),
                             progress=console is not None)
        results = train(config, command=f"lifelong demo --out {out} --users {n_users} --epochs {epochs} --seed {seed}")
        rows.append({"model": model, **results["test"], "best_epoch": results["best_epoch"],
                     "samples_per_s": results["train_samples_per_s"]})
    return rows
