"""Merge the ``table.json`` files (later ones replace earlier rows) written by ``ctr_table.py`` (and their reruns) into the markdown of the 12-epoch CTR table (docs/results/measurements.md).

    python benchmarks/readme_table.py runs/table-a/table.json runs/table-b/table.json ... \
        [--rerun runs/table-a2/table.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = {"beauty": 0, "sports": 1, "ml100k": 2, "taobao": 3}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tables", nargs="+", type=Path)
    parser.add_argument("--rerun", nargs="*", type=Path, default=[])
    args = parser.parse_args()
    # a later table replaces an earlier one's row for the same dataset, model and seed
    rows = list({(r["dataset"], r["model"], r["seed"]): r for path in args.tables
                 for r in json.loads(path.read_text())}.values())
    reruns = {(r["dataset"], r["model"], r["seed"]): r for path in args.rerun for r in json.loads(path.read_text())}
    rows.sort(key=lambda r: (ORDER.get(r["dataset"], 9), r["model"] != "sumpool", r["model"]))
    print("| dataset | protocol | model | test AUC | test GAUC | test logloss | best epoch | rerun max diff |")
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        if r["model"] == "sumpool":
            base[r["dataset"]] = r["auc"]
        again = reruns.get((r["dataset"], r["model"], r["seed"]))
        diff = f"{max(abs(r[m] - again[m]) for m in ('auc', 'gauc', 'logloss')):.5f}" if again else "–"
        gain = f" ({r['auc'] - base[r['dataset']]:+.4f})" if r["model"] != "sumpool" and r["dataset"] in base else ""
        print(f"| {r['dataset']} | {r['protocol']} | {r['model']} | {r['auc']:.4f}{gain} | {r['gauc']:.4f} "
              f"| {r['logloss']:.4f} | {r['best_epoch']} | {diff} |")
    print("\nCommands:\n")
    for r in rows:
        print(f"    {r['command']}")


if __name__ == "__main__":
    main()
