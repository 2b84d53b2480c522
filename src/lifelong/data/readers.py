"""Strict, vectorised readers for raw event logs (CSV/TSV, Parquet, JSON lines).

Every input row is checked with Polars expressions (no Python loop per row on the normal path). A bad row
either raises :class:`BadRowError` naming its 1-based line and column (``on_bad_rows='error'``, the first
bad row in file order) or is dropped into ``EventLog.rejected`` (``on_bad_rows='skip'``).

Column mapping: ``columns`` maps lifelong names to source column names. Lifelong names are
``user_id``, ``item_id``, ``timestamp`` (required), ``behavior``, ``label``, user features ``user__<name>``
and item features ``category``, ``title``, ``attributes`` (these go to ``EventLog.items``, first non-null
value per item, and not into ``events``). For a CSV without header the source columns are named
``column_1``, ``column_2``, ... (1-based).
"""

from __future__ import annotations

import gzip
import io
import json
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lifelong.data.schema import (
    DEFAULT_FIX,
    REJECTED_SCHEMA,
    USER_FEATURE_PREFIX,
    BadRowError,
    EventLog,
    check_on_bad_rows,
    empty_rejected,
)

TIMESTAMP_MAX_SECONDS = 4_102_444_800  # 2100-01-01T00:00:00Z
TIMESTAMP_UNITS: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}

REQUIRED_ROLES: tuple[str, ...] = ("user_id", "item_id", "timestamp")
EVENT_ROLES: tuple[str, ...] = ("user_id", "item_id", "timestamp", "behavior", "label")
ITEM_FEATURE_ROLES: tuple[str, ...] = ("category", "title", "attributes")
FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl")

_CHUNK = 1 << 25  # bytes per block of the line scan
_MULTI_SEP = "\x1f"  # multi-character separators are rewritten to this byte before parsing
_CODE_BITS = 64  # error code = column_index * _CODE_BITS + reason code


class BadRowsSkippedWarning(UserWarning):
    """Bad input rows were skipped (on_bad_rows='skip')."""


# --------------------------------------------------------------------------------------------- reasons


@dataclass(frozen=True)
class _Reason:
    code: int
    short: str  # for EventLog.rejected.reason
    expected: str  # for BadRowError.expected ({unit} is filled in)


_REASONS: dict[str, _Reason] = {
    r.short: r
    for r in [
        _Reason(1, "wrong field count", "{expected_fields} fields separated by {sep}"),
        _Reason(2, "malformed JSON", "one JSON object per line"),
        _Reason(3, "missing value", "a value"),
        _Reason(4, "empty id", "a non-empty id"),
        _Reason(5, "non-integral id", "an integer or string id"),
        _Reason(6, "not a number", "an integer unix timestamp in {unit}"),
        _Reason(7, "non-finite timestamp", "a finite integer unix timestamp in {unit}"),
        _Reason(8, "fractional timestamp", "an integer unix timestamp in {unit}"),
        _Reason(9, "negative timestamp", "a non-negative unix timestamp in {unit}"),
        _Reason(10, "timestamp after 2100-01-01", "a unix timestamp in {unit} before 2100-01-01"),
        _Reason(11, "label not a number", "a numeric label"),
        _Reason(12, "non-finite label", "a finite numeric label"),
        _Reason(13, "unknown behavior", "one of {behaviors}"),
    ]
}
_BY_CODE = {r.code: r for r in _REASONS.values()}


def _code(short: str) -> int:
    return _REASONS[short].code


# ------------------------------------------------------------------------------------------- line scan


@dataclass
class _Records:
    """Byte layout of the records (lines, quote-aware) of a text buffer."""

    starts: np.ndarray  # int64 offset of each record's first byte
    ends: np.ndarray  # int64 offset of the record's terminating newline (or the buffer end)
    lines: np.ndarray  # int64 1-based physical line where the record starts
    fields: np.ndarray | None  # int64 field count (when a separator was given)
    blank: np.ndarray  # bool: the record has no content

    def __len__(self) -> int:
        return len(self.starts)

    def drop_first(self) -> _Records:
        return _Records(self.starts[1:], self.ends[1:], self.lines[1:],
                        None if self.fields is None else self.fields[1:], self.blank[1:])

    def select(self, mask: np.ndarray) -> _Records:
        return _Records(self.starts[mask], self.ends[mask], self.lines[mask],
                        None if self.fields is None else self.fields[mask], self.blank[mask])

    def text(self, buf: np.ndarray, idx: np.ndarray) -> list[str]:
        """Original text of the records ``idx`` (line terminators removed)."""
        out = []
        for s, e in zip(self.starts[idx].tolist(), self.ends[idx].tolist()):
            out.append(bytes(buf[s:e]).rstrip(b"\r").decode("utf-8", "replace"))
        return out


