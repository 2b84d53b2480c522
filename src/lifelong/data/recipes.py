"""Recipes: readers for the raw formats of public recommendation datasets, each returning an EventLog.

Use :func:`load_recipe` (``RECIPES`` lists the names). Every recipe takes ``on_bad_rows`` ('error' or
'skip'), ``timestamp_unit`` ('s', 'ms', 'us', 'ns' or 'iso') and ``max_id_bytes``; event files go through
the strict reader in :mod:`lifelong.data.readers`. A missing optional side file that changes the result
(item attributes, movie genres) is a :class:`MissingSideFileWarning`; a log whose every row was rejected
is a :class:`~lifelong.errors.UserError` saying why.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from lifelong.data.readers import (DEFAULT_MAX_ID_BYTES, BadRowsSkippedWarning, gzip_errors, read_events_frame,
                                   timestamp_fix, _integral_ids)
from lifelong.data.schema import (BadRowError, EventLog, MissingSideFileWarning, check_on_bad_rows, empty_rejected,
                                  quote, REJECTED_SCHEMA)
from lifelong.errors import UserError

RECIPES: dict[str, Callable[..., EventLog]] = {}
NO_CATEGORIES = "0 categories: category-aware models and metrics see one category"  # what a missing side file costs

TAOBAO_BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _register(name: str) -> Callable[[Callable[..., EventLog]], Callable[..., EventLog]]:
    def wrap(fn: Callable[..., EventLog]) -> Callable[..., EventLog]:
        RECIPES[name] = fn
        return fn

    return wrap


def load_recipe(name: str, input: str | Path, *, on_bad_rows: str = "error", **options: Any) -> EventLog:
    """Read dataset ``input`` (a folder or file, see each recipe) with recipe ``name``.

    ``options`` go to the recipe (every recipe takes ``timestamp_unit`` and ``max_id_bytes``; the csv
    recipe also ``columns``, ``fmt``, ...); an option the recipe does not take is a :class:`UserError`.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    check_on_bad_rows(on_bad_rows)
    path = Path(input)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    taken = inspect.signature(RECIPES[name]).parameters
    unknown = [k for k in options if k not in taken]
    if unknown:
        flags = ", ".join(f"--{'column' if k == 'columns' else k.replace('_', '-')} ({k}=)" for k in unknown)
        raise UserError(f"the {name} recipe does not take {flags}; it reads its files' own columns. "
                        f"Fix: drop the option, or use --recipe csv")
    log = RECIPES[name](path, on_bad_rows=on_bad_rows, **options)
    log.recipe = name
    return log


# ---------------------------------------------------------------------------------------------- helpers


def _assemble(parts: list[Any], items: pl.DataFrame | None, sources: list[Path], recipe: str,
              on_bad_rows: str, timestamp_unit: str = "s") -> EventLog:
    """Concatenate validated event parts, align item id dtypes, and build the EventLog.

    Raises UserError when rows were rejected and none is left (the message says how many and why)."""
    frames = [p.events for p in parts]
    if all(f.height == 0 for f in frames):
        rejected_parts = [p.rejected for p in parts if p.rejected is not None and p.rejected.height]
        if rejected_parts:
            raise UserError(_all_rejected(pl.concat(rejected_parts), timestamp_unit))
    if len({f.schema["user_id"] for f in frames}) > 1:
        frames = [f.with_columns(pl.col("user_id").cast(pl.Utf8)) for f in frames]
    if len({f.schema["item_id"] for f in frames}) > 1:
        frames = [f.with_columns(pl.col("item_id").cast(pl.Utf8)) for f in frames]
    events = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    if items is not None:
        events, items = _align_item_ids(events, items)
    rejected = None
    if on_bad_rows == "skip":
        rejected_parts = [p.rejected for p in parts if p.rejected is not None]
        rejected = pl.concat(rejected_parts) if rejected_parts else empty_rejected()
    return EventLog(events=events, items=items, sources=sources, rejected=rejected, recipe=recipe)


