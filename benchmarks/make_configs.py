"""One TOML config per results row: ``lifelong train --config configs/...`` rebuilds the row.

Reads the rows of docs/results/*.json (each holds the exact ``lifelong train`` command that produced it),
parses each command with the CLI's own parser, and writes ``configs/<table>/<dataset>-<spec>.toml`` with
the row's train and model options (the seed of the row's first run; the table's other seeds are
``--seed N`` overrides, listed in the file), the prepared dataset it reads (``data``: ``runs/data/...``,
its ``lifelong prepare`` command in the file's header and in configs/README.md) and a run folder
(``out``). Rows of several tables that ran the same options share the first table's file.
``configs/index.json`` maps every row (table, dataset, spec, seed) to its config and the command that
rebuilds it, for the results pages to link.

    python benchmarks/make_configs.py           # (re)write configs/
    python benchmarks/make_configs.py --check   # exit 1 when configs/ is not what the JSONs give
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import ctr_table  # noqa: E402  (the tables' own dataset recipes)
import long_table  # noqa: E402
import mi_table  # noqa: E402
import seq_table  # noqa: E402

RESULTS = ROOT / "docs" / "results"
CONFIGS = ROOT / "configs"
# The tables, in the order their files are claimed (a row identical to an earlier table's shares its file).
TABLES = ("ctr_table", "features_table", "features_ablation_ml100k", "long_table", "seq_table",
          "seq_table_60epochs", "seq_table_models", "seq_table_prefixes", "seq_table_summary", "mi_table")
TABLE_PROTOCOL = {"long_table": "ctr-long", "mi_table": "mi-split", "seq_table": "seq-loo",
                  "seq_table_60epochs": "seq-loo", "seq_table_models": "seq-loo", "seq_table_prefixes": "seq-loo",
                  "seq_table_summary": "seq-loo"}
PROTOCOL_TAG = {"ctr-din": "p1", "seq-loo": "p2", "mi-split": "p3", "ctr-time": "p4", "ctr-long": "p5"}
# What a config leaves out of the command: where the run goes and how it reports (not what it computes).
DROPPED = {"data", "out", "config", "progress", "results_csv", "resume", "overwrite", "set"}
ORDER = ("model", "data", "out", "seed", "epochs", "patience", "batch_size", "max_length", "lr", "weight_decay",
         "lr_decay", "lr_decay_patience", "clip_norm", "samples", "threads", "device", "precision",
         "save_predictions", "refit_with_valid", "desmil")


def _shared(path: str) -> str:
    """The tables' absolute ../shared/data paths, relative to the repository root (where you run train)."""
    shared = str(ctr_table.SHARED)
    return "../shared/data" + path[len(shared):] if path.startswith(shared) else path


def _sources() -> dict[str, list[str]]:
    """Raw dataset name -> ``lifelong prepare`` arguments (recipe and input) of the tables' scripts."""
    sources = {name: list(args) for name, args in seq_table.DATASETS.items()}
    sources.update({name: list(args) for name, args in mi_table.SOURCES.items()})
    sources.update({name: [a for a in args if a not in ("--protocol", "ctr-time")]
                    for name, (_, args) in ctr_table.DATASETS.items()})
    for name, args in long_table.SOURCES.items():
        sources.setdefault(name, list(args))
        if name in long_table.SYNTHETIC:
            sources[name] = [*args, "--input", f"configs/datasets/{name}.json"]
    return {name: [_shared(a) for a in args] for name, args in sources.items()}


def dataset_key(table: str, row: dict, data: str) -> tuple[str, str]:
    """(the prepared dataset's folder name under runs/data, its protocol) of a row."""
    protocol = TABLE_PROTOCOL.get(table)
    if protocol is None:  # the CTR tables say it per row: "P1 ctr-din", "P4 ctr-time"
        protocol = str(row.get("protocol", "P1 ctr-din")).split()[-1]
    return f"{PROTOCOL_TAG[protocol]}-{Path(data).name}", protocol


def prepare_command(key: str, protocol: str, sources: dict[str, list[str]]) -> str:
    name = key.split("-", 1)[1]
    shifted = name.endswith("-shifted")
    args = [*sources[name.removesuffix("-shifted")], "--protocol", protocol, *(["--user-order", "time"] if shifted else []),
            "--out", f"runs/data/{key}"]
    return "lifelong prepare " + " ".join(shlex.quote(a) for a in args)


def _train_command():
    import typer

    from lifelong.cli import app

    return typer.main.get_command(app).commands["train"]


def parse_train(command: str) -> dict:
    """The options of a ``lifelong train ...`` command line, parsed by the CLI's own parser (given ones only)."""
    words = shlex.split(command)
    if words[:2] != ["lifelong", "train"]:
        raise ValueError(f"not a lifelong train command: {command}")
    click_command = _train_command()
    context = click_command.make_context("train", words[2:])
    given = {}
    for param in click_command.params:
        source = context.get_parameter_source(param.name)
        if source is not None and source.name == "COMMANDLINE":
            given[param.name] = context.params[param.name]
    return given


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def slug(text: str) -> str:
    text = text.replace("[]", "empty").replace(":", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9._-]", "", text)


