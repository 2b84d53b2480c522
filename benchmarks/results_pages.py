"""Regenerate every results page under docs/results/ from its JSON rows: the one script for the pages.

    python benchmarks/results_pages.py            # write docs/results/<page>.md (and the plots) from <page>.json
    python benchmarks/results_pages.py --check    # write nothing; exit 1 if a page is not what its JSON gives
    python benchmarks/results_pages.py --fields   # which rows lack command, protocol, dataset, seed or commit

Trains nothing. Each page is: a title; the hand-written part of ``docs/results/notes/<page>.md`` above its
``<!-- table -->`` line (settings); the table, drawn from the JSON by the renderer of the script that wrote
the JSON (``ctr_table.py``, ``seq_table.py``, ``mi_table.py``, ``long_table.py``: their ``summarise`` and
``plot``); the rest of the notes (what the table says, how its numbers were reached); and one line per run
with its dataset, protocol, model, seed, commit and command. The notes are the only prose; the numbers come
from the JSON.

Pages without per-run JSON (``ann_index.md``, ``candidates.md``, ``long_cost_*.md``, ``long_peers.md``) are
measurements that their benchmark writes directly (``--out``); this script lists them in the index and
leaves them alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctr_table  # noqa: E402
import long_table  # noqa: E402
import mi_table  # noqa: E402
import seq_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
NOTES = RESULTS / "notes"
MARK = "<!-- table -->"
FIELDS = ("command", "protocol", "dataset", "seed", "commit")


def _order(values, first: str = "") -> list:
    """Distinct values in order of appearance; those named in ``first`` (a script's --models preset) lead."""
    values = list(dict.fromkeys(values))
    preset = [v for v in dict.fromkeys(first.split(",")) if v in values]
    return preset + [v for v in values if v not in preset]


# ----------------------------------------------------------------------------- one renderer per JSON kind


def ctr_render(rows: list[dict], plot_to: Path | None) -> str:
    specs, datasets = _order((r["spec"] for r in rows), ctr_table.DEFAULT_MODELS), _order(r["dataset"] for r in rows)
    table, _ = ctr_table.summarise(rows, specs, datasets)
    if plot_to is not None and any(r.get("bucket_auc") for r in rows):
        ctr_table.plot(rows, specs, plot_to)
    return table


def ctr_fields(row: dict) -> dict:
    return {"dataset": row["dataset"], "protocol": row["protocol"], "model": row["model"]}


def seq_render(rows: list[dict], plot_to: Path | None) -> str:
    specs = _order((r["spec"] for r in rows), seq_table.SUMMARY_MODELS)
    return seq_table.summarise(rows, specs, _order(r["dataset"] for r in rows))


def seq_fields(row: dict) -> dict:
    return {"dataset": row["dataset"], "protocol": "P2 seq-loo", "model": seq_table.label_of(row["spec"])}


def mi_render(rows: list[dict], plot_to: Path | None) -> str:
    plain = [r for r in rows if not r["dataset"].endswith("-shifted")]
    shifted = [r for r in rows if r["dataset"].endswith("-shifted")]
    text = mi_table.summarise(plain, _order((r["spec"] for r in plain), mi_table.DEFAULT_MODELS),
                              _order(r["dataset"] for r in plain))
    if shifted:
        text += ("\n\nShifted split (`--user-order time`: users ordered by their last event; the latest 10% are the "
                 "test users), the DESMIL rows beside their plain counterparts:\n\n"
                 + mi_table.summarise(shifted, _order((r["spec"] for r in shifted), mi_table.DEFAULT_SHIFTED),
                                      _order(r["dataset"] for r in shifted)))
    return text


def mi_fields(row: dict) -> dict:
    shifted = row["dataset"].endswith("-shifted")
    return {"dataset": row["dataset"], "protocol": "P3 mi-split" + (" (--user-order time)" if shifted else ""),
            "model": mi_table.label_of(row["spec"])}


def long_render(rows: list[dict], plot_to: Path | None) -> str:
    models = _order(r["row"] for r in rows)
    table = long_table.summarise(rows, _order(r["table"] for r in rows), models)
    if plot_to is not None:
        long_table.plot(rows, models, plot_to)
    return table


def long_fields(row: dict) -> dict:
    return {"dataset": f"{row['source']} (L = {row['L']:,})", "protocol": "P5 ctr-long", "model": row["model"]}


@dataclass(frozen=True)
class Kind:
    render: Callable[[list[dict], Path | None], str]
    fields: Callable[[dict], dict]


KINDS = {"ctr": Kind(ctr_render, ctr_fields), "seq": Kind(seq_render, seq_fields), "mi": Kind(mi_render, mi_fields),
         "long": Kind(long_render, long_fields)}


@dataclass(frozen=True)
class Page:
    name: str  # docs/results/<name>.json -> docs/results/<name>.md
    kind: str
    title: str
    plot: str | None = None  # a plot file drawn next to the page


PAGES = [
    Page("ctr_table", "ctr", "CTR models on P1 Beauty, MovieLens-100K, Sports and P4 Taobao (2 epochs, 3 seeds)",
         "auc_by_length_beauty.png"),
    Page("features_table", "ctr", "Features beyond ids: DIN and DIEN with and without (P1 MovieLens-100K and Beauty)"),
    Page("features_ablation_ml100k", "ctr", "Features beyond ids on P1 MovieLens-100K: one group at a time (DIN)"),
    Page("seq_table_summary", "seq", "Next-item retrieval (P2 seq-loo): one configuration per model"),
    Page("seq_table_prefixes", "seq", "Next-item retrieval (P2): prefix samples"),
    Page("seq_table_models", "seq", "Next-item retrieval (P2): IDNP and SASRec with priors on the Amazon sets"),
    Page("seq_table", "seq", "Next-item retrieval (P2): Beauty without the epoch cap"),
    Page("seq_table_60epochs", "seq", "Next-item retrieval (P2): the first table (60-epoch cap)"),
    Page("mi_table", "mi", "Multi-interest retrieval (P3 mi-split)"),
    Page("long_table", "long", "Lifelong sequences (P5 ctr-long): SIM, ETA, SDIM, TWIN against DIN",
         "long_auc_by_length.png"),
]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def config_index() -> dict[tuple[str, str, str, str], str]:
    """configs/index.json (benchmarks/make_configs.py): (table, dataset, spec, seed) -> the row's config."""
    path = RESULTS.parent.parent / "configs" / "index.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    return {(e["table"], str(e["dataset"]), str(e["spec"]), str(e["seed"])): e["config"] for e in entries}


def config_of(configs: dict, page: Page, row: dict) -> str:
    """A link to the config that rebuilds ``row`` (``lifelong train --config ... --seed N``), or a dash."""
    key = (page.name, str(row.get("dataset") or row.get("table")), str(row.get("spec") or row.get("row")),
           str(row.get("seed")))
    config = configs.get(key)
    return f"[{Path(config).name}](../../{config})" if config else "-"


def run_lines(page: Page, rows: list[dict]) -> list[str]:
    """One line per run: dataset, protocol, model, seed, commit, command (what every row must carry), and the
    config that rebuilds it."""
    kind, configs = KINDS[page.kind], config_index()
    lines = ["| dataset | protocol | model | seed | commit | command | config |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        shown = kind.fields(row)
        commit = row.get("commit") or "not recorded"
        command = row.get("command") or "not recorded"
        lines.append(f"| {_cell(shown['dataset'])} | {_cell(shown['protocol'])} | {_cell(shown['model'])} | "
                     f"{_cell(row.get('seed', 'not recorded'))} | {_cell(commit)} | `{_cell(command)}` | "
                     f"{config_of(configs, page, row)} |")
    return lines


def missing_fields(page: Page, rows: list[dict]) -> dict[str, int]:
    """How many rows lack each of FIELDS (protocol and dataset come from the row or its page's protocol)."""
    kind, counts = KINDS[page.kind], {}
    for row in rows:
        shown = {**kind.fields(row), **row}
        for field in FIELDS:
            if not shown.get(field):
                counts[field] = counts.get(field, 0) + 1
    return counts


def notes_of(page: Page) -> tuple[str, str]:
    """The hand-written parts of a page: above the table (settings) and below it (what it says)."""
    path = NOTES / f"{page.name}.md"
    if not path.exists():
        return "", ""
    text = path.read_text().strip()
    above, mark, below = text.partition(MARK)
    return (above.strip(), below.strip()) if mark else ("", text)


def render(page: Page, plots: bool) -> str:
    rows = json.loads((RESULTS / f"{page.name}.json").read_text())
    above, below = notes_of(page)
    table = KINDS[page.kind].render(rows, RESULTS / page.plot if plots and page.plot else None)
    seeds = sorted({str(r.get("seed")) for r in rows})
    parts = [f"# {page.title}",
             f"*Generated by `python benchmarks/results_pages.py` from [{page.name}.json]({page.name}.json) "
             f"({len(rows)} runs, seeds {', '.join(seeds)}); the prose is "
             f"[notes/{page.name}.md](notes/{page.name}.md). Do not edit this page by hand.*"]
    if above:
        parts.append(above)
    parts.append(table)
    if page.plot and (RESULTS / page.plot).exists():
        parts.append(f"![{page.title}]({page.plot})")
    if below:
        parts.append(below)
    missing = missing_fields(page, rows)
    runs = ["## Runs", "Every run of the table: its dataset, protocol, model, seed, the commit it ran at, the "
                       "command that trained it (paths relative to the repository; `../shared/data` is where the raw "
                       "datasets were) and the config that rebuilds it: `lifelong train --config CONFIG --seed SEED` "
                       "after the `lifelong prepare` its header names ([configs/](../../configs/README.md))."]
    if missing.get("commit"):
        runs.append(f"The JSON rows do not record the commit their runs ran at ({missing['commit']} of {len(rows)} "
                    f"rows: they predate the field; the notes above name the commits where they are known, and "
                    f"`git log docs/results/{page.name}.json` shows when the rows were recorded).")
    parts.append("\n\n".join(runs))
    parts.append("\n".join(run_lines(page, rows)))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is out of date")
    parser.add_argument("--fields", action="store_true", help="print which rows lack command, protocol, dataset, "
                                                              "seed or commit")
    parser.add_argument("--pages", default=",".join(p.name for p in PAGES), help="which pages (default: all)")
    args = parser.parse_args()
    wanted = args.pages.split(",")
    unknown = sorted(set(wanted) - {p.name for p in PAGES})
    if unknown:
        parser.error(f"unknown pages {unknown}; pages: {', '.join(p.name for p in PAGES)}")
    stale = []
    for page in (p for p in PAGES if p.name in wanted):
        if args.fields:
            rows = json.loads((RESULTS / f"{page.name}.json").read_text())
            missing = missing_fields(page, rows)
            print(f"{page.name}: {len(rows)} rows; " + (", ".join(f"{k} missing in {v}" for k, v in missing.items())
                                                        or "every row has " + ", ".join(FIELDS)))
            continue
        text = render(page, plots=not args.check)
        target = RESULTS / f"{page.name}.md"
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(page.name)
            continue
        target.write_text(text)
        print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print("out of date (run python benchmarks/results_pages.py): " + ", ".join(stale))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