def _scan_records(buf: np.ndarray, sep: int | None, quote: int | None, *, complete: bool = True) -> _Records:
    """Find record boundaries and field counts with vectorised byte scans, block by block.

    A newline or separator inside double quotes does not count (``""`` escapes keep the quote parity).
    With ``complete=False`` (a prefix of a file) a trailing unterminated record is dropped.
    """
    n = len(buf)
    empty = np.zeros(0, np.int64)
    ends_parts, endline_parts, nsep_parts = [], [], []
    parity = 0
    newlines_seen = 0
    pending = 0
    for a in range(0, n, _CHUNK):
        block = buf[a:a + _CHUNK]
        nl = np.flatnonzero(block == 10)
        qpos = np.flatnonzero(block == quote) if quote is not None else empty
        if quote is not None:
            outside = ((parity + np.searchsorted(qpos, nl)) & 1) == 0
            ends_local = nl[outside]
            end_lines = newlines_seen + np.flatnonzero(outside)
        else:
            ends_local = nl
            end_lines = newlines_seen + np.arange(len(nl), dtype=np.int64)
        if sep is not None:
            spos = np.flatnonzero(block == sep)
            if quote is not None and len(spos):
                spos = spos[((parity + np.searchsorted(qpos, spos)) & 1) == 0]
            before = np.searchsorted(spos, ends_local)  # separators before each record end
            counts = np.diff(before, prepend=0).astype(np.int64)
            if len(counts):
                counts[0] += pending
                pending = len(spos) - int(before[-1])
            else:
                pending += len(spos)
            nsep_parts.append(counts)
        ends_parts.append(ends_local.astype(np.int64) + a)
        endline_parts.append(end_lines.astype(np.int64))
        parity = (parity + len(qpos)) & 1
        newlines_seen += len(nl)
    ends = np.concatenate(ends_parts) if ends_parts else empty
    end_lines = np.concatenate(endline_parts) if endline_parts else empty
    nseps = np.concatenate(nsep_parts) if nsep_parts else empty
    last = int(ends[-1]) if len(ends) else -1
    if complete and last < n - 1:  # unterminated last record
        ends = np.append(ends, n)
        end_lines = np.append(end_lines, newlines_seen)
        nseps = np.append(nseps, pending)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else empty
    lines = np.concatenate([[1], end_lines[:-1] + 2]).astype(np.int64) if len(ends) else empty
    length = ends - starts
    first = buf[np.minimum(starts, max(n - 1, 0))] if n else np.zeros(0, np.uint8)
    blank = (length == 0) | ((length == 1) & (first == 13))
    fields = nseps + 1 if sep is not None else None
    return _Records(starts, ends, lines, fields, blank)


def _load_buffer(path: Path) -> np.ndarray:
    """The file's bytes as a uint8 array (memory-mapped; gzip files are decompressed)."""
    if path.suffix == ".gz":
        return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8)
    if path.stat().st_size == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


# ----------------------------------------------------------------------------------------- raw tables


class _Source:
    """A parsed input file: string or typed columns under lifelong names, plus row -> line mapping."""

    def __init__(self, path: Path, df: pl.DataFrame, kind: str) -> None:
        self.path = path
        self.df = df
        self.kind = kind
        self.expected_fields: int | None = None
        self.separator: str | None = None

    def lines(self, idx: np.ndarray) -> np.ndarray:
        """1-based line numbers of data rows ``idx``."""
        return idx + 1

    def raw(self, idx: np.ndarray) -> list[str] | None:
        """Original text of data rows ``idx`` (None: use a repr of the parsed row)."""
        return None