def _all_rejected(rejected: pl.DataFrame, timestamp_unit: str, top: int = 3) -> str:
    """The message for a log whose every row was rejected: the count, the most common reasons (with the
    first row of each), and what to do."""
    files = ", ".join(dict.fromkeys(rejected["file"].to_list()))
    counts = (rejected.with_row_index("_i").group_by("column", "reason")
              .agg(pl.len().alias("n"), pl.col("_i").min().alias("first"))
              .sort(["n", "first"], descending=[True, False]))
    reasons = []
    for row in counts.head(top).iter_rows(named=True):
        first = rejected.row(int(row["first"]), named=True)
        unit = "row" if first["file"].lower().endswith((".parquet", ".pq")) else "line"
        where = "" if row["column"] == "*" else f"{row['column']}: "
        reasons.append(f"{row['n']:,} x {where}{row['reason']} (first: {first['file']} {unit} {first['line']}, "
                       f"{quote(first['value'] or first['raw'] or '', 40)})")
    more = f"; {counts.height - top} more reasons" if counts.height > top else ""
    first = rejected.row(int(counts["first"][0]), named=True)
    advice = timestamp_fix(first["value"] or "", timestamp_unit) if first["column"] == "timestamp" else None
    fix = advice or "correct the rows, or check the column mapping (--column) and --timestamp-unit"
    return (f"every row was rejected: {rejected.height:,} bad rows in {files}, nothing is left to prepare "
            f"(so no dataset and no rejected.csv were written).\nReasons: {'; '.join(reasons)}{more}. Fix: {fix}")


