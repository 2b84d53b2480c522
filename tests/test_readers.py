"""Tests for lifelong.data.readers: formats, column mapping, and every kind of bad row."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.data import BadRowError, BadRowsSkippedWarning, EventLog, read_events
from lifelong.data.readers import _first_values, _range_like, _scan_records

HEADER = "user_id,item_id,timestamp\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    return path


def good_rows(n: int, start: int = 0) -> str:
    return "".join(f"{i % 7},{i % 5},{1_500_000_000 + i}\n" for i in range(start, start + n))


# ----------------------------------------------------------------------------------------------- CSV


def test_csv_reads_types_and_row_order(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + "1,10,100\n2,11,200.0\n1,12, 300 \n")
    log = read_events(path)
    assert isinstance(log, EventLog)
    assert log.events.columns == ["user_id", "item_id", "timestamp", "row"]
    assert log.events.schema["user_id"] == pl.Int64 and log.events.schema["item_id"] == pl.Int64
    assert log.events["timestamp"].to_list() == [100, 200, 300]
    assert log.events["row"].to_list() == [0, 1, 2]
    assert log.sources == [path] and log.rejected is None and log.items is None


def test_string_ids_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + "u1,007,100\nu2,7,200\n")
    events = read_events(path).events
    assert events.schema["user_id"] == pl.Utf8 and events.schema["item_id"] == pl.Utf8
    assert events["item_id"].to_list() == ["007", "7"]  # '007' is not merged with '7'


def test_column_mapping_optional_columns_and_user_features(tmp_path: Path) -> None:
    text = "u,i,t,act,y,age,cat\n1,10,100,click,1,31,a\n1,11,200,buy,0.5,,b\n2,10,300,click,0,40,\n"
    path = write(tmp_path, "log.csv", text)
    log = read_events(path, columns={"user_id": "u", "item_id": "i", "timestamp": "t", "behavior": "act",
                                     "label": "y", "user__age": "age", "category": "cat"})
    ev = log.events
    assert ev.columns == ["user_id", "item_id", "timestamp", "behavior", "label", "user__age", "row"]
    assert ev.schema["label"] == pl.Float32 and ev["label"].to_list() == [1.0, 0.5, 0.0]
    assert ev.schema["user__age"] == pl.Int64 and ev["user__age"].to_list() == [31, None, 40]
    assert log.items is not None and log.items.schema["item_id"] == pl.Int64
    assert log.items.sort("item_id").rows() == [(10, "a"), (11, "b")]


def test_default_mapping_uses_lifelong_names(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "timestamp,item_id,user_id,extra,behavior\n5,1,2,x,pv\n")
    ev = read_events(path).events
    assert ev.rows(named=True) == [{"user_id": 2, "item_id": 1, "timestamp": 5, "behavior": "pv", "row": 0}]


def test_missing_columns_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "user,item,ts\n1,2,3\n")
    with pytest.raises(ValueError, match="user_id"):
        read_events(path)
    with pytest.raises(ValueError, match="not found"):
        read_events(path, columns={"user_id": "user", "item_id": "nope", "timestamp": "ts"})
    with pytest.raises(ValueError, match="unknown column role"):
        read_events(path, columns={"user_id": "user", "item_id": "item", "timestamp": "ts", "bogus": "ts"})


def test_headerless_columns_are_column_n(tmp_path: Path) -> None:
    path = write(tmp_path, "log.txt", "7\t8\t100\n7\t9\t50\n")
    log = read_events(path, has_header=False, separator="\t",
                      columns={"user_id": "column_1", "item_id": "column_2", "timestamp": "column_3"})
    assert log.events.select("user_id", "item_id", "timestamp").rows() == [(7, 8, 100), (7, 9, 50)]
    with pytest.raises(ValueError, match="column_1, column_2"):
        read_events(path, has_header=False, columns={"user_id": "column_1", "item_id": "column_2",
                                                     "timestamp": "column_9"})


def test_tsv_and_sniffed_separator(tmp_path: Path) -> None:
    tsv = write(tmp_path, "events.tsv", "user_id\titem_id\ttimestamp\n1\t2\t3\n")
    txt = write(tmp_path, "events.txt", "user_id;item_id;timestamp\n1;2;3\n")
    for path in (tsv, txt):
        assert read_events(path).events.select("user_id", "item_id", "timestamp").rows() == [(1, 2, 3)]


def test_multi_character_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.dat", "1::10::5::978300760\n2::11::3::978300761\n")
    cols = {"user_id": "column_1", "item_id": "column_2", "label": "column_3", "timestamp": "column_4"}
    log = read_events(path, has_header=False, separator="::", columns=cols)
    assert log.events.select("user_id", "item_id", "label").rows() == [(1, 10, 5.0), (2, 11, 3.0)]
    bad = write(tmp_path, "bad.dat", "1::10::5::978300760\n2::11::3\n")
    with pytest.raises(BadRowError) as info:
        read_events(bad, has_header=False, separator="::", columns=cols)
    assert info.value.line == 2 and info.value.column == "*"


def test_quoted_fields_and_multiline_records(tmp_path: Path) -> None:
    text = 'user_id,item_id,timestamp,title\n"a,b",1,100,"say ""hi"", ok"\n2,3,200,"two\nlines"\n4,5,300,x\n'
    path = write(tmp_path, "events.csv", text)
    log = read_events(path, columns={"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp",
                                     "title": "title"})
    assert log.events["user_id"].to_list() == ["a,b", "2", "4"]
    assert log.items is not None and log.items["title"].to_list() == ['say "hi", ok', "two\nlines", "x"]
    # line numbers stay physical after a record that spans two lines
    bad = write(tmp_path, "bad.csv", text + "6,7\n")
    with pytest.raises(BadRowError) as info:
        read_events(bad)
    assert info.value.line == 6


def test_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "user_id,item_id,timestamp\r\n1,2,3\r\n\r\n4,5,6\r\n\r\n")
    log = read_events(path)
    assert log.events.select("user_id", "item_id", "timestamp").rows() == [(1, 2, 3), (4, 5, 6)]
    bad = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\r\n1,2,3\r\n\r\n4,5,x\r\n")
    with pytest.raises(BadRowError) as info:
        read_events(bad)
    assert (info.value.line, info.value.column, info.value.value) == (4, "timestamp", "x")


def test_gzipped_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv.gz", HEADER + "1,2,3\n")
    assert read_events(path).events.height == 1


BAD_CASES = [
    # (bad line, column, value, expected text fragment)
    ("1,2", "*", "1,2", "3 fields separated by ','"),
    ("1,2,3,4", "*", "1,2,3,4", "3 fields separated by ','"),
    ("1,,3", "item_id", "", "a value"),
    (",2,3", "user_id", "", "a value"),
    ("1,2,", "timestamp", "", "a value"),
    ("1,  ,3", "item_id", "  ", "a non-empty id"),
    ("1,2,12x3", "timestamp", "12x3", "an integer unix timestamp in seconds"),
    ("1,2,nan", "timestamp", "nan", "a finite integer unix timestamp"),
    ("1,2,inf", "timestamp", "inf", "a finite integer unix timestamp"),
    ("1,2,-5", "timestamp", "-5", "a non-negative unix timestamp"),
    ("1,2,1.5", "timestamp", "1.5", "an integer unix timestamp in seconds"),
    ("1,2,5000000000", "timestamp", "5000000000", "before 2100-01-01"),
]


@pytest.mark.parametrize(("line", "column", "value", "expected"), BAD_CASES)
def test_bad_rows_raise_with_line_and_column(tmp_path: Path, line: str, column: str, value: str,
                                             expected: str) -> None:
    path = write(tmp_path, "events.csv", HEADER + good_rows(3) + line + "\n" + good_rows(2, 3))
    with pytest.raises(BadRowError) as info:
        read_events(path)
    err = info.value
    assert (err.file, err.line, err.column) == ("events.csv", 5, column)
    assert err.value == value
    assert expected in err.expected and expected in str(err)
    assert "Fix:" in str(err) and err.fix


@pytest.mark.parametrize(("line", "column", "value", "expected"), BAD_CASES)
def test_bad_rows_skipped_into_rejected(tmp_path: Path, line: str, column: str, value: str, expected: str) -> None:
    path = write(tmp_path, "events.csv", HEADER + good_rows(3) + line + "\n" + good_rows(2, 3))
    with pytest.warns(BadRowsSkippedWarning, match="skipped 1 bad row"):
        log = read_events(path, on_bad_rows="skip")
    assert log.events.height == 5
    assert log.events["row"].to_list() == [0, 1, 2, 4, 5]
    assert log.rejected is not None
    assert log.rejected.schema == {"file": pl.Utf8, "line": pl.Int64, "column": pl.Utf8, "value": pl.Utf8,
                                   "reason": pl.Utf8, "raw": pl.Utf8}
    rec = log.rejected.row(0, named=True)
    assert (rec["file"], rec["line"], rec["column"], rec["raw"]) == ("events.csv", 5, column, line)
    if column != "*":
        assert rec["value"] == value


def test_error_message_format(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + good_rows(4999) + "1,2,12x3\n" + good_rows(10))
    with pytest.raises(BadRowError) as info:
        read_events(path)
    assert str(info.value).startswith(
        "events.csv, line 5001, column 'timestamp': got '12x3', expected an integer unix timestamp in seconds. "
        "Fix: ")
    assert "--on-bad-rows skip" in info.value.fix


def test_first_bad_row_in_file_order(tmp_path: Path) -> None:
    text = HEADER + "1,2,3\n1,2,x\n1,2\n1,,3\n"
    path = write(tmp_path, "events.csv", text)
    with pytest.raises(BadRowError) as info:
        read_events(path)
    assert (info.value.line, info.value.column) == (3, "timestamp")
    with pytest.warns(BadRowsSkippedWarning, match="skipped 3 bad row"):
        log = read_events(path, on_bad_rows="skip")
    assert log.rejected is not None
    assert log.rejected.select("line", "column").rows() == [(3, "timestamp"), (4, "*"), (5, "item_id")]
    assert log.events.height == 1


def test_skip_without_bad_rows_gives_empty_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + good_rows(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log = read_events(path, on_bad_rows="skip")
    assert log.rejected is not None and log.rejected.height == 0


def test_milliseconds_hint_and_unit(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + "1,2,1511544070123\n1,3,1511544071999.0\n")
    with pytest.raises(BadRowError) as info:
        read_events(path)
    assert "timestamp_unit='ms'" in info.value.fix
    log = read_events(path, timestamp_unit="ms")
    assert log.events["timestamp"].to_list() == [1511544070, 1511544071]
    with pytest.raises(ValueError, match="timestamp_unit"):
        read_events(path, timestamp_unit="hours")


def test_integral_float_timestamps_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + "1,2,1.5e9\n1,3,1500000001.0\n")
    assert read_events(path).events["timestamp"].to_list() == [1_500_000_000, 1_500_000_001]


@pytest.mark.parametrize(("label", "expected"), [("abc", "a numeric label"), ("nan", "a finite numeric label"),
                                                 ("", "a value")])
def test_bad_labels(tmp_path: Path, label: str, expected: str) -> None:
    path = write(tmp_path, "events.csv", "user_id,item_id,timestamp,label\n1,2,3,1\n1,2,3," + label + "\n")
    with pytest.raises(BadRowError) as info:
        read_events(path)
    assert (info.value.line, info.value.column, info.value.expected) == (3, "label", expected)


def test_allowed_behaviors(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "user_id,item_id,timestamp,behavior\n1,2,3,pv\n1,2,3,like\n")
    assert read_events(path).events["behavior"].to_list() == ["pv", "like"]
    with pytest.raises(BadRowError) as info:
        read_events(path, behaviors=("pv", "buy"))
    assert (info.value.line, info.value.column, info.value.value) == (3, "behavior", "like")


def test_invalid_options(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", HEADER + "1,2,3\n")
    with pytest.raises(ValueError, match="on_bad_rows"):
        read_events(path, on_bad_rows="ignore")
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="format"):
        read_events(path, fmt="xml")


def test_header_only_file_gives_empty_log(tmp_path: Path) -> None:
    log = read_events(write(tmp_path, "events.csv", HEADER))
    assert log.events.height == 0 and "row" in log.events.columns


def test_bad_row_error_pickles() -> None:
    err = BadRowError("f.csv", 3, "timestamp", "x", "an integer")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 3 and isinstance(again, ValueError)


# ------------------------------------------------------------------------------------------- Parquet


def test_parquet_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pl.DataFrame({"u": [1, 2], "i": ["a", "b"], "t": [1.0e9, 2.0e9], "y": [1, 0]},
                 schema={"u": pl.Int32, "i": pl.Utf8, "t": pl.Float64, "y": pl.Int8}).write_parquet(path)
    log = read_events(path, columns={"user_id": "u", "item_id": "i", "timestamp": "t", "label": "y"})
    ev = log.events
    assert ev.schema["user_id"] == pl.Int64 and ev.schema["item_id"] == pl.Utf8
    assert ev["timestamp"].to_list() == [1_000_000_000, 2_000_000_000]
    assert ev.schema["label"] == pl.Float32


@pytest.mark.parametrize(("column", "values", "expected"), [
    ("user_id", [1, None, 3], "a value"),
    ("timestamp", [1, -1, 3], "a non-negative"),
    ("timestamp", [1.0, float("nan"), 3.0], "a finite"),
    ("timestamp", [1.0, 2.5, 3.0], "an integer unix timestamp"),
    ("item_id", ["a", " ", "c"], "a non-empty id"),
    ("label", [0.0, float("inf"), 1.0], "a finite numeric label"),
])
def test_parquet_bad_rows_use_row_numbers(tmp_path: Path, column: str, values: list, expected: str) -> None:
    data = {"user_id": [1, 2, 3], "item_id": ["a", "b", "c"], "timestamp": [10, 20, 30], "label": [1.0, 0.0, 1.0]}
    data[column] = values
    path = tmp_path / "events.parquet"
    pl.DataFrame(data).write_parquet(path)
    with pytest.raises(BadRowError) as info:
        read_events(path)
    assert (info.value.line, info.value.column) == (2, column) and expected in info.value.expected
    with pytest.warns(BadRowsSkippedWarning):
        log = read_events(path, on_bad_rows="skip")
    assert log.events["row"].to_list() == [0, 2]
    assert log.rejected is not None and log.rejected["line"].to_list() == [2]


def test_parquet_datetime_and_list_attributes(tmp_path: Path) -> None:
    from datetime import datetime

    path = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [2], "ts": [datetime(2020, 1, 1)], "tags": [["x", "y"]]}
                 ).write_parquet(path)
    log = read_events(path, columns={"user_id": "user_id", "item_id": "item_id", "timestamp": "ts",
                                     "attributes": "tags"})
    assert log.events["timestamp"].to_list() == [1577836800]
    assert log.items is not None and log.items["attributes"].to_list() == [["x", "y"]]


# --------------------------------------------------------------------------------------- JSON lines


def test_jsonl_reads_and_maps(tmp_path: Path) -> None:
    text = '{"u": "A1", "i": "B1", "t": 100, "x": 1}\n\n{"u": "A2", "i": "B2", "t": 200}\n'
    for name in ("events.jsonl", "events.json.gz"):
        log = read_events(write(tmp_path, name, text), columns={"user_id": "u", "item_id": "i", "timestamp": "t"})
        assert log.events.select("user_id", "item_id", "timestamp").rows() == [("A1", "B1", 100), ("A2", "B2", 200)]


def test_jsonl_missing_key_counts_blank_lines(tmp_path: Path) -> None:
    text = '{"u": 1, "i": 2, "t": 100}\n\n{"u": 1, "t": 100}\n{"u": 1, "i": 2, "t": "x"}\n'
    path = write(tmp_path, "events.jsonl", text)
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    with pytest.raises(BadRowError) as info:
        read_events(path, columns=cols)
    assert (info.value.line, info.value.column) == (3, "item_id")
    with pytest.warns(BadRowsSkippedWarning):
        log = read_events(path, columns=cols, on_bad_rows="skip")
    assert log.rejected is not None
    assert log.rejected.select("line", "column", "raw").rows() == [
        (3, "item_id", '{"u": 1, "t": 100}'), (4, "timestamp", '{"u": 1, "i": 2, "t": "x"}')]


def test_jsonl_malformed_line(tmp_path: Path) -> None:
    text = '{"u": 1, "i": 2, "t": 100}\n{"u": 1, "i": \n[1, 2]\n{"u": 3, "i": 4, "t": 300}\n'
    path = write(tmp_path, "events.jsonl", text)
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    with pytest.raises(BadRowError) as info:
        read_events(path, columns=cols)
    assert (info.value.line, info.value.column) == (2, "*")
    with pytest.warns(BadRowsSkippedWarning, match="skipped 2"):
        log = read_events(path, columns=cols, on_bad_rows="skip")
    assert log.events.select("user_id", "timestamp").rows() == [(1, 100), (3, 300)]
    assert log.rejected is not None and log.rejected["line"].to_list() == [2, 3]


# ------------------------------------------------------------------------------------------ line scan


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(alphabet='ab,"\n ', max_size=4), min_size=1, max_size=4), min_size=1, max_size=6))
def test_scan_matches_csv_module(rows: list[list[str]]) -> None:
    """Quote-aware field counts and record lines agree with Python's csv module on well-quoted data."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    data = buf.getvalue().encode()
    recs = _scan_records(np.frombuffer(data, dtype=np.uint8), ord(","), ord('"'))
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    expected_fields, expected_lines = [], []
    line = 1
    for parsed in reader:
        expected_fields.append(len(parsed) if parsed else 1)
        expected_lines.append(line)
        line = reader.line_num + 1
    assert recs.fields is not None
    assert recs.fields.tolist() == expected_fields
    assert recs.lines.tolist() == expected_lines


