"""Strict, vectorised readers for raw event logs (CSV/TSV, Parquet, JSON lines).

Every input row is checked with Polars expressions (no Python loop per row on the normal path). A bad row
either raises :class:`BadRowError` naming its 1-based line and column (``on_bad_rows='error'``, the first
bad row in file order) or is dropped into ``EventLog.rejected`` (``on_bad_rows='skip'``).

Column mapping: ``columns`` maps lifelong names to source column names. Lifelong names are
``user_id``, ``item_id``, ``timestamp`` (required), ``behavior``, ``label``, user features ``user__<name>``
and item features ``category``, ``title``, ``attributes`` (these go to ``EventLog.items``, first non-null
value per item, and not into ``events``). For a CSV without header the source columns are named
``column_1``, ``column_2``, ... (1-based).

A file that cannot be read at all (a truncated gzip or Parquet file, a quote that is never closed, a column
of lists where ids belong) is a :class:`~lifelong.errors.UserError` naming the file and, where it can, the
line; ids longer than ``max_id_bytes`` are bad rows.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    shorten,
)
from lifelong.data.schema import quote as _quoted
from lifelong.errors import UserError

TIMESTAMP_MAX_SECONDS = 4_102_444_800  # 2100-01-01T00:00:00Z
TIMESTAMP_UNITS: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
TIMESTAMP_UNIT_CHOICES: tuple[str, ...] = (*TIMESTAMP_UNITS, "iso")  # iso: ISO-8601 dates / datetimes
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
               "iso": "ISO-8601 dates"}
ISO_EXAMPLE = "e.g. 2020-01-31 or 2020-01-31T12:00:00Z"
DEFAULT_MAX_ID_BYTES = 256  # longer user or item ids are bad rows (--max-id-bytes)

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
    expected_iso: str | None = None  # instead of ``expected`` when timestamps are ISO-8601 dates


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
        _Reason(9, "negative timestamp", "a non-negative unix timestamp in {unit}", "a date from 1970-01-01 on"),
        _Reason(10, "timestamp after 2100-01-01", "a unix timestamp in {unit} before 2100-01-01",
                "a date before 2100-01-01"),
        _Reason(11, "label not a number", "a numeric label"),
        _Reason(12, "non-finite label", "a finite numeric label"),
        _Reason(13, "unknown behavior", "one of {behaviors}"),
        _Reason(14, "id too long", "an id of at most {max_id_bytes} bytes (--max-id-bytes)"),
        _Reason(15, "not an ISO date", f"an ISO-8601 date or datetime ({ISO_EXAMPLE})"),
        _Reason(16, "nested value", "a single value, not a JSON list or object"),
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
        return np.frombuffer(gunzip(path), dtype=np.uint8)
    if path.stat().st_size == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


# ------------------------------------------------------------------------------------ unreadable files


def gunzip(path: Path) -> bytes:
    """The decompressed bytes of the gzip file ``path`` (a truncated or corrupt file: :class:`UserError`)."""
    with gzip_errors(path):
        return gzip.decompress(path.read_bytes())


@contextmanager
def gzip_errors(path: Path) -> Iterator[None]:
    """Turn the errors of reading a truncated, corrupt or not-gzip ``.gz`` file into a :class:`UserError`
    (and refuse a ``.gz`` file that is not gzip at all before reading it)."""
    if path.suffix == ".gz" and path.is_file():
        with open(path, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                raise UserError(_gzip_problem(path, gzip.BadGzipFile("not a gzipped file")))
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(_gzip_problem(path, exc)) from None


def _gzip_problem(path: Path, exc: BaseException) -> str:
    check = f"`gzip -t {path.name}` checks a file"
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head.startswith(b"\x1f\x8b"):
        return (f"{path} is named .gz but is not gzip-compressed (it starts with {_quoted(head.decode('utf-8', 'replace'), 16)})."
                f" Fix: rename it without .gz, or compress it with gzip")
    if isinstance(exc, EOFError):
        return (f"{path} is a truncated gzip file: it ends before its compressed data does (an interrupted "
                f"download or copy?). Fix: download or copy it again; {check}")
    return f"{path} is a corrupt gzip file ({exc}). Fix: download or copy it again; {check}"


def _parquet_problem(path: Path, exc: BaseException) -> UserError:
    """A :class:`UserError` saying why ``path`` cannot be read as Parquet (looking at its first and last bytes)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if head != b"PAR1":
        why = "it does not start with the Parquet marker PAR1, so it is not Parquet at all"
    elif tail != b"PAR1" or size < 12:
        why = "its end (the Parquet footer) is missing: the file is truncated (an interrupted download or copy?)"
    else:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = f"it is damaged: {why[:160]}"
    return UserError(f"{path} is not a readable Parquet file: {why}. Fix: write or copy it again; a CSV or "
                     f"JSON-lines file needs a .csv/.tsv or .jsonl name")