class _TextSource(_Source):
    """A CSV or JSON-lines source whose line numbers come from a (lazy) byte scan."""

    def __init__(self, path: Path, df: pl.DataFrame, kind: str, *, buffer: np.ndarray | None,
                 sep: int | None, quote: int | None, header: bool, skip_blank: bool) -> None:
        super().__init__(path, df, kind)
        self._buffer = buffer
        self._sep = sep
        self._quote = quote
        self._header = header
        self._skip_blank = skip_blank
        self._records: _Records | None = None
        self.line_numbers: np.ndarray | None = None  # set directly by a fallback parser

    @property
    def buffer(self) -> np.ndarray:
        if self._buffer is None:
            self._buffer = _load_buffer(self.path)
        return self._buffer

    def records(self) -> _Records | None:
        """Data records aligned with the rows of ``df`` (None if they cannot be aligned)."""
        if self._records is None:
            recs = _scan_records(self.buffer, self._sep, self._quote)
            if self._header and len(recs):
                recs = recs.drop_first()
            if self._skip_blank:
                recs = recs.select(~recs.blank)
            self._records = recs
        if len(self._records) != self.df.height:
            return None
        return self._records

    def lines(self, idx: np.ndarray) -> np.ndarray:
        if self.line_numbers is not None:
            return self.line_numbers[idx]
        recs = self.records()
        if recs is None:  # could not align: best effort
            return idx + (2 if self._header else 1)
        return recs.lines[idx]

    def raw(self, idx: np.ndarray) -> list[str] | None:
        if self.line_numbers is not None:
            return None
        recs = self.records()
        return None if recs is None else recs.text(self.buffer, idx)


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    by_ext = {".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".dat": "csv", ".parquet": "parquet", ".pq": "parquet",
              ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
    if ext in by_ext:
        return by_ext[ext]
    with _open_binary(path) as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    return "csv"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _sniff_separator(path: Path) -> str:
    with _open_binary(path) as handle:
        first = handle.readline(1 << 16).decode("utf-8", "replace")
    counts = {c: first.count(c) for c in ("\t", ",", ";", "|")}
    best = max(counts, key=lambda c: counts[c])
    return best if counts[best] else ","


def _read_csv(path: Path, *, fmt: str, has_header: bool, separator: str | None,
              needed: Sequence[str]) -> _TextSource:
    """Read a delimited file with every column as a string; detect ragged lines."""
    if separator is None:
        if fmt == "tsv" or path.name.lower().removesuffix(".gz").endswith(".tsv"):
            separator = "\t"
        elif path.name.lower().removesuffix(".gz").endswith(".csv"):
            separator = ","
        else:
            separator = _sniff_separator(path)
    if separator == "":
        raise ValueError("separator must not be empty")
    buffer: np.ndarray | None = None
    source: Any = path
    quote: str | None = '"'
    parse_sep = separator
    if len(separator.encode()) > 1:  # e.g. MovieLens '::': rewrite to one byte (no quoting)
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if _MULTI_SEP.encode() in data:
            raise ValueError(f"{path}: cannot use separator {separator!r}: the file contains byte 0x1f")
        data = data.replace(separator.encode(), _MULTI_SEP.encode())
        buffer = np.frombuffer(data, dtype=np.uint8)
        source, parse_sep, quote = data, _MULTI_SEP, None
    elif path.suffix == ".gz":
        buffer = np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8)
        source = buffer.tobytes()

    sep_byte = ord(parse_sep)
    quote_byte = ord(quote) if quote else None
    if has_header:
        try:
            header = pl.read_csv(source, n_rows=0, separator=parse_sep, quote_char=quote, infer_schema=False,
                                 encoding="utf8-lossy").columns
        except pl.exceptions.NoDataError as exc:
            raise ValueError(f"{path} is empty") from exc
        names = list(header)
    else:
        head = (buffer if buffer is not None else _load_buffer(path))[: 1 << 20]
        recs = _scan_records(np.asarray(head), sep_byte, quote_byte, complete=len(head) < (1 << 20))
        counts = recs.fields[~recs.blank] if recs.fields is not None else np.zeros(0, np.int64)
        if len(counts) == 0:
            counts = recs.fields if recs.fields is not None and len(recs.fields) else np.ones(1, np.int64)
        sample = counts[:1000]
        n_fields = int(sample[0])  # the first line decides, unless most sampled lines disagree with it
        if 2 * int((sample == n_fields).sum()) < len(sample):
            n_fields = int(np.bincount(sample).argmax())
        if n_fields < 1:
            raise ValueError(f"{path} is empty")
        names = [f"column_{i + 1}" for i in range(n_fields)]
    missing = [c for c in needed if c not in names]
    if missing:
        hint = " (columns of a file without header are named column_1, column_2, ...)" if not has_header else ""
        raise ValueError(f"{path}: columns {missing} not found; the file has {names}{hint}")

    def parse(ragged: bool) -> pl.DataFrame:
        return pl.read_csv(
            source, has_header=has_header, separator=parse_sep, quote_char=quote, infer_schema=False,
            schema={n: pl.Utf8 for n in names} if not has_header else None,
            truncate_ragged_lines=ragged, missing_columns="insert", encoding="utf8-lossy",
            raise_if_empty=False,
        )

    ragged = False
    try:
        df = parse(False)
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):
            raise ValueError(f"{path}: cannot parse as {fmt.upper()}: {exc}") from exc
        df = parse(True)
        ragged = True
    src = _TextSource(path, df, fmt, buffer=buffer, sep=sep_byte, quote=quote_byte, header=has_header,
                      skip_blank=False)
    src.expected_fields = len(names)
    src.separator = separator
    last = names[-1]
    if df.height and (ragged or df[last].null_count() > 0):
        recs = src.records()
        if recs is not None and recs.fields is not None:
            df = df.with_columns(_fields=pl.Series(recs.fields), _blank=pl.Series(recs.blank))
        elif ragged:
            raise ValueError(f"{path}: lines have the wrong number of fields and could not be located")
    src.df = df.select([*dict.fromkeys(needed), *[c for c in ("_fields", "_blank") if c in df.columns]])
    return src