def _align_item_ids(events: pl.DataFrame, items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give items.item_id the dtype of events.item_id (falling back to Utf8 for both)."""
    want = events.schema["item_id"]
    if items.schema["item_id"] == pl.Utf8:
        items = items.with_columns(_integral_ids(items["item_id"]))
    have = items.schema["item_id"]
    if have == want:
        return events, items
    if want == pl.Utf8:
        return events, items.with_columns(pl.col("item_id").cast(pl.Utf8))
    return events.with_columns(pl.col("item_id").cast(pl.Utf8)), items.with_columns(pl.col("item_id").cast(pl.Utf8))


def _unique_strings(values: Iterable[Any]) -> list[str]:
    """Non-empty strings in first-seen order, without duplicates."""
    seen: dict[str, None] = {}
    for v in values:
        if v is None:
            continue
        s = str(v).strip()
        if s:
            seen.setdefault(s, None)
    return list(seen)


def _read_text(path: Path) -> str:
    """Decode a small side file: UTF-8 if valid, else Latin-1 (MovieLens files are Latin-1)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _items_frame(ids: list[Any], **features: list[Any]) -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {"item_id": pl.Utf8()}
    types = {"category": pl.Utf8(), "title": pl.Utf8(), "attributes": pl.List(pl.Utf8)}
    schema.update({k: types[k] for k in features})
    frame = pl.DataFrame({"item_id": [str(i) for i in ids], **features}, schema=schema)
    return frame.unique("item_id", keep="first", maintain_order=True)


# ------------------------------------------------------------------------------------------ amazon-s3rec


@_register("amazon-s3rec")
def amazon_s3rec(input: Path, *, on_bad_rows: str = "error", timestamp_unit: str = "s",
                 max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """S3-Rec Amazon files: ``interactions.csv`` (user_id,item_id,timestamp) + ``item2attributes.json``.

    items: item_id, attributes (List[Utf8] of attribute ids), category = the item's least frequent attribute
    over the catalogue (ties: smaller id; null without attributes).
    """
    folder = input if input.is_dir() else input.parent
    events_file = folder / "interactions.csv"
    if not events_file.is_file():
        raise FileNotFoundError(f"{folder} has no interactions.csv")
    part = read_events_frame(events_file, columns={"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"},
                             fmt="csv", separator=",", on_bad_rows=on_bad_rows, timestamp_unit=timestamp_unit,
                             max_id_bytes=max_id_bytes)
    sources = [events_file]
    items = None
    attr_file = folder / "item2attributes.json"
    if attr_file.is_file():
        sources.append(attr_file)
        items = _s3rec_items(attr_file)
    else:
        _missing_side_file(attr_file, "items get no attributes and no category")
    return _assemble([part], items, sources, "amazon-s3rec", on_bad_rows, timestamp_unit)


def _missing_side_file(path: Path, lost: str) -> None:
    """Warn that the optional side file ``path`` is missing and what the prepared dataset loses."""
    warnings.warn(f"{path.parent} has no {path.name}: {lost} ({NO_CATEGORIES})", MissingSideFileWarning,
                  stacklevel=3)


def _s3rec_items(path: Path) -> pl.DataFrame:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not a JSON object of item id -> attribute ids ({exc})") from exc
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected a JSON object of item id -> list of attribute ids")
    ids = list(mapping)
    attrs = [_unique_strings(v if isinstance(v, list) else [v]) for v in mapping.values()]
    items = _items_frame(ids, attributes=attrs)
    pairs = items.select("item_id", pl.col("attributes").alias("attr")).explode("attr").drop_nulls("attr")
    numeric = pairs["attr"].cast(pl.Int64, strict=False)
    key = numeric if numeric.null_count() == 0 else pairs["attr"]
    pairs = pairs.with_columns(key=key)
    freq = pairs.group_by("attr").agg(n=pl.col("item_id").n_unique())
    category = (
        pairs.join(freq, on="attr")
        .sort(["item_id", "n", "key"])
        .group_by("item_id", maintain_order=True)
        .agg(category=pl.col("attr").first())
    )
    return items.join(category, on="item_id", how="left").select("item_id", "category", "attributes")


# ---------------------------------------------------------------------------------------- amazon-reviews

_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


@_register("amazon-reviews")
def amazon_reviews(input: Path, *, on_bad_rows: str = "error", timestamp_unit: str = "s",
                   max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """Amazon 2014 review dumps (JSON lines, optionally gzipped).

    input: a reviews file, or a folder with ``reviews*.json[.gz]`` and optional ``meta*.json[.gz]``.
    events: user_id = reviewerID, item_id = asin, timestamp = unixReviewTime. items (when metadata is
    present, only items with events): category = last element of the first category path, attributes =
    brand plus every category string (deduplicated), title.
    """
    if input.is_dir():
        reviews = sorted({*input.glob("reviews*.json"), *input.glob("reviews*.json.gz")})
        metas = sorted({*input.glob("meta*.json"), *input.glob("meta*.json.gz")})
        if not reviews:
            raise FileNotFoundError(f"{input} has no reviews*.json[.gz] file")
        if not metas:
            _missing_side_file(input / "meta*.json[.gz]", "items get no category, attributes or title")
    else:
        reviews, metas = [input], []
        warnings.warn(f"{input} is one reviews file, so no metadata (meta*.json[.gz]) is read: items get no "
                      f"category, attributes or title ({NO_CATEGORIES}); pass the folder to read the metadata too",
                      MissingSideFileWarning, stacklevel=2)
    parts = []
    offset = 0
    for path in reviews:
        part = read_events_frame(path, columns={"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime"},
                                 fmt="jsonl", on_bad_rows=on_bad_rows, row_offset=offset,
                                 timestamp_unit=timestamp_unit, max_id_bytes=max_id_bytes)
        offset += part.n_rows
        parts.append(part)
    items = None
    meta_rejected: list[pl.DataFrame] = []
    if metas:
        wanted = set(pl.concat([p.events["item_id"].cast(pl.Utf8) for p in parts]).unique().to_list())
        frames = []
        for path in metas:
            frame, bad = _amazon_meta(path, wanted, on_bad_rows)
            frames.append(frame)
            meta_rejected.append(bad)
        items = pl.concat(frames).unique("item_id", keep="first", maintain_order=True)
    log = _assemble(parts, items, [*reviews, *metas], "amazon-reviews", on_bad_rows, timestamp_unit)
    if log.rejected is not None and meta_rejected:
        log.rejected = pl.concat([log.rejected, *meta_rejected])
    return log


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with gzip_errors(path), opener(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            yield number, raw.decode("utf-8", "replace").strip()


def _amazon_meta(path: Path, wanted: set[str], on_bad_rows: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse a 2014 metadata file (strict JSON or Python dict literals per line) for the ``wanted`` items."""
    ids: list[str] = []
    cats: list[str | None] = []
    attrs: list[list[str]] = []
    titles: list[str | None] = []
    bad: list[dict[str, Any]] = []
    for number, text in _lines(path):
        if not text:
            continue
        match = _ASIN.search(text)
        if match is not None and match.group(1) not in wanted:
            continue
        obj: Any = None
        try:
            obj = json.loads(text)
        except ValueError:
            try:
                obj = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                obj = None
        if not isinstance(obj, dict) or not obj.get("asin"):
            expected = "a JSON object or Python dict literal with an 'asin'"
            if on_bad_rows == "error":
                raise BadRowError(path.name, number, "*", text, expected)
            bad.append({"file": path.name, "line": number, "column": "*", "value": text[:200],
                        "reason": "malformed metadata line", "raw": text})
            continue
        asin = str(obj["asin"])
        if asin not in wanted:
            continue
        paths = obj.get("categories") or []
        paths = [p if isinstance(p, (list, tuple)) else [p] for p in paths]
        first = [c for c in paths[0] if c] if paths else []
        brand = obj.get("brand")
        ids.append(asin)
        cats.append(str(first[-1]) if first else None)
        attrs.append(_unique_strings([brand, *[c for p in paths for c in p]]))
        title = obj.get("title")
        titles.append(str(title) if title is not None else None)
    if bad:
        warnings.warn(f"{path.name}: skipped {len(bad)} malformed metadata line(s)", BadRowsSkippedWarning,
                      stacklevel=3)
    items = _items_frame(ids, category=cats, attributes=attrs, title=titles)
    return items, pl.DataFrame(bad, schema=REJECTED_SCHEMA)


# --------------------------------------------------------------------------------------------- movielens


@_register("movielens")
def movielens(input: Path, *, on_bad_rows: str = "error", timestamp_unit: str = "s",
              max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """MovieLens ML-100K (u.data/u.item), ML-1M/10M (ratings.dat/movies.dat) or ML-20M+ (ratings.csv).

    Every rating is an event with label = rating (Float32). items: title, attributes = genre names,
    category = the first genre.
    """
    folder = input if input.is_dir() else input.parent
    if (folder / "u.data").is_file():
        ratings = folder / "u.data"
        part = read_events_frame(ratings, fmt="csv", separator="\t", has_header=False, on_bad_rows=on_bad_rows,
                                 timestamp_unit=timestamp_unit, max_id_bytes=max_id_bytes,
                                 columns={"user_id": "column_1", "item_id": "column_2", "label": "column_3",
                                          "timestamp": "column_4"})
        movies = folder / "u.item"
        items = _ml100k_items(movies, folder / "u.genre") if movies.is_file() else None
        if (folder / "u.user").is_file():
            part.events = _with_ml100k_users(part.events, folder / "u.user")
    elif (folder / "ratings.dat").is_file():
        ratings = folder / "ratings.dat"
        part = read_events_frame(ratings, fmt="csv", separator="::", has_header=False, on_bad_rows=on_bad_rows,
                                 timestamp_unit=timestamp_unit, max_id_bytes=max_id_bytes,
                                 columns={"user_id": "column_1", "item_id": "column_2", "label": "column_3",
                                          "timestamp": "column_4"})
        movies = folder / "movies.dat"
        items = _ml_dat_items(movies) if movies.is_file() else None
    elif (folder / "ratings.csv").is_file():
        ratings = folder / "ratings.csv"
        part = read_events_frame(ratings, fmt="csv", separator=",", on_bad_rows=on_bad_rows,
                                 timestamp_unit=timestamp_unit, max_id_bytes=max_id_bytes, columns={"user_id": "userId", "item_id": "movieId", "label": "rating",
                                          "timestamp": "timestamp"})
        movies = folder / "movies.csv"
        items = _ml_csv_items(movies) if movies.is_file() else None
    else:
        raise FileNotFoundError(f"{folder} has none of u.data, ratings.dat, ratings.csv (MovieLens)")
    if items is None:
        _missing_side_file(movies, "movies get no title and no genre")
    sources = [ratings] + ([movies] if items is not None else [])
    if (folder / "u.genre").is_file() and items is not None and ratings.name == "u.data":
        sources.append(folder / "u.genre")
    if (folder / "u.user").is_file() and ratings.name == "u.data":
        sources.append(folder / "u.user")
    return _assemble([part], items, sources, "movielens", on_bad_rows, timestamp_unit)


def _with_ml100k_users(events: pl.DataFrame, path: Path) -> pl.DataFrame:
    """``events`` with the user features of ML-100K's ``u.user`` (``user_id|age|gender|occupation|zip``)
    as ``user__age`` (Int64: a numeric feature), ``user__gender`` and ``user__occupation`` (Utf8:
    categorical). The zip code is left out (mostly one user per code). A user missing from the file
    gets nulls (the unknown index, or the mean age, once prepared)."""
    ids, ages, genders, jobs = [], [], [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 4 or not fields[1].strip().isdigit():
            raise BadRowError(path.name, number, "*", line, "user_id|age|gender|occupation|zip with a whole-number age",
                              "correct the line, or remove u.user to prepare without user features")
        ids.append(fields[0].strip())
        ages.append(int(fields[1]))
        genders.append(fields[2].strip())
        jobs.append(fields[3].strip())
    users = pl.DataFrame({"user_id": ids, "user__age": ages, "user__gender": genders, "user__occupation": jobs},
                         schema={"user_id": pl.Utf8, "user__age": pl.Int64, "user__gender": pl.Utf8,
                                 "user__occupation": pl.Utf8}).unique("user_id", keep="first")
    id_type = events.schema["user_id"]
    users = users.with_columns(pl.col("user_id").cast(id_type, strict=False)).drop_nulls("user_id")
    return events.join(users, on="user_id", how="left", maintain_order="left")


def _ml100k_items(path: Path, genre_file: Path) -> pl.DataFrame:
    genres = list(ML100K_GENRES)
    if genre_file.is_file():
        pairs = [line.rsplit("|", 1) for line in _read_text(genre_file).splitlines() if line.strip()]
        genres = [name for name, _ in sorted(((n, int(i)) for n, i in pairs), key=lambda p: p[1])]
    ids, titles, attrs = [], [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 5 + len(genres):
            raise BadRowError(path.name, number, "*", line, f"{5 + len(genres)} fields separated by '|'",
                              "check that u.item and u.genre belong together", got=f"{len(fields)} fields")
        flags = fields[-len(genres):]
        ids.append(fields[0].strip())
        titles.append(fields[1] or None)
        attrs.append([g for g, flag in zip(genres, flags) if flag.strip() == "1"])
    return _with_first_genre(_items_frame(ids, title=titles, attributes=attrs))


def _ml_dat_items(path: Path) -> pl.DataFrame:
    ids, titles, attrs = [], [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) < 3:
            raise BadRowError(path.name, number, "*", line, "3 fields separated by '::'", got=f"{len(fields)} fields")
        ids.append(fields[0].strip())
        titles.append("::".join(fields[1:-1]) or None)
        attrs.append(_genres(fields[-1]))
    return _with_first_genre(_items_frame(ids, title=titles, attributes=attrs))


def _ml_csv_items(path: Path) -> pl.DataFrame:
    try:
        raw = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: cannot parse as CSV: {first[:160]}") from None
    missing = [c for c in ("movieId", "title", "genres") if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; the file has {raw.columns}")
    attrs = [_genres(g or "") for g in raw["genres"].to_list()]
    return _with_first_genre(_items_frame(raw["movieId"].to_list(), title=raw["title"].to_list(), attributes=attrs))


def _genres(text: str) -> list[str]:
    return [g for g in _unique_strings(text.split("|")) if g != "(no genres listed)"]


def _with_first_genre(items: pl.DataFrame) -> pl.DataFrame:
    return items.with_columns(category=pl.col("attributes").list.first()).select(
        "item_id", "category", "attributes", "title")


# ----------------------------------------------------------------------------------- taobao-userbehavior


@_register("taobao-userbehavior")
def taobao_userbehavior(input: Path, *, on_bad_rows: str = "error", timestamp_unit: str = "s",
                        max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """Taobao UserBehavior CSV without header: user, item, category, behavior, timestamp.

    behavior must be one of pv, cart, fav, buy. input: the file or a folder with exactly one CSV.
    items: item_id, category (first seen category of the item).
    """
    if input.is_dir():
        files = sorted(input.glob("*.csv"))
        if len(files) != 1:
            raise ValueError(f"{input} must contain exactly one CSV file, found {[f.name for f in files]}")
        input = files[0]
    part = read_events_frame(
        input, fmt="csv", separator=",", has_header=False, on_bad_rows=on_bad_rows, behaviors=TAOBAO_BEHAVIORS,
        timestamp_unit=timestamp_unit, max_id_bytes=max_id_bytes,
        columns={"user_id": "column_1", "item_id": "column_2", "category": "column_3", "behavior": "column_4",
                 "timestamp": "column_5"},
    )
    return _assemble([part], part.item_features, [input], "taobao-userbehavior", on_bad_rows, timestamp_unit)


# ---------------------------------------------------------------------------------------------------- csv


@_register("csv")
def generic(input: Path, *, on_bad_rows: str = "error", columns: dict[str, str] | None = None,
            fmt: str | None = None, has_header: bool = True, separator: str | None = None,
            timestamp_unit: str = "s", behaviors: Iterable[str] | None = None,
            max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """Any CSV/TSV/Parquet/JSON-lines event file with an explicit column mapping (``columns``, required).

    Item features in the mapping (category, title, attributes) go to ``items`` (first value per item).
    ``timestamp_unit``: 's', 'ms', 'us', 'ns' or 'iso' (ISO-8601 dates or datetimes).
    """
    if not columns:
        raise ValueError("the csv recipe needs columns={'user_id': ..., 'item_id': ..., 'timestamp': ...}")
    if input.is_dir():
        raise ValueError(f"the csv recipe reads one file; {input} is a folder")
    part = read_events_frame(input, columns=columns, fmt=fmt, has_header=has_header, separator=separator,
                             timestamp_unit=timestamp_unit, on_bad_rows=on_bad_rows, max_id_bytes=max_id_bytes,
                             behaviors=None if behaviors is None else tuple(behaviors))
    return _assemble([part], part.item_features, [input], "csv", on_bad_rows, timestamp_unit)


# ------------------------------------------------------------------------------------ synthetic-lifelong


@_register("synthetic-lifelong")
def synthetic_lifelong(input: Path, *, on_bad_rows: str = "error", timestamp_unit: str = "s",
                       max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> EventLog:
    """The lifelong synthetic log of :mod:`lifelong.data.lifelong_synthetic` (planted long-range tail).

    input: a TOML (``.toml``) or JSON file of :func:`~lifelong.data.lifelong_synthetic.lifelong_log`'s
    arguments (``n_users = 2000``, ``events_per_user = [1000, 1100]``, ``seed = 1``, ...), generated here;
    or a folder written by :func:`~lifelong.data.lifelong_synthetic.write_lifelong_log`, whose
    ``events.parquet`` goes through the strict reader and whose ``items.parquet`` gives category,
    attributes and the content vector (``embedding``). Generated logs need no reading options.
    """
    from lifelong.data import lifelong_synthetic as lls

    if input.is_dir():
        events_file, items_file = input / lls.EVENTS_FILE, input / lls.ITEMS_FILE
        for path in (events_file, items_file):
            if not path.is_file():
                raise FileNotFoundError(f"{input} has no {path.name}; write the folder with write_lifelong_log, "
                                        f"or pass a spec file (.toml or .json) of lifelong_log's arguments")
        part = read_events_frame(events_file, columns={"user_id": "user_id", "item_id": "item_id",
                                                       "timestamp": "timestamp"},
                                 fmt="parquet", on_bad_rows=on_bad_rows, timestamp_unit=timestamp_unit,
                                 max_id_bytes=max_id_bytes)
        items = pl.read_parquet(items_file, columns=["item_id", "category", "attributes", "embedding"])
        return _assemble([part], items, [events_file, items_file], "synthetic-lifelong", on_bad_rows,
                         timestamp_unit)
    events, items = lls.lifelong_log(**lls.read_lifelong_spec(input))
    return EventLog(events=events, items=items.drop("cluster"), sources=[input], recipe="synthetic-lifelong")