def _quote_problem(path: Path, buf: np.ndarray, sep: int, quote_byte: int) -> str | None:
    """Where the double quotes of a CSV go wrong, as a message naming the line (None: nothing found).

    Quotes pair up in order (``""`` inside a quoted field is two quotes that pair up too): a field whose
    quote is never closed, or whose closing quote is followed by something other than a separator or the
    line end, or a quote in the middle of an unquoted field. Only called after the parser failed.
    """
    n = len(buf)
    qpos = np.flatnonzero(buf == quote_byte)
    if len(qpos) == 0:
        return None
    opens, closes = qpos[0::2], qpos[1::2]
    before = np.where(opens > 0, buf[np.maximum(opens - 1, 0)], 10)
    after = np.where(closes + 1 < n, buf[np.minimum(closes + 1, n - 1)], 10)
    prev_close = np.concatenate([[-2], closes])[: len(opens)]  # an escaped quote follows a closing one
    mid_field = ~np.isin(before, [sep, 10, 13]) & (opens - 1 != prev_close)
    bad_close = ~np.isin(after, [sep, 10, 13, quote_byte])
    problems: list[tuple[int, int, int]] = []  # (byte offset of the opening quote, kind, its closing quote)
    if mid_field.any():
        problems.append((int(opens[mid_field.argmax()]), 0, -1))
    if bad_close.any():
        k = int(bad_close.argmax())
        problems.append((int(opens[k]), 1, int(closes[k])))
    if len(opens) > len(closes):
        problems.append((int(opens[-1]), 2, -1))
    if not problems:
        return None
    pos, kind, close = min(problems)
    newlines = np.flatnonzero(buf[:pos] == 10)
    line = len(newlines) + 1
    start = int(newlines[-1]) + 1 if len(newlines) else 0
    text = bytes(buf[start: start + 200]).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    if kind == 0:
        what = "a double quote in the middle of an unquoted field"
    elif kind == 1:
        close_line = line + int(np.count_nonzero(buf[pos:close] == 10))
        what = ("a quoted field is followed by text after its closing quote" if close_line == line else
                f"a quoted field starts here and is not closed properly (the next quote, on line {close_line}, "
                f"is followed by text, not by a separator)")
    else:
        what = "a quoted field starts here and its quote is never closed"
    return (f"{path}, line {line}: {what}: {_quoted(text)}. Fix: close the quote, write a quote inside a quoted "
            f"field as two (\"\"), or remove the stray quote")


# ----------------------------------------------------------------------------------------- raw tables


class _Source:
    """A parsed input file: string or typed columns under lifelong names, plus row -> line mapping."""

    def __init__(self, path: Path, df: pl.DataFrame, kind: str) -> None:
        self.path = path
        self.df = df
        self.kind = kind
        self.expected_fields: int | None = None
        self.separator: str | None = None
        self.unit = "row" if kind == "parquet" else "line"  # what a position in the file is called

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
            if self._skip_blank:  # JSON lines: Polars skips lines of white space only
                recs = recs.select(~_white_space_only(self.buffer, recs))
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
        if self.line_numbers is not None:  # a line-by-line parse: record k of a plain line scan is line k + 1
            physical = _scan_records(self.buffer, None, None)
            return physical.text(self.buffer, self.line_numbers[idx] - 1)
        recs = self.records()
        return None if recs is None else recs.text(self.buffer, idx)