def _read_parquet(path: Path, needed: Sequence[str]) -> _Source:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; the file has {names}")
    df = pl.read_parquet(path, columns=list(dict.fromkeys(needed)))
    return _Source(path, df, "parquet")


def _read_jsonl(path: Path, needed: Sequence[str]) -> _TextSource:
    """Read JSON lines with Polars; on malformed JSON fall back to a per-line parse to locate it."""
    needed = list(dict.fromkeys(needed))
    try:
        lf = pl.scan_ndjson(path, infer_schema_length=None)
        names = lf.collect_schema().names()
        df = lf.select([c for c in needed if c in names]).collect()
        bad_json = None
        line_numbers = None
    except pl.exceptions.ComputeError:
        df, bad_json, line_numbers, names = _parse_jsonl_slowly(path, needed)
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"{path}: keys {missing} not found in any JSON object; keys seen: {names}")
    if bad_json is not None:
        df = df.with_columns(_badjson=pl.Series(bad_json))
    src = _TextSource(path, df, "jsonl", buffer=None, sep=None, quote=None, header=False, skip_blank=True)
    src.line_numbers = line_numbers
    return src


def _parse_jsonl_slowly(path: Path, needed: Sequence[str]) -> tuple[pl.DataFrame, list[bool], np.ndarray, list[str]]:
    good: list[str] = []
    bad: list[bool] = []
    lines: list[int] = []
    seen: dict[str, None] = {}
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, 1):
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
                ok = isinstance(obj, dict)
            except ValueError:
                ok = False
            lines.append(number)
            bad.append(not ok)
            if ok:
                seen.update(dict.fromkeys(obj))
                good.append(json.dumps({k: obj[k] for k in needed if k in obj}))
            else:
                good.append("{}")
    data = ("\n".join(good) + "\n").encode()
    present = [c for c in needed if c in seen]
    if good and present:
        df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        df = df.select([c for c in present if c in df.columns])
    else:
        df = pl.DataFrame({c: pl.Series([None] * len(good), dtype=pl.Utf8) for c in present})
    for c in present:
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, pl.Utf8).alias(c))
    if df.width == 0:
        df = pl.DataFrame({"_dummy": [None] * len(good)})
    return df, bad, np.asarray(lines, dtype=np.int64), list(seen)


# ----------------------------------------------------------------------------------------- validation


def _when_codes(frame: pl.DataFrame, rules: list[tuple[str, pl.Expr]]) -> pl.Series | None:
    """Per row, the code of the first rule that holds (null when none does); None if no row breaks a rule."""
    if not rules or frame.height == 0:
        return None
    expr: Any = pl
    for short, cond in rules:
        expr = expr.when(cond).then(pl.lit(_code(short), pl.Int32))
    codes = frame.select(expr.otherwise(pl.lit(None, pl.Int32)).alias("code")).to_series()
    return None if codes.null_count() == codes.len() else codes


def _bad_int_prefix(s: pl.Series) -> bool:
    """True if some integer string is not canonical (leading zero or sign), e.g. '007' or '+5'."""
    return bool(s.str.contains(r"^(?:\+|-?0.)").any())