def config_text(options: dict, model_options: dict, header: list[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in header] + [""]
    for key in ORDER:
        if key in options:
            lines.append(f"{key} = {_toml_value(options[key])}")
    if model_options:
        lines += ["", "[model_options]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in model_options.items()]
    return "\n".join(lines) + "\n"


def build() -> tuple[dict[Path, str], list[dict]]:
    """The files of configs/ (path -> text) and the index rows."""
    from lifelong.api import parse_assignments

    sources = _sources()
    files: dict[Path, str] = {}
    by_content: dict[tuple, Path] = {}
    seeds: dict[Path, set] = {}
    rows_of: dict[Path, list] = {}
    meta: dict[Path, tuple] = {}
    index = []
    datasets: dict[str, str] = {}
    for table in TABLES:
        path = RESULTS / f"{table}.json"
        if not path.exists():
            continue
        for row in json.loads(path.read_text()):
            command = row.get("command")
            if not command:
                continue
            given = parse_train(command)
            key, protocol = dataset_key(table, row, given["data"])
            datasets[key] = prepare_command(key, protocol, sources)
            model_options = parse_assignments(given.get("set", []), "--set")
            options = {k: v for k, v in given.items() if k not in DROPPED and v is not None and v is not False}
            seed = options.pop("seed", 2024)
            name = row.get("dataset") or row.get("table")
            spec = row.get("spec") or row.get("row")
            identity = (key, json.dumps(options, sort_keys=True), json.dumps(model_options, sort_keys=True))
            target = by_content.get(identity)
            if target is None:
                target = CONFIGS / table / f"{slug(name)}-{slug(spec)}.toml"
                if target in meta:  # same dataset and spec, other options (a re-run of the row): keep both
                    target = target.with_name(f"{target.stem}-{len([p for p in meta if p.stem.startswith(target.stem)])}.toml")
                by_content[identity] = target
                meta[target] = (table, name, spec, key, options, model_options)
            seeds.setdefault(target, set()).add(str(seed))
            rows_of.setdefault(target, []).append((table, name, spec))
            relative = target.relative_to(ROOT).as_posix()
            index.append({"table": table, "dataset": name, "spec": spec, "seed": str(seed), "config": relative,
                          "command": f"lifelong train --config {relative}"
                                     + ("" if str(seed) == min(seeds[target]) else f" --seed {seed}")})
    for target, (table, name, spec, key, options, model_options) in meta.items():
        all_seeds = sorted(seeds[target])
        relative = target.relative_to(ROOT).as_posix()
        shown_rows = sorted({f"{t}: {n} / {s}" for t, n, s in rows_of[target]})
        header = [f"{table}: {name}, {spec}", "",
                  f"Rebuilds: {'; '.join(shown_rows)} (docs/results/<table>.json).",
                  f"Seeds in the tables: {', '.join(all_seeds)} (this file: {all_seeds[0]}; the others: --seed N).",
                  "The dataset (once, from the repository root):", f"  {datasets[key]}",
                  f"Then: lifelong train --config {relative}",
                  "Generated by benchmarks/make_configs.py from the row's command; do not edit by hand."]
        options = {"model": options.pop("model"), "data": f"runs/data/{key}",
                   "out": f"runs/configs/{table}/{target.stem}", "seed": int(all_seeds[0]), **options}
        files[target] = config_text(options, model_options, header)
    for index_row in index:  # the seed of the file itself needs no override
        first = min(seeds[ROOT / index_row["config"]])
        index_row["command"] = f"lifelong train --config {index_row['config']}" + (
            "" if index_row["seed"] == first else f" --seed {index_row['seed']}")
    for name, spec in long_table.SYNTHETIC.items():
        files[CONFIGS / "datasets" / f"{name}.json"] = json.dumps(spec, indent=2) + "\n"
    files[CONFIGS / "index.json"] = json.dumps(index, indent=1) + "\n"
    files[CONFIGS / "README.md"] = readme(datasets, len(meta), len(index))
    return files, index


def readme(datasets: dict[str, str], n_configs: int, n_rows: int) -> str:
    lines = ["# Configs of the results rows", "",
             f"{n_configs} configs for the {n_rows} runs of docs/results/*.json: `lifelong train --config "
             "configs/<table>/<dataset>-<spec>.toml` rebuilds a row (add `--seed N` for the table's other seeds, "
             "listed in each file). `index.json` maps each row (table, dataset, spec, seed) to its config and "
             "command. Generated by `benchmarks/make_configs.py` from each row's command; "
             "`python benchmarks/make_configs.py --check` says whether they are current.", "",
             "Each config reads a prepared dataset under `runs/data/`; prepare it once, from the repository root:", ""]
    lines += ["| dataset | prepare |", "|---|---|"]
    lines += [f"| `runs/data/{key}` | `{command}` |" for key, command in sorted(datasets.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when configs/ differs")
    args = parser.parse_args()
    files, index = build()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    extra = [p for p in CONFIGS.rglob("*") if p.is_file() and p not in files] if CONFIGS.exists() else []
    if args.check:
        for path in stale + extra:
            print(f"{'not generated' if path in extra else 'stale'}: {path.relative_to(ROOT)}")
        print(f"{len(files)} files, {len(stale)} stale, {len(extra)} not from the JSONs")
        sys.exit(1 if stale or extra else 0)
    for path in extra:
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path in stale:
            path.write_text(text)
    print(f"configs/: {len(files)} files ({len(stale)} written, {len(extra)} removed) for {len(index)} rows")


if __name__ == "__main__":
    main()