def _white_space_only(buf: np.ndarray, recs: _Records) -> np.ndarray:
    """True for the records that are empty or hold only spaces, tabs and carriage returns."""
    out = recs.blank.copy()
    n = len(buf)
    if n == 0:
        return out
    first = buf[np.minimum(recs.starts, n - 1)]
    maybe = np.flatnonzero(~out & np.isin(first, (9, 13, 32)))  # few: lines that start with white space
    for k in maybe.tolist():
        out[k] = not bytes(buf[recs.starts[k]:recs.ends[k]]).strip()
    return out


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
        data = gunzip(path) if path.suffix == ".gz" else path.read_bytes()
        if _MULTI_SEP.encode() in data:
            raise ValueError(f"{path}: cannot use separator {separator!r}: the file contains byte 0x1f")
        data = data.replace(separator.encode(), _MULTI_SEP.encode())
        buffer = np.frombuffer(data, dtype=np.uint8)
        source, parse_sep, quote = data, _MULTI_SEP, None
    elif path.suffix == ".gz":
        source = gunzip(path)
        buffer = np.frombuffer(source, dtype=np.uint8)

    sep_byte = ord(parse_sep)
    quote_byte = ord(quote) if quote else None

    def unparsable(exc: Exception) -> UserError:
        """The parser failed: say where the quotes go wrong, or else the parser's first line."""
        if quote_byte is not None:
            where = _quote_problem(path, buffer if buffer is not None else _load_buffer(path), sep_byte, quote_byte)
            if where is not None:
                return UserError(where)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return UserError(f"{path}: cannot parse as {fmt.upper()}: {shorten(first)}")

    if has_header:
        try:
            header = pl.read_csv(source, n_rows=0, separator=parse_sep, quote_char=quote, infer_schema=False,
                                 encoding="utf8-lossy").columns
        except pl.exceptions.NoDataError as exc:
            raise ValueError(f"{path} is empty") from exc
        except pl.exceptions.PolarsError as exc:
            raise unparsable(exc) from None
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
    except pl.exceptions.PolarsError as exc:
        if "more fields" not in str(exc):
            raise unparsable(exc) from None
        try:
            df = parse(True)
        except pl.exceptions.PolarsError as again:
            raise unparsable(again) from None
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