def _check_id(raw: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    dtype = raw.dtype
    if dtype.is_integer():
        value = raw.cast(pl.Int64, strict=False)
        return value, _when_codes(pl.DataFrame({"c": raw}), [("missing value", pl.col("c").is_null())])
    if dtype.is_float():
        value = raw.cast(pl.Int64, strict=False)
        c = pl.col("c")
        return value, _when_codes(pl.DataFrame({"c": raw, "v": value}), [
            ("missing value", c.is_null() | c.is_nan()),
            ("non-integral id", ~c.is_finite() | (c != c.floor()) | pl.col("v").is_null()),
        ])
    raw = raw.cast(pl.Utf8)
    if raw.null_count() == 0:  # fast path: canonical integers
        ints = raw.cast(pl.Int64, strict=False)
        if ints.null_count() == 0 and not _bad_int_prefix(raw):
            return ints, None
    s = raw.str.strip_chars()
    return s, _when_codes(pl.DataFrame({"c": raw, "s": s}),
                          [("missing value", pl.col("c").is_null()), ("empty id", pl.col("s") == "")])


def _check_timestamp(raw: pl.Series, unit: str) -> tuple[pl.Series, pl.Series | None]:
    factor = TIMESTAMP_UNITS[unit]
    limit = TIMESTAMP_MAX_SECONDS * factor
    dtype = raw.dtype
    v, c, f = pl.col("v"), pl.col("c"), pl.col("f")
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
        value = (raw.cast(pl.Datetime("us")) if dtype == pl.Date else raw).dt.epoch("s")
        return value, _when_codes(pl.DataFrame({"v": value}), [
            ("missing value", v.is_null()), ("negative timestamp", v < 0),
            ("timestamp after 2100-01-01", v > TIMESTAMP_MAX_SECONDS)])
    if dtype.is_integer() or (dtype == pl.Utf8 and raw.null_count() == 0):
        ints = raw.cast(pl.Int64, strict=False)
        if dtype.is_integer() or ints.null_count() == 0:  # integers (or strings that all parse as integers)
            frame = pl.DataFrame({"c": raw, "v": ints})
            codes = _when_codes(frame, [("missing value", c.is_null()), ("negative timestamp", c.cast(pl.Int64, strict=False) < 0),
                                        ("timestamp after 2100-01-01", v.is_null() | (v > limit))])
            return (ints if factor == 1 else ints // factor), codes
    if dtype.is_float():
        floats = raw.cast(pl.Float64)
        ints = floats.cast(pl.Int64, strict=False)
        frame = pl.DataFrame({"c": raw, "f": floats, "v": ints})
        codes = _when_codes(frame, [
            ("missing value", c.is_null()), ("non-finite timestamp", ~f.is_finite()),
            ("fractional timestamp", f != f.floor()), ("negative timestamp", f < 0),
            ("timestamp after 2100-01-01", v.is_null() | (v > limit))])
        return (ints if factor == 1 else ints // factor), codes
    raw = raw.cast(pl.Utf8)
    s = raw.str.strip_chars()
    ints = s.cast(pl.Int64, strict=False)
    floats = s.cast(pl.Float64, strict=False)
    value = ints.fill_null(floats.cast(pl.Int64, strict=False))
    i = pl.col("i")
    frame = pl.DataFrame({"c": raw, "s": s, "i": ints, "f": floats, "v": value})
    codes = _when_codes(frame, [
        ("missing value", c.is_null() | (pl.col("s") == "")), ("not a number", f.is_null()),
        ("non-finite timestamp", ~f.is_finite()), ("fractional timestamp", i.is_null() & (f != f.floor())),
        ("negative timestamp", (i < 0).fill_null(f < 0)),
        ("timestamp after 2100-01-01", v.is_null() | (v > limit))])
    return (value if factor == 1 else value // factor), codes


def _check_label(raw: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    c, f = pl.col("c"), pl.col("f")
    if raw.dtype.is_numeric() or raw.dtype == pl.Boolean:
        floats = raw.cast(pl.Float64)
        rules = [("missing value", c.is_null())]
        if raw.dtype.is_float():
            rules.append(("non-finite label", ~f.is_finite()))
        return floats.cast(pl.Float32), _when_codes(pl.DataFrame({"c": raw, "f": floats}), rules)
    raw = raw.cast(pl.Utf8)
    floats = raw.cast(pl.Float64, strict=False)
    if floats.null_count() == 0 and floats.is_finite().all():  # fast path
        return floats.cast(pl.Float32), None
    s = raw.str.strip_chars()
    floats = s.cast(pl.Float64, strict=False)
    return floats.cast(pl.Float32), _when_codes(pl.DataFrame({"c": raw, "s": s, "f": floats}), [
        ("missing value", c.is_null() | (pl.col("s") == "")), ("label not a number", f.is_null()),
        ("non-finite label", ~f.is_finite())])


def _check_behavior(raw: pl.Series, behaviors: Collection[str] | None) -> tuple[pl.Series, pl.Series | None]:
    raw = raw.cast(pl.Utf8)
    allowed = sorted(behaviors) if behaviors is not None else None
    if allowed is not None and raw.null_count() == 0 and raw.is_in(allowed).all():  # fast path
        return raw, None
    if allowed is None and raw.null_count() == 0 and not _padded_or_empty(raw).any():  # fast path, no copy
        return raw, None
    s = raw.str.strip_chars()
    rules = [("missing value", pl.col("c").is_null() | (pl.col("s") == ""))]
    if allowed is not None:
        rules.append(("unknown behavior", ~pl.col("s").is_in(allowed)))
    return s, _when_codes(pl.DataFrame({"c": raw, "s": s}), rules)


def _feature_value(role: str, raw: pl.Series) -> pl.Series:
    if role == "attributes":
        if isinstance(raw.dtype, (pl.List, pl.Array)):
            return raw.cast(pl.List(pl.Utf8))
        parts = raw.cast(pl.Utf8).str.split("|").list.eval(pl.element().str.strip_chars())
        return parts.list.eval(pl.element().filter(pl.element() != ""))
    if role in ("category", "title"):
        s = raw.cast(pl.Utf8)
        blank = s.str.contains(r"^\s*$")
        if not blank.any():  # the usual case: keep the column as it is (no copy of every string)
            return s
        return pl.select(pl.when(blank).then(None).otherwise(s)).to_series()
    return _narrow_strings(raw)  # user features: keep the source dtype; numeric strings become numbers


def _padded_or_empty(s: pl.Series) -> pl.Series:
    """True where a string is empty or has leading or trailing white space."""
    return s.str.contains(r"^\s|\s$") | (s.str.len_bytes() == 0)


def _narrow_strings(s: pl.Series) -> pl.Series:
    """Cast a string column to Int64 or Float64 when every non-null value parses."""
    if s.dtype != pl.Utf8 or s.null_count() == s.len():
        return s
    stripped = s.str.strip_chars()
    as_int = stripped.cast(pl.Int64, strict=False)
    if as_int.null_count() == s.null_count():
        return as_int
    as_float = stripped.cast(pl.Float64, strict=False)
    if as_float.null_count() == s.null_count():
        return as_float
    return s


def _integral_ids(s: pl.Series) -> pl.Series:
    """Int64 if every id is a canonical integer (no leading zeros or signs), else the strings."""
    if s.dtype != pl.Utf8 or s.len() == 0 or s.null_count():
        return s
    ints = s.cast(pl.Int64, strict=False)
    if ints.null_count() or _bad_int_prefix(s):
        return s
    return ints


@dataclass
class _Validated:
    events: pl.DataFrame
    item_features: pl.DataFrame | None
    rejected: pl.DataFrame | None
    n_rows: int  # data rows seen (for the row offset of the next file)


def _validate(src: _Source, roles: Mapping[str, str], *, unit: str, behaviors: Collection[str] | None,
              on_bad_rows: str, row_offset: int) -> _Validated:
    """Check every row of ``src`` against the roles, then build events and item features."""
    df = src.df
    n_rows = df.height
    idx = _range_like(df).alias("_idx")
    if "_blank" in df.columns and df["_blank"].any():
        keep = ~df["_blank"]
        df, idx = df.filter(keep), idx.filter(keep)
    role_list = list(roles)  # column index i + 1 in error codes; 0 = the whole row
    values: dict[str, pl.Series] = {}
    codes: list[pl.Series] = []
    if "_fields" in df.columns:
        wrong = df["_fields"] != src.expected_fields
        if wrong.any():
            codes.append(pl.select(pl.when(wrong).then(pl.lit(_code("wrong field count"), pl.Int32))).to_series())
    if "_badjson" in df.columns and df["_badjson"].any():
        codes.append(pl.select(pl.when(df["_badjson"]).then(pl.lit(_code("malformed JSON"), pl.Int32))).to_series())
    for i, role in enumerate(role_list, 1):
        raw = df[roles[role]]
        code = None
        if role in ("user_id", "item_id"):
            value, code = _check_id(raw)
        elif role == "timestamp":
            value, code = _check_timestamp(raw, unit)
        elif role == "label":
            value, code = _check_label(raw)
        elif role == "behavior":
            value, code = _check_behavior(raw, behaviors)
        else:
            value = _feature_value(role, raw)
        values[role] = value.alias(role)
        if code is not None:
            codes.append(code + i * _CODE_BITS)

    rejected: pl.DataFrame | None = None
    good: pl.Series | None = None
    if codes:
        err = pl.select(pl.coalesce(codes)).to_series() if len(codes) > 1 else codes[0]
        bad_pos = err.is_not_null().arg_true()
        frame = df.with_columns(idx, err.alias("_err"))
        if on_bad_rows == "error":
            raise _bad_row_error(src, frame.row(int(bad_pos[0]), named=True), roles, role_list, unit, behaviors)
        rejected = _rejected_frame(src, frame.gather(bad_pos), roles, role_list)
        good = err.is_null()
        first = rejected.row(0, named=True)
        warnings.warn(
            f"{src.path.name}: skipped {len(bad_pos)} bad row(s); first at line {first['line']}, "
            f"column {first['column']!r}: {first['reason']}", BadRowsSkippedWarning, stacklevel=4)
    elif on_bad_rows == "skip":
        rejected = empty_rejected()
    del df

    row = idx + row_offset if row_offset else idx
    columns = [values[r] for r in EVENT_ROLES if r in values]
    columns += [values[r] for r in role_list if r.startswith(USER_FEATURE_PREFIX)]
    columns.append(row.alias("row"))
    feats = [r for r in ITEM_FEATURE_ROLES if r in values]
    columns += [values[r].alias(f"__item_{r}") for r in feats]
    out = pl.DataFrame(columns)
    if good is not None:
        out = out.filter(good)
    out = out.with_columns(_integral_ids(out["user_id"]), _integral_ids(out["item_id"]))
    item_features = None
    if feats:
        item_features = _first_values(out.select("item_id", *[pl.col(f"__item_{r}").alias(r) for r in feats]))
        out = out.drop([f"__item_{r}" for r in feats])
    return _Validated(out, item_features, rejected, n_rows)


def _range_like(df: pl.DataFrame) -> pl.Series:
    """0, 1, ..., height - 1 in the chunks of ``df``'s first column: a frame of both then needs no
    rechunk (which would copy every column of the log at once)."""
    bounds = np.cumsum([0, *(df.to_series(0).chunk_lengths() if df.width else [df.height])]).tolist()
    parts = [pl.int_range(a, b, dtype=pl.Int64, eager=True) for a, b in zip(bounds[:-1], bounds[1:])]
    return pl.concat(parts, rechunk=False) if parts else pl.Series([], dtype=pl.Int64)


def _first_values(per_event: pl.DataFrame, chunk: int = 1 << 21) -> pl.DataFrame:
    """Per item_id (in order of first appearance), the first non-missing value of every other column.

    Done a slice of rows at a time, then once more over the slices' results: a group-by over all of a
    20 M-event log at once costs about 1 GiB; this is exact because the first value over the whole
    log is the first among the slices' first values, taken in order.
    """
    def first(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.group_by("item_id", maintain_order=True).agg(
            pl.col(c).drop_nulls().first() for c in frame.columns if c != "item_id")

    if per_event.height <= chunk:
        return first(per_event)
    return first(pl.concat([first(per_event.slice(start, chunk)) for start in range(0, per_event.height, chunk)]))


def _timestamp_fix(value: str, unit: str) -> str:
    try:
        v = float(value)
    except ValueError:
        return DEFAULT_FIX
    for smaller in ("ms", "us", "ns"):
        if TIMESTAMP_UNITS[smaller] > TIMESTAMP_UNITS[unit] and 0 <= v / TIMESTAMP_UNITS[smaller] <= TIMESTAMP_MAX_SECONDS:
            return (f"the value looks like {_UNIT_WORDS[smaller]}: pass timestamp_unit='{smaller}' "
                    f"(--timestamp-unit {smaller}), or {DEFAULT_FIX}")
    return DEFAULT_FIX


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _bad_row_error(src: _Source, row: dict[str, Any], roles: Mapping[str, str], role_list: list[str], unit: str,
                   behaviors: Collection[str] | None) -> BadRowError:
    err = int(row["_err"])
    col_index, code = divmod(err, _CODE_BITS)
    reason = _BY_CODE[code]
    line = int(src.lines(np.asarray([row["_idx"]], dtype=np.int64))[0])
    sep = src.separator
    expected = reason.expected.format(
        unit=_UNIT_WORDS[unit], expected_fields=src.expected_fields, sep=repr(sep),
        behaviors=", ".join(repr(b) for b in sorted(behaviors or ())),
    )
    if col_index == 0:
        raw = src.raw(np.asarray([row["_idx"]], dtype=np.int64))
        text = raw[0] if raw else ""
        if code == _code("wrong field count"):
            return BadRowError(str(src.path.name), line, "*", text, expected,
                               f"make every line have {src.expected_fields} fields (quote fields that contain "
                               f"the separator), or {DEFAULT_FIX}", got=f"{row['_fields']} fields")
        return BadRowError(str(src.path.name), line, "*", text, expected, DEFAULT_FIX,
                           got=repr(text[:200]))
    role = role_list[col_index - 1]
    value = _cell_text(row[roles[role]])
    fix = _timestamp_fix(value, unit) if code == _code("timestamp after 2100-01-01") else DEFAULT_FIX
    return BadRowError(str(src.path.name), line, role, value, expected, fix)


def _rejected_frame(src: _Source, bad: pl.DataFrame, roles: Mapping[str, str], role_list: list[str]) -> pl.DataFrame:
    idx = bad["_idx"].to_numpy()
    col_index = bad["_err"] // _CODE_BITS
    code = bad["_err"] % _CODE_BITS
    names = pl.Series(["*", *role_list])
    column = names.gather(col_index)
    value_expr: Any = pl
    for i, role in enumerate(role_list, 1):
        value_expr = value_expr.when(pl.col("_ci") == i).then(pl.col(roles[role]).cast(pl.Utf8))
    if "_fields" in bad.columns:
        value_expr = value_expr.when(pl.col("_ci") == 0).then(pl.format("{} fields", pl.col("_fields")))
    value = bad.with_columns(_ci=col_index).select(
        (value_expr.otherwise(pl.lit(None, pl.Utf8)) if role_list or "_fields" in bad.columns
         else pl.lit(None, pl.Utf8)).fill_null("").alias("v"))["v"]
    reason = code.replace_strict({c: r.short for c, r in _BY_CODE.items()}, return_dtype=pl.Utf8)
    raw = src.raw(idx)
    if raw is None:
        cols = [roles[r] for r in role_list]
        raw = [repr(dict(zip(role_list, r))) for r in bad.select(cols).iter_rows()]
    return pl.DataFrame(
        {
            "file": [src.path.name] * bad.height,
            "line": src.lines(idx),
            "column": column,
            "value": value,
            "reason": reason,
            "raw": raw,
        },
        schema=REJECTED_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------- public


def _resolve_roles(columns: Mapping[str, str] | None, available: Sequence[str] | None) -> dict[str, str]:
    known = set(EVENT_ROLES) | set(ITEM_FEATURE_ROLES)
    if columns is None:
        if available is None:
            raise ValueError("pass columns= for a file without header")
        roles = {c: c for c in available if c in known or c.startswith(USER_FEATURE_PREFIX)}
    else:
        roles = {}
        for role, source in columns.items():
            if role not in known and not (role.startswith(USER_FEATURE_PREFIX) and len(role) > len(USER_FEATURE_PREFIX)):
                raise ValueError(
                    f"unknown column role {role!r}; expected one of {sorted(known)} or 'user__<name>'")
            roles[role] = str(source)
    missing = [r for r in REQUIRED_ROLES if r not in roles]
    if missing:
        raise ValueError(f"no source column for {missing}; pass columns={{'user_id': ..., 'item_id': ..., "
                         f"'timestamp': ...}}" + (f" (the file has {list(available)})" if available else ""))
    order = [r for r in (*EVENT_ROLES, *ITEM_FEATURE_ROLES) if r in roles]
    order += [r for r in roles if r.startswith(USER_FEATURE_PREFIX)]
    return {r: roles[r] for r in order}


def _header_names(path: Path, fmt: str, has_header: bool, separator: str | None) -> list[str] | None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=1000).collect_schema().names()
    if not has_header:
        return None
    with _open_binary(path) as handle:
        first = handle.readline(1 << 20).decode("utf-8", "replace").rstrip("\r\n")
    sep = separator or ("\t" if fmt == "tsv" else _sniff_separator(path))
    return [c.strip('"') for c in first.split(sep)]


def read_events_frame(path: str | Path, *, columns: Mapping[str, str] | None = None, fmt: str | None = None,
                      has_header: bool = True, separator: str | None = None, timestamp_unit: str = "s",
                      on_bad_rows: str = "error", behaviors: Collection[str] | None = None,
                      row_offset: int = 0) -> _Validated:
    """Like :func:`read_events` but returns the validated parts (used by recipes that combine files)."""
    path = Path(path)
    check_on_bad_rows(on_bad_rows)
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp_unit must be one of {tuple(TIMESTAMP_UNITS)}, got {timestamp_unit!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    kind = _detect_format(path, fmt)
    available = _header_names(path, kind, has_header, separator) if columns is None else None
    roles = _resolve_roles(columns, available)
    needed = list(roles.values())
    if kind in ("csv", "tsv"):
        src: _Source = _read_csv(path, fmt=kind, has_header=has_header, separator=separator, needed=needed)
    elif kind == "parquet":
        src = _read_parquet(path, needed)
    else:
        src = _read_jsonl(path, needed)
    return _validate(src, roles, unit=timestamp_unit, behaviors=behaviors, on_bad_rows=on_bad_rows,
                     row_offset=row_offset)


def read_events(path: str | Path, *, columns: Mapping[str, str] | None = None, fmt: str | None = None,
                has_header: bool = True, separator: str | None = None, timestamp_unit: str = "s",
                on_bad_rows: str = "error", behaviors: Collection[str] | None = None) -> EventLog:
    """Read and validate one event file into an :class:`EventLog`.

    path: CSV/TSV (.csv, .tsv, .txt, .dat), Parquet (.parquet, .pq) or JSON lines (.jsonl, .json, .ndjson);
        text formats may be gzipped (.gz). ``fmt`` ('csv', 'tsv', 'parquet', 'jsonl') overrides detection.
    columns: lifelong name -> source column (see the module docstring). Default: the source columns that
        already carry lifelong names. Headerless CSV columns are 'column_1', 'column_2', ...
    separator: field separator for CSV (may be several characters, e.g. '::'; then quoting is off).
    timestamp_unit: 's', 'ms', 'us' or 'ns'; timestamps are converted to (floored) seconds.
    on_bad_rows: 'error' raises BadRowError for the first bad row; 'skip' drops bad rows into
        ``rejected`` and warns with their count.
    behaviors: when given, the allowed values of the behavior column (others are bad rows).
    """
    part = read_events_frame(path, columns=columns, fmt=fmt, has_header=has_header, separator=separator,
                             timestamp_unit=timestamp_unit, on_bad_rows=on_bad_rows, behaviors=behaviors)
    items = part.item_features
    if items is not None:
        items = items.with_columns(pl.col("item_id").cast(part.events.schema["item_id"]))
    return EventLog(events=part.events, items=items, sources=[Path(path)], rejected=part.rejected,
                    recipe="events")