def test_item_features_by_slices_equal_one_group_by() -> None:
    """The first non-missing feature value per item, computed a slice at a time, equals one group-by."""
    rng = np.random.default_rng(0)
    n = 500
    cates = [None if v < 3 else f"c{v}" for v in rng.integers(0, 12, n)]
    frame = pl.DataFrame({"item_id": rng.integers(0, 40, n), "category": cates,
                          "title": [f"t{v}" for v in rng.integers(0, 5, n)]})
    whole = frame.group_by("item_id", maintain_order=True).agg(pl.col("category").drop_nulls().first(),
                                                              pl.col("title").drop_nulls().first())
    for chunk in (1, 7, 64, 10_000):
        assert _first_values(frame, chunk=chunk).equals(whole)


def test_parquet_row_numbers_follow_the_source_chunks(tmp_path: Path) -> None:
    """A multi-chunk Parquet source gets row numbers in the same chunks (no rechunk of the log) and in order."""
    parts = [pl.DataFrame({"user_id": [u] * 3, "item_id": [1, 2, 3], "timestamp": [10, 11, 12]}) for u in range(4)]
    frame = pl.concat(parts, rechunk=False)
    assert _range_like(frame).chunk_lengths() == frame.to_series(0).chunk_lengths()
    assert _range_like(frame).to_list() == list(range(12))
    path = tmp_path / "log.parquet"
    pl.concat(parts).write_parquet(path, row_group_size=3)
    log = read_events(path)
    assert log.events["row"].to_list() == list(range(12))