def _parquet_names(path: Path) -> list[str]:
    """The column names of a Parquet file (an unreadable file: :class:`UserError`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise _parquet_problem(path, exc) from None


def _read_parquet(path: Path, needed: Sequence[str]) -> _Source:
    import pyarrow as pa

    names = _parquet_names(path)
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; the file has {names}")
    try:
        df = pl.read_parquet(path, columns=list(dict.fromkeys(needed)))
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
        raise _parquet_problem(path, exc) from None
    return _Source(path, df, "parquet")


def _read_jsonl(path: Path, needed: Sequence[str], scalar: Collection[str] = ()) -> _TextSource:
    """Read JSON lines with Polars; on malformed JSON (or values Polars cannot put in one column) fall back
    to a per-line parse that locates the bad lines. ``scalar``: the keys that must hold single values."""
    needed = list(dict.fromkeys(needed))
    flags: dict[str, list[bool]] = {}
    try:
        lf = pl.scan_ndjson(path, infer_schema_length=None)
        names = lf.collect_schema().names()
        df = lf.select([c for c in needed if c in names]).collect()
        bad_json = None
        line_numbers = None
    except (pl.exceptions.PolarsError, OSError):  # OSError: a truncated .gz (the slow parser names it)
        df, bad_json, line_numbers, names, flags = _parse_jsonl_slowly(path, needed, scalar)
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"{path}: keys {missing} not found in any JSON object; keys seen: {names}")
    if bad_json is not None:
        df = df.with_columns(_badjson=pl.Series(bad_json))
    if flags:
        df = df.with_columns(pl.Series(f"{_NESTED}{key}", flag) for key, flag in flags.items())
    src = _TextSource(path, df, "jsonl", buffer=None, sep=None, quote=None, header=False, skip_blank=True)
    src.line_numbers = line_numbers
    return src


_NESTED = "_nested:"  # prefix of the columns that mark rows whose value of a key is a JSON list or object


def _parse_jsonl_slowly(path: Path, needed: Sequence[str], scalar: Collection[str] = (),
                        ) -> tuple[pl.DataFrame, list[bool], np.ndarray, list[str], dict[str, list[bool]]]:
    """Parse JSON lines one by one: the ``needed`` keys of every non-blank line, which lines are not JSON
    objects, their line numbers, the keys seen, and per ``scalar`` key that mixes lists or objects with
    single values, which rows hold a list or object (those become bad rows)."""
    rows: list[dict[str, Any]] = []
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
                rows.append({k: obj[k] for k in needed if k in obj})
            else:
                rows.append({})
    present = [c for c in needed if c in seen]
    columns: dict[str, pl.Series] = {}
    flags: dict[str, list[bool]] = {}
    for key in present:
        values = [r.get(key) for r in rows]
        nested = [isinstance(v, (list, dict)) for v in values]
        if key in scalar and any(nested) and not all(n or v is None for n, v in zip(nested, values)):
            flags[key] = nested  # a list or object among single values: those rows are bad
            values = [json.dumps(v) if n else v for v, n in zip(values, nested)]
        try:
            columns[key] = pl.Series(key, values, strict=False)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):  # e.g. integers past int64
            columns[key] = pl.Series(key, [None if v is None else v if isinstance(v, str) else json.dumps(v)
                                           for v in values], dtype=pl.Utf8)
        if columns[key].dtype == pl.Null:
            columns[key] = columns[key].cast(pl.Utf8)
    df = pl.DataFrame(list(columns.values())) if columns else pl.DataFrame({"_dummy": [None] * len(rows)})
    return df, bad, np.asarray(lines, dtype=np.int64), list(seen), flags


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


def _check_id(raw: pl.Series, max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> tuple[pl.Series, pl.Series | None]:
    dtype = raw.dtype
    short = max_id_bytes < 24  # a limit shorter than some integer ids (int64 has at most 20 characters)
    if dtype.is_integer():
        value = raw.cast(pl.Int64, strict=False)
        if value.null_count() > raw.null_count():  # past int64 (UInt64, Int128): keep the digits as string ids
            value = raw.cast(pl.Utf8)
        rules = [("missing value", pl.col("c").is_null())]
        if short:
            rules.append(("id too long", pl.col("c").cast(pl.Utf8).str.len_bytes() > max_id_bytes))
        return value, _when_codes(pl.DataFrame({"c": raw}), rules)
    if dtype.is_float():
        value = raw.cast(pl.Int64, strict=False)
        c = pl.col("c")
        rules = [("missing value", c.is_null() | c.is_nan()),
                 ("non-integral id", ~c.is_finite() | (c != c.floor()) | pl.col("v").is_null())]
        if short:
            rules.append(("id too long", pl.col("v").cast(pl.Utf8).str.len_bytes() > max_id_bytes))
        return value, _when_codes(pl.DataFrame({"c": raw, "v": value}), rules)
    raw = raw.cast(pl.Utf8)
    if raw.null_count() == 0 and not short:  # fast path: canonical integers
        ints = raw.cast(pl.Int64, strict=False)
        if ints.null_count() == 0 and not _bad_int_prefix(raw):
            return ints, None
    s = raw.str.strip_chars()
    return s, _when_codes(pl.DataFrame({"c": raw, "s": s}),
                          [("missing value", pl.col("c").is_null()), ("empty id", pl.col("s") == ""),
                           ("id too long", pl.col("s").str.len_bytes() > max_id_bytes)])


def _check_timestamp(raw: pl.Series, unit: str) -> tuple[pl.Series, pl.Series | None]:
    if unit == "iso" and not (isinstance(raw.dtype, pl.Datetime) or raw.dtype == pl.Date):
        return _check_iso_timestamp(raw)
    factor = TIMESTAMP_UNITS.get(unit, 1)
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


# ISO-8601 forms tried in order, after a trailing Z became +00:00 and a space between date and time a T
_ISO_FORMATS: tuple[tuple[str, bool], ...] = (  # (format, has an offset)
    ("%Y-%m-%dT%H:%M:%S%.f%z", True), ("%Y-%m-%dT%H:%M:%S%.f", False), ("%Y-%m-%dT%H:%M%z", True),
    ("%Y-%m-%dT%H:%M", False), ("%Y-%m-%d", False),
)


def _check_iso_timestamp(raw: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    """ISO-8601 dates or datetimes (no offset: UTC) -> unix seconds (floored)."""
    text = raw.cast(pl.Utf8).str.strip_chars()
    normal = text.str.replace(r"[zZ]$", "+00:00").str.replace(r"^(\d{4}-\d\d-\d\d) ", "${1}T")
    value = pl.Series([None] * len(raw), dtype=pl.Int64)
    for form, offset in _ISO_FORMATS:
        todo = value.is_null() & normal.is_not_null()
        if not todo.any():
            break
        parsed = normal.str.to_datetime(form, strict=False, exact=True, time_unit="us",
                                        time_zone="UTC" if offset else None)
        value = value.fill_null(parsed.dt.epoch("s"))
    v = pl.col("v")
    codes = _when_codes(pl.DataFrame({"s": text, "v": value}), [
        ("missing value", pl.col("s").is_null() | (pl.col("s") == "")), ("not an ISO date", v.is_null()),
        ("negative timestamp", v < 0), ("timestamp after 2100-01-01", v > TIMESTAMP_MAX_SECONDS)])
    return value, codes


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


# What each role's source column may hold; a column of another type cannot be read as that role at all.
_ROLE_TYPES: dict[str, str] = {
    "user_id": "one integer or string id per row", "item_id": "one integer or string id per row",
    "timestamp": "one integer unix timestamp, date or datetime per row", "behavior": "one string per row",
    "label": "one number per row", "category": "one string per row", "title": "one string per row",
}


def _check_column_type(src: _Source, role: str, column: str, dtype: pl.DataType) -> None:
    """Raise :class:`UserError` when the column mapped to ``role`` has a type that cannot be that role (lists
    or structs where ids belong, binary, durations...)."""
    if role not in _ROLE_TYPES:
        return
    nested = isinstance(dtype, (pl.List, pl.Array, pl.Struct))
    odd = nested or isinstance(dtype, (pl.Binary, pl.Object, pl.Time, pl.Duration))
    if role in ("user_id", "item_id", "timestamp") and dtype == pl.Boolean:
        odd = True
    if not odd:
        return
    kind = "lists" if isinstance(dtype, (pl.List, pl.Array)) else "structs" if isinstance(dtype, pl.Struct) else "values"
    fix = "flatten the column first, or " if nested else ""
    raise UserError(
        f"{src.path}: column {column!r} ({role}) holds {kind} of type {dtype}; expected {_ROLE_TYPES[role]}. "
        f"Fix: {fix}map {role} to another column (--column {role}=NAME)")


def _validate(src: _Source, roles: Mapping[str, str], *, unit: str, behaviors: Collection[str] | None,
              on_bad_rows: str, row_offset: int, max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> _Validated:
    """Check every row of ``src`` against the roles, then build events and item features."""
    for role, column in roles.items():
        _check_column_type(src, role, column, src.df.schema[column])
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
            value, code = _check_id(raw, max_id_bytes)
        elif role == "timestamp":
            value, code = _check_timestamp(raw, unit)
        elif role == "label":
            value, code = _check_label(raw)
        elif role == "behavior":
            value, code = _check_behavior(raw, behaviors)
        else:
            value = _feature_value(role, raw)
        values[role] = value.alias(role)
        nested = f"{_NESTED}{roles[role]}"
        if role in _ROLE_TYPES and nested in df.columns:  # JSON lists or objects among single values
            flag = pl.select(pl.when(df[nested]).then(pl.lit(_code("nested value"), pl.Int32))).to_series()
            code = flag if code is None else pl.select(pl.coalesce(flag, code)).to_series()
        if code is not None:
            codes.append(code + i * _CODE_BITS)

    rejected: pl.DataFrame | None = None
    good: pl.Series | None = None
    if codes:
        err = pl.select(pl.coalesce(codes)).to_series() if len(codes) > 1 else codes[0]
        bad_pos = err.is_not_null().arg_true()
        frame = df.with_columns(idx, err.alias("_err"))
        if on_bad_rows == "error":
            raise _bad_row_error(src, frame.row(int(bad_pos[0]), named=True), roles, role_list, unit, behaviors,
                                 max_id_bytes)
        rejected = _rejected_frame(src, frame.gather(bad_pos), roles, role_list)
        good = err.is_null()
        first = rejected.row(0, named=True)
        warnings.warn(
            f"{src.path.name}: skipped {len(bad_pos)} bad row(s); first at {src.unit} {first['line']}, "
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


_LOOKS_ISO = re.compile(r"\s*\d{4}-\d\d-\d\d")


def timestamp_fix(value: str, unit: str) -> str | None:
    """Advice when a rejected timestamp looks like another unit (milliseconds, an ISO date), else None."""
    if unit != "iso" and _LOOKS_ISO.match(value):
        return "the value looks like an ISO-8601 date: pass --timestamp-unit iso (timestamp_unit='iso' in Python)"
    try:
        v = float(value)
    except ValueError:
        return None
    if unit == "iso":
        return None if v != v else "the value looks like a unix timestamp: pass --timestamp-unit s (or ms, us, ns)"
    for smaller in ("ms", "us", "ns"):
        if TIMESTAMP_UNITS[smaller] > TIMESTAMP_UNITS[unit] and 0 <= v / TIMESTAMP_UNITS[smaller] <= TIMESTAMP_MAX_SECONDS:
            return (f"the value looks like {_UNIT_WORDS[smaller]}: pass --timestamp-unit {smaller} "
                    f"(timestamp_unit='{smaller}' in Python)")
    return None


def _timestamp_fix(value: str, unit: str) -> str:
    advice = timestamp_fix(value, unit)
    return DEFAULT_FIX if advice is None else f"{advice}, or {DEFAULT_FIX}"


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _bad_row_error(src: _Source, row: dict[str, Any], roles: Mapping[str, str], role_list: list[str], unit: str,
                   behaviors: Collection[str] | None, max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> BadRowError:
    err = int(row["_err"])
    col_index, code = divmod(err, _CODE_BITS)
    reason = _BY_CODE[code]
    line = int(src.lines(np.asarray([row["_idx"]], dtype=np.int64))[0])
    sep = src.separator
    template = reason.expected_iso if unit == "iso" and reason.expected_iso else reason.expected
    expected = template.format(
        unit=_UNIT_WORDS[unit], expected_fields=src.expected_fields, sep=repr(sep),
        behaviors=", ".join(repr(b) for b in sorted(behaviors or ())), max_id_bytes=max_id_bytes,
    )
    if col_index == 0:
        raw = src.raw(np.asarray([row["_idx"]], dtype=np.int64))
        text = raw[0] if raw else ""
        if code == _code("wrong field count"):
            return BadRowError(str(src.path.name), line, "*", text, expected,
                               f"make every line have {src.expected_fields} fields (quote fields that contain "
                               f"the separator), or {DEFAULT_FIX}", got=f"{row['_fields']} fields", unit=src.unit)
        return BadRowError(str(src.path.name), line, "*", text, expected, DEFAULT_FIX, unit=src.unit)
    role = role_list[col_index - 1]
    value = _cell_text(row[roles[role]])
    fix, got = DEFAULT_FIX, None
    if role == "timestamp" and code in (_code("timestamp after 2100-01-01"), _code("not a number"),
                                        _code("not an ISO date"), _code("fractional timestamp")):
        fix = _timestamp_fix(value, unit)
    elif code == _code("id too long"):
        fix = (f"shorten the id, or raise the limit with --max-id-bytes (max_id_bytes= in Python) if ids this "
               f"long are right, or {DEFAULT_FIX}")
        got = f"an id of {len(value.strip().encode()):,} bytes starting {value.strip()[:40]!r}"
    return BadRowError(str(src.path.name), line, role, value, expected, fix, got=got, unit=src.unit)


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
    if raw is None:  # Parquet (or lines that could not be located): the row's source columns as JSON
        cols = list(dict.fromkeys(roles[r] for r in role_list))
        raw = [json.dumps(dict(zip(cols, r)), default=str, ensure_ascii=False) for r in bad.select(cols).iter_rows()]
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
        return _parquet_names(path)
    if fmt == "jsonl":
        try:
            return pl.scan_ndjson(path, infer_schema_length=1000).collect_schema().names()
        except (pl.exceptions.PolarsError, OSError):  # malformed lines: the keys of the lines that parse
            return _parse_jsonl_slowly(path, [])[3]
    if not has_header:
        return None
    with _open_binary(path) as handle:
        first = handle.readline(1 << 20).decode("utf-8", "replace").rstrip("\r\n")
    sep = separator or ("\t" if fmt == "tsv" else _sniff_separator(path))
    return [c.strip('"') for c in first.split(sep)]


def check_read_options(timestamp_unit: str, max_id_bytes: int) -> None:
    """Raise :class:`UserError` for a timestamp unit or id limit the readers do not know."""
    if timestamp_unit not in TIMESTAMP_UNIT_CHOICES:
        raise UserError(f"timestamp_unit (--timestamp-unit) must be one of {', '.join(TIMESTAMP_UNIT_CHOICES)}, "
                        f"got {timestamp_unit!r}")
    if isinstance(max_id_bytes, bool) or not isinstance(max_id_bytes, int) or max_id_bytes < 1:
        raise UserError(f"max_id_bytes (--max-id-bytes) must be a positive integer, got {max_id_bytes!r}")


def read_events_frame(path: str | Path, *, columns: Mapping[str, str] | None = None, fmt: str | None = None,
                      has_header: bool = True, separator: str | None = None, timestamp_unit: str = "s",
                      on_bad_rows: str = "error", behaviors: Collection[str] | None = None,
                      row_offset: int = 0, max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> _Validated:
    """Like :func:`read_events` but returns the validated parts (used by recipes that combine files)."""
    path = Path(path)
    check_on_bad_rows(on_bad_rows)
    check_read_options(timestamp_unit, max_id_bytes)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with gzip_errors(path):  # a .gz file that is truncated or not gzip at all
        kind = _detect_format(path, fmt)
        available = _header_names(path, kind, has_header, separator) if columns is None else None
        roles = _resolve_roles(columns, available)
        needed = list(roles.values())
        if kind in ("csv", "tsv"):
            src: _Source = _read_csv(path, fmt=kind, has_header=has_header, separator=separator, needed=needed)
        elif kind == "parquet":
            src = _read_parquet(path, needed)
        else:
            src = _read_jsonl(path, needed, scalar=[roles[r] for r in roles if r in _ROLE_TYPES])
        return _validate(src, roles, unit=timestamp_unit, behaviors=behaviors, on_bad_rows=on_bad_rows,
                         row_offset=row_offset, max_id_bytes=max_id_bytes)


def read_events(path: str | Path, *, columns: Mapping[str, str] | None = None, fmt: str | None = None,
                has_header: bool = True, separator: str | None = None, timestamp_unit: str = "s",
                on_bad_rows: str = "error", behaviors: Collection[str] | None = None,
                max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """Read and validate one event file into an :class:`EventLog`.

    path: CSV/TSV (.csv, .tsv, .txt, .dat), Parquet (.parquet, .pq) or JSON lines (.jsonl, .json, .ndjson);
        text formats may be gzipped (.gz). ``fmt`` ('csv', 'tsv', 'parquet', 'jsonl') overrides detection.
    columns: lifelong name -> source column (see the module docstring). Default: the source columns that
        already carry lifelong names. Headerless CSV columns are 'column_1', 'column_2', ...
    separator: field separator for CSV (may be several characters, e.g. '::'; then quoting is off).
    timestamp_unit: 's', 'ms', 'us' or 'ns' (unix time), or 'iso' (ISO-8601 dates or datetimes such as
        2020-01-31 or 2020-01-31T12:00:00Z; without an offset they are UTC); timestamps are converted to
        (floored) unix seconds. Date and datetime columns (Parquet) are read as they are.
    on_bad_rows: 'error' raises BadRowError for the first bad row; 'skip' drops bad rows into
        ``rejected`` and warns with their count.
    behaviors: when given, the allowed values of the behavior column (others are bad rows).
    max_id_bytes: user and item ids longer than this (in UTF-8 bytes, after stripping white space) are
        bad rows.

    A file that cannot be read at all (truncated or corrupt gzip or Parquet, a CSV quote that is never
    closed, a column of lists where ids belong, an unknown option value) raises
    :class:`~lifelong.errors.UserError` naming the file and, where it can, the line.
    """
    part = read_events_frame(path, columns=columns, fmt=fmt, has_header=has_header, separator=separator,
                             timestamp_unit=timestamp_unit, on_bad_rows=on_bad_rows, behaviors=behaviors,
                             max_id_bytes=max_id_bytes)
    items = part.item_features
    if items is not None:
        items = items.with_columns(pl.col("item_id").cast(part.events.schema["item_id"]))
    return EventLog(events=part.events, items=items, sources=[Path(path)], rejected=part.rejected,
                    recipe="events")
