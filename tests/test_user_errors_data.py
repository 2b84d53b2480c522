"""A user's mistake in an input file ends in a short message from the real CLI (exit code 2, no traceback)
naming the file, the line or row, and the option that fixes it; the input is left as it was and no output
folder (or temporary sibling) is left behind. Each test runs ``python -m lifelong prepare`` on a tiny file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from lifelong.data import BadRowError
from lifelong.errors import UserError

COLUMNS = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp"]
T0 = 1_600_000_000


def rows(n_users: int = 20, per_user: int = 8, n_items: int = 60, seed: int = 0) -> list[tuple[int, int, int]]:
    """(user, item, unix seconds) events: every user has ``per_user`` events among ``n_items`` items."""
    rng = random.Random(seed)
    return [(u, rng.randrange(n_items), T0 + 100 * (u * per_user + k)) for u in range(n_users) for k in range(per_user)]


def csv_text(events: list[tuple], header: str = "user_id,item_id,timestamp") -> str:
    return header + "\n" + "".join(",".join(str(v) for v in e) + "\n" for e in events)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (md5) and folder under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def prepare(folder: Path, input: str, *args: str, recipe: str = "csv", columns: bool = True,
            out: str = "out") -> tuple[int, str]:
    """Run the real CLI in ``folder``; the exit code and stdout + stderr with white space normalised."""
    command = [sys.executable, "-m", "lifelong", "prepare", "--recipe", recipe, "--input", input, "--out", out,
               *(COLUMNS if columns else []), *args]
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    env.pop("LIFELONG_DEBUG", None)
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120, env=env)
    return done.returncode, " ".join((done.stdout + "\n" + done.stderr).split())


def fails_cleanly(folder: Path, input: str, *args: str, **kwargs) -> str:
    """Run the CLI expecting a user error: exit code 2, no traceback, nothing written or changed."""
    before = snapshot(folder)
    code, output = prepare(folder, input, *args, **kwargs)
    assert code == 2, output
    assert "Traceback" not in output, output
    assert snapshot(folder) == before, output  # no out/, no .out.tmp-*, input files unchanged
    return output


def succeeds(folder: Path, input: str, *args: str, **kwargs) -> str:
    code, output = prepare(folder, input, *args, **kwargs)
    assert code == 0, output
    assert "Traceback" not in output, output
    assert (folder / "out" / "manifest.json").is_file()
    return output


def manifest(folder: Path) -> dict:
    return json.loads((folder / "out" / "manifest.json").read_text())


# ------------------------------------------------------------------------------ 1. nested Parquet columns


@pytest.mark.parametrize("role, kind", [("user_id", "list"), ("item_id", "struct"), ("timestamp", "list")])
def test_a_parquet_column_of_lists_or_structs_where_ids_belong_is_named_with_its_type(tmp_path, role, kind):
    events = rows()
    columns = {"user_id": [e[0] for e in events], "item_id": [e[1] for e in events], "timestamp": [e[2] for e in events]}
    columns[role] = [[v] if kind == "list" else {"v": v} for v in columns[role]]
    pl.DataFrame(columns).write_parquet(tmp_path / "log.parquet")
    output = fails_cleanly(tmp_path, "log.parquet")
    assert "log.parquet" in output and f"column '{role}'" in output
    assert ("List(Int64)" if kind == "list" else "Struct") in output
    assert "expected one" in output and f"--column {role}=" in output


# ------------------------------------------------------------------------------- 2. unreadable Parquet


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_corrupt_parquet_file_is_named(tmp_path, damage):
    path = tmp_path / "log.parquet"
    if damage == "random bytes":
        path.write_bytes(random.Random(0).randbytes(3000))
    else:
        events = rows()
        pl.DataFrame(events, schema=["user_id", "item_id", "timestamp"], orient="row").write_parquet(path)
        path.write_bytes(path.read_bytes()[:-30])
    output = fails_cleanly(tmp_path, "log.parquet")
    assert "log.parquet is not a readable Parquet file" in output
    assert ("not Parquet at all" if damage == "random bytes" else "truncated") in output


# ------------------------------------------------------------------------------------------ 3. bad gzip


@pytest.mark.parametrize("name", ["log.csv.gz", "log.jsonl.gz"])
def test_a_truncated_gzip_file_is_named(tmp_path, name):
    events = rows()
    if name.endswith(".csv.gz"):
        text = csv_text(events)
    else:
        text = "".join(json.dumps({"user_id": u, "item_id": i, "timestamp": t}) + "\n" for u, i, t in events)
    (tmp_path / name).write_bytes(gzip.compress(text.encode())[:-20])
    output = fails_cleanly(tmp_path, name)
    assert f"{name} is a truncated gzip file" in output and "gzip -t" in output
    assert "Aborted" not in output


def test_a_plain_file_named_gz_is_named(tmp_path):
    (tmp_path / "log.csv.gz").write_text(csv_text(rows()))
    output = fails_cleanly(tmp_path, "log.csv.gz")
    assert "log.csv.gz is named .gz but is not gzip-compressed" in output and "user_id" in output


# ---------------------------------------------------------------------------------- 4. unclosed quotes


def test_an_unterminated_quote_names_its_line_and_keeps_the_message_short(tmp_path):
    lines = csv_text(rows(n_users=200)).splitlines()
    lines[5] = '3,"12,' + str(T0)  # line 6: a quote opened and never closed
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    output = fails_cleanly(tmp_path, "log.csv")
    assert "log.csv, line 6" in output and "never closed" in output
    assert len(output) < 600, output  # not a dump of the file


def test_a_quote_closed_lines_later_names_the_line_where_it_opened(tmp_path):
    lines = csv_text(rows(n_users=200)).splitlines()
    lines[5] = '3,"12,' + str(T0)
    lines[900] = '5,"7,' + str(T0)  # the next quote closes line 6's field and is followed by text
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    output = fails_cleanly(tmp_path, "log.csv")
    assert "log.csv, line 6" in output and "line 901" in output
    assert len(output) < 600, output


# ---------------------------------------------------------------------------------- 5. timestamp units


@pytest.mark.parametrize("unit, factor", [("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)])
def test_sub_second_timestamps_advise_an_option_that_exists(tmp_path, unit, factor):
    events = rows()
    (tmp_path / "log.csv").write_text(csv_text([(u, i, t * factor) for u, i, t in events]))
    output = fails_cleanly(tmp_path, "log.csv")
    assert "log.csv, line 2, column 'timestamp'" in output and f"--timestamp-unit {unit}" in output
    succeeds(tmp_path, "log.csv", "--timestamp-unit", unit)
    stored = pl.read_parquet(tmp_path / "out" / "events.parquet")["timestamp"]
    assert stored.min() == T0 and stored.max() == max(t for *_, t in events)


def test_iso_dates_are_read_with_timestamp_unit_iso_and_a_bad_date_names_its_line(tmp_path):
    events = rows()
    dates = ["2020-01-31", "2020-01-31T12:00:00Z", "2020-01-31 12:00:00", "2020-01-31T12:00:00+02:00"]
    text = csv_text([(u, i, dates[k % 4]) for k, (u, i, _) in enumerate(events)])
    (tmp_path / "log.csv").write_text(text)
    output = fails_cleanly(tmp_path, "log.csv")
    assert "--timestamp-unit iso" in output  # the seconds reader recognises a date and says which option reads it
    succeeds(tmp_path, "log.csv", "--timestamp-unit", "iso")
    stored = set(pl.read_parquet(tmp_path / "out" / "events.parquet")["timestamp"].to_list())
    assert stored == {1580428800, 1580472000, 1580464800}  # midnight, noon UTC, noon at +02:00

    lines = text.splitlines()
    lines[3] = "2,5,2020-02-30"
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    output = fails_cleanly(tmp_path, "bad.csv", "--timestamp-unit", "iso", out="out2")
    assert "bad.csv, line 4, column 'timestamp'" in output and "'2020-02-30'" in output and "ISO-8601" in output


def test_an_unknown_timestamp_unit_names_the_option_and_its_choices(tmp_path):
    (tmp_path / "log.csv").write_text(csv_text(rows()))
    output = fails_cleanly(tmp_path, "log.csv", "--timestamp-unit", "hours")
    assert "--timestamp-unit" in output and "s, ms, us, ns, iso" in output and "'hours'" in output


# ------------------------------------------------------------------------------- 6. every row rejected


def test_every_row_rejected_says_how_many_and_the_most_common_reasons(tmp_path):
    events = rows()
    text = csv_text([(u, i, t * 1000) for u, i, t in events[:150]] + [(u, "", t) for u, _, t in events[150:]])
    (tmp_path / "log.csv").write_text(text)
    output = fails_cleanly(tmp_path, "log.csv", "--on-bad-rows", "skip")
    assert "every row was rejected: 160 bad rows in log.csv" in output
    assert "150 x timestamp: timestamp after 2100-01-01" in output and "10 x item_id: missing value" in output
    assert "line 2" in output and "no rejected.csv" in output and "--timestamp-unit ms" in output
    assert "no events left" not in output


# ------------------------------------------------------------------------- 7. too few events per user


@pytest.mark.parametrize("protocol, label, minimum", [("ctr-din", "P1", 4), ("seq-loo", "P2", 3), ("mi-split", "P3", 2)])
def test_too_few_events_per_user_names_the_protocol_and_its_minimum(tmp_path, protocol, label, minimum):
    events = rows(n_users=30, per_user=minimum - 1)
    (tmp_path / "log.csv").write_text(csv_text(events))
    output = fails_cleanly(tmp_path, "log.csv", "--protocol", protocol)
    assert f"{label} {protocol} needs at least {minimum} events per user" in output
    assert "all 30 users" in output and "--protocol" in output


# ---------------------------------------------------------------------------- 8. missing side files


def test_s3rec_without_item2attributes_warns_that_categories_are_lost(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "interactions.csv").write_text(csv_text(rows()))
    output = succeeds(tmp_path, "data", recipe="amazon-s3rec", columns=False)
    assert "item2attributes.json" in output and "0 categories" in output
    assert manifest(tmp_path)["n_categories"] == 0


def test_movielens_without_u_item_warns_that_categories_are_lost(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("".join(f"{u + 1}\t{i + 1}\t4\t{t}\n" for u, i, t in rows()))
    output = succeeds(tmp_path, "ml", recipe="movielens", columns=False)
    assert "has no u.item" in output and "0 categories" in output


def test_a_recipe_that_reads_its_own_columns_refuses_column(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("".join(f"{u + 1}\t{i + 1}\t4\t{t}\n" for u, i, t in rows()))
    output = fails_cleanly(tmp_path, "ml", recipe="movielens")
    assert "movielens recipe does not take --column" in output


# ------------------------------------------------------------------ 9 and 10. Parquet rows, raw lines


def test_a_parquet_bad_row_is_a_row_and_its_raw_is_json(tmp_path):
    events = rows()
    frame = pl.DataFrame({"user_id": [e[0] for e in events], "item_id": [e[1] for e in events],
                          "timestamp": [str(e[2]) if k != 2 else "soon" for k, e in enumerate(events)]})
    frame.write_parquet(tmp_path / "log.parquet")
    output = fails_cleanly(tmp_path, "log.parquet")
    assert "log.parquet, row 3, column 'timestamp'" in output and "line" not in output.split("Fix")[0]
    succeeds(tmp_path, "log.parquet", "--on-bad-rows", "skip")
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False)
    assert rejected["line"].to_list() == ["3"]
    assert json.loads(rejected["raw"][0]) == {"user_id": 0, "item_id": events[2][1], "timestamp": "soon"}


def test_rejected_csv_keeps_the_raw_line_of_json_lines(tmp_path):
    lines = [json.dumps({"user_id": u, "item_id": i, "timestamp": t}) for u, i, t in rows()]
    lines[4] = '{"user_id": 0, "item_id": 7, "timestamp": "later"}'
    lines[9] = '{"user_id": 1, "item_id": '  # malformed: the slow parser runs
    lines.insert(0, "   ")  # a line of white space only (skipped, but counted)
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    output = fails_cleanly(tmp_path, "log.jsonl")
    assert "log.jsonl, line 6, column 'timestamp'" in output
    succeeds(tmp_path, "log.jsonl", "--on-bad-rows", "skip")
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False)
    assert rejected.select("line", "reason", "raw").rows() == [
        ("6", "not a number", lines[5]), ("11", "malformed JSON", lines[10])]


def test_a_json_list_among_ids_is_a_bad_row(tmp_path):
    lines = [json.dumps({"user_id": u, "item_id": i, "timestamp": t}) for u, i, t in rows()]
    lines[4] = json.dumps({"user_id": [0], "item_id": 7, "timestamp": T0})
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    output = fails_cleanly(tmp_path, "log.jsonl")
    assert "log.jsonl, line 5, column 'user_id'" in output and "not a JSON list" in output


# ------------------------------------------------------------------------------------- 11. id limits


def test_ids_longer_than_the_limit_are_bad_rows(tmp_path):
    events = rows()
    long = "x" * 300
    text = csv_text([(u, long if k == 3 else i, t) for k, (u, i, t) in enumerate(events)])
    (tmp_path / "log.csv").write_text(text)
    output = fails_cleanly(tmp_path, "log.csv")
    assert "log.csv, line 5, column 'item_id'" in output and "an id of 300 bytes" in output
    assert "at most 256 bytes (--max-id-bytes)" in output and len(output) < 600

    output = succeeds(tmp_path, "log.csv", "--on-bad-rows", "skip")
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False)
    assert rejected.select("line", "column", "reason").rows() == [("5", "item_id", "id too long")]
    assert manifest(tmp_path)["n_events"] == len(events) - 1

    output = succeeds(tmp_path, "log.csv", "--max-id-bytes", "300", "--overwrite")
    assert manifest(tmp_path)["n_events"] == len(events)
    output = fails_cleanly(tmp_path, "log.csv", "--max-id-bytes", "0", out="out2")
    assert "--max-id-bytes" in output and "positive" in output


# ----------------------------------------------------------------------------------- the error types


def test_bad_row_error_says_row_for_parquet_quotes_briefly_and_pickles():
    error = BadRowError("log.parquet", 3, "timestamp", "y" * 500, "an integer", unit="row")
    assert str(error).startswith("log.parquet, row 3, column 'timestamp': got 'yyy")
    assert "(500 characters)" in str(error) and len(str(error)) < 300
    again = pickle.loads(pickle.dumps(error))
    assert (again.unit, again.value, str(again)) == ("row", "y" * 500, str(error))
    assert isinstance(UserError("x"), ValueError)
