"""The in-memory event log every reader and recipe produces, and the error raised for a bad input row."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

OnBadRows = Literal["error", "skip"]
ON_BAD_ROWS: tuple[str, ...] = ("error", "skip")

ID_DTYPES = (pl.Int64, pl.Utf8)
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "row")
USER_FEATURE_PREFIX = "user__"

DEFAULT_FIX = "remove or correct the row, or pass --on-bad-rows skip (on_bad_rows='skip' in Python)"

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.Utf8(),
    "line": pl.Int64(),
    "column": pl.Utf8(),
    "value": pl.Utf8(),
    "reason": pl.Utf8(),
    "raw": pl.Utf8(),
}


class BadRowError(ValueError):
    """The first bad row of an input file.

    ``line`` is 1-based: the physical line for text files (a CSV header is line 1), the row number for
    Parquet (``unit='row'``, so the message says "row N"). ``column`` is the lifelong column name, or
    ``'*'`` when the whole row is wrong (field count, malformed JSON). ``value`` is the text that was there
    ('' for an empty or null value); the message quotes at most :data:`QUOTE_LIMIT` characters of it.
    """

    def __init__(self, file: str, line: int, column: str, value: str, expected: str, fix: str = DEFAULT_FIX,
                 got: str | None = None, unit: str = "line") -> None:
        self.file = str(file)
        self.line = int(line)
        self.column = column
        self.value = value
        self.expected = expected
        self.fix = fix
        self.got = shorten(got) if got is not None else (quote(value) if value != "" else "an empty value")
        self.unit = unit
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.file}, {self.unit} {self.line}"
        if self.column != "*":
            where += f", column {self.column!r}"
        return f"{where}: got {self.got}, expected {self.expected}. Fix: {self.fix}"

    def __reduce__(self):  # keep the exception picklable (multiprocessing)
        return (type(self), (self.file, self.line, self.column, self.value, self.expected, self.fix, self.got,
                             self.unit))


class MissingSideFileWarning(UserWarning):
    """An optional side file of a recipe (item attributes, movie genres) is missing, so the prepared
    dataset lacks what it would have given (e.g. categories)."""


QUOTE_LIMIT = 80  # characters of a user's value quoted in a message


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr(text)``, cut to ``limit`` characters (saying how long the whole text is)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def shorten(text: str, limit: int = 2 * QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with "..." where it was cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def check_on_bad_rows(on_bad_rows: str) -> None:
    """Raise ValueError unless ``on_bad_rows`` is 'error' or 'skip'."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")


def empty_rejected() -> pl.DataFrame:
    """An empty frame with the columns of ``EventLog.rejected``."""
    return pl.DataFrame(schema=REJECTED_SCHEMA)


@dataclass
class EventLog:
    """User behavior events plus optional item side information.

    events: user_id, item_id (Int64 or Utf8), timestamp (Int64 unix seconds), row (Int64, 0-based position
        of the event in the input, the tie-breaker for equal timestamps; gaps where bad rows were skipped).
        Optional: behavior (Utf8), label (Float32 or Int8), user features ``user__<name>``.
    items: item_id (same dtype as events.item_id), optional category (Utf8), attributes (List[Utf8]),
        title (Utf8), embedding (List[Float32]).
    sources: every file read.
    rejected: rows skipped under on_bad_rows='skip' (file, line, column, value, reason, raw), else None.
    recipe: the recipe (or reader) that produced the log.
    """

    events: pl.DataFrame
    items: pl.DataFrame | None = None
    sources: list[Path] = field(default_factory=list)
    rejected: pl.DataFrame | None = None
    recipe: str = "events"

    def __post_init__(self) -> None:
        missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in self.events.columns]
        if missing:
            raise ValueError(f"events lack required columns {missing}; have {self.events.columns}")
        for name in ("user_id", "item_id"):
            if self.events.schema[name] not in ID_DTYPES:
                raise ValueError(f"events.{name} must be Int64 or Utf8, got {self.events.schema[name]}")
        for name in ("timestamp", "row"):
            if self.events.schema[name] != pl.Int64:
                raise ValueError(f"events.{name} must be Int64, got {self.events.schema[name]}")
        if self.items is not None:
            if "item_id" not in self.items.columns:
                raise ValueError("items must have an item_id column")
            if self.items.schema["item_id"] != self.events.schema["item_id"]:
                raise ValueError(
                    f"items.item_id is {self.items.schema['item_id']} but events.item_id is "
                    f"{self.events.schema['item_id']}"
                )
        self.sources = [Path(p) for p in self.sources]

    @property
    def num_events(self) -> int:
        """Number of events."""
        return self.events.height

    def summary(self) -> dict[str, int]:
        """Counts of events, users, items (in events) and rejected rows."""
        return {
            "events": self.events.height,
            "users": self.events["user_id"].n_unique(),
            "items": self.events["item_id"].n_unique(),
            "rejected": 0 if self.rejected is None else self.rejected.height,
        }
