"""Tests for lifelong.data.recipes on small files in each dataset's original format, plus real data (slow)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from lifelong.data import RECIPES, BadRowError, BadRowsSkippedWarning, EventLog, load_recipe

from helpers import shared_data


def need(folder: str) -> Path:
    return shared_data(folder)  # skipped when missing, a failure under CI=true


def test_registry_and_errors(tmp_path: Path) -> None:
    assert {"amazon-s3rec", "amazon-reviews", "movielens", "taobao-userbehavior", "csv"} <= set(RECIPES)
    with pytest.raises(ValueError, match="unknown recipe"):
        load_recipe("nope", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_recipe("movielens", tmp_path / "missing")
    with pytest.raises(ValueError, match="on_bad_rows"):
        load_recipe("movielens", tmp_path, on_bad_rows="maybe")


# ------------------------------------------------------------------------------------------ amazon-s3rec


def s3rec_folder(tmp_path: Path, interactions: str) -> Path:
    (tmp_path / "interactions.csv").write_text(interactions)
    # attribute frequencies (items having it): 1 -> 3, 2 -> 2, 3 -> 1, 5 -> 2, 9 -> 1, 10 -> 1
    attrs = {"1": [1, 2, 3], "2": [1, 2, 5], "3": [1, 5], "4": [10, 9], "5": []}
    (tmp_path / "item2attributes.json").write_text(json.dumps(attrs))
    return tmp_path


def test_s3rec_items_and_category(tmp_path: Path) -> None:
    folder = s3rec_folder(tmp_path, "user_id,item_id,timestamp\n1,1,10\n1,2,20\n2,3,15\n")
    log = load_recipe("amazon-s3rec", folder)
    assert log.recipe == "amazon-s3rec"
    assert log.events.schema["item_id"] == pl.Int64 and log.events.height == 3
    assert log.items is not None and log.items.schema["item_id"] == pl.Int64
    items = {r["item_id"]: r for r in log.items.iter_rows(named=True)}
    assert items[1]["category"] == "3"  # least frequent
    assert items[2]["category"] == "2"  # 2 and 5 tie at 2 items -> smaller id
    assert items[3]["category"] == "5"
    assert items[4]["category"] == "9"  # 9 and 10 tie at 1 item -> smaller id (numerically)
    assert items[5]["category"] is None and items[5]["attributes"] == []
    assert items[1]["attributes"] == ["1", "2", "3"]
    assert [p.name for p in log.sources] == ["interactions.csv", "item2attributes.json"]


def test_s3rec_bad_row(tmp_path: Path) -> None:
    rows = "".join(f"{u},{u},{100 + u}\n" for u in range(1, 6))
    folder = s3rec_folder(tmp_path, "user_id,item_id,timestamp\n" + rows + "7,7,12x3\n" + rows)
    with pytest.raises(BadRowError) as info:
        load_recipe("amazon-s3rec", folder)
    assert (info.value.file, info.value.line, info.value.column) == ("interactions.csv", 7, "timestamp")
    with pytest.warns(BadRowsSkippedWarning):
        log = load_recipe("amazon-s3rec", folder, on_bad_rows="skip")
    assert log.rejected is not None and log.rejected.rows() == [
        ("interactions.csv", 7, "timestamp", "12x3", "not a number", "7,7,12x3")]
    assert log.events.height == 10


# ---------------------------------------------------------------------------------------- amazon-reviews

REVIEWS = [
    {"reviewerID": "A1", "asin": "B001", "reviewerName": "x", "overall": 5.0, "unixReviewTime": 1400000000},
    {"reviewerID": "A1", "asin": "B002", "helpful": [0, 1], "unixReviewTime": 1400000100},
    {"reviewerID": "A2", "asin": "B001", "unixReviewTime": 1400000200, "reviewText": "ok"},
]
META = [
    "{'asin': 'B001', 'title': \"Tom's Cream\", 'brand': 'Acme', "
    "'categories': [['Beauty', 'Skin Care', 'Face'], ['Beauty', 'Acme']]}",
    "{'asin': 'B999', 'title': 'not reviewed', 'categories': [['Beauty']]}",
    '{"asin": "B002", "categories": [["Beauty", "Hair"]], "salesRank": {"Beauty": 3}}',
]


def reviews_folder(tmp_path: Path, reviews: list[str], meta: list[str] | None = META) -> Path:
    (tmp_path / "reviews_Beauty_5.json.gz").write_bytes(gzip.compress(("\n".join(reviews) + "\n").encode()))
    if meta is not None:
        (tmp_path / "meta_Beauty.json.gz").write_bytes(gzip.compress(("\n".join(meta) + "\n").encode()))
    return tmp_path


def test_amazon_reviews_folder(tmp_path: Path) -> None:
    folder = reviews_folder(tmp_path, [json.dumps(r) for r in REVIEWS])
    log = load_recipe("amazon-reviews", folder)
    assert log.events.select("user_id", "item_id", "timestamp").rows() == [
        ("A1", "B001", 1400000000), ("A1", "B002", 1400000100), ("A2", "B001", 1400000200)]
    assert log.items is not None
    items = {r["item_id"]: r for r in log.items.iter_rows(named=True)}
    assert set(items) == {"B001", "B002"}  # only reviewed items
    assert items["B001"]["category"] == "Face"
    assert items["B001"]["attributes"] == ["Acme", "Beauty", "Skin Care", "Face"]
    assert items["B001"]["title"] == "Tom's Cream"
    assert items["B002"]["category"] == "Hair" and items["B002"]["title"] is None
    assert len(log.sources) == 2


def test_amazon_reviews_single_file_and_bad_rows(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in REVIEWS]
    lines.insert(1, json.dumps({"reviewerID": "A3", "asin": "B003", "unixReviewTime": "soon"}))
    path = tmp_path / "reviews.json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRowError) as info:
        load_recipe("amazon-reviews", path)
    assert (info.value.line, info.value.column) == (2, "timestamp")
    with pytest.warns(BadRowsSkippedWarning):
        log = load_recipe("amazon-reviews", path, on_bad_rows="skip")
    assert log.events.height == 3 and log.items is None
    assert log.rejected is not None and log.rejected["line"].to_list() == [2]


def test_amazon_reviews_malformed_metadata(tmp_path: Path) -> None:
    folder = reviews_folder(tmp_path, [json.dumps(r) for r in REVIEWS], [META[0], "{'asin': 'B002', oops", META[2]])
    with pytest.raises(BadRowError) as info:
        load_recipe("amazon-reviews", folder)
    assert (info.value.file, info.value.line, info.value.column) == ("meta_Beauty.json.gz", 2, "*")
    with pytest.warns(BadRowsSkippedWarning):
        log = load_recipe("amazon-reviews", folder, on_bad_rows="skip")
    assert log.rejected is not None and log.rejected["line"].to_list() == [2]
    assert log.items is not None and log.items.height == 2


# --------------------------------------------------------------------------------------------- movielens


def test_movielens_100k(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    flags = ["0"] * 19
    flags[4] = flags[5] = "1"
    (tmp_path / "u.item").write_bytes(
        ("242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(flags) + "\n"
         "302|Caf\xe9 (1997)|01-Jan-1997||http://y|" + "|".join(["0"] * 19) + "\n").encode("latin-1"))
    log = load_recipe("movielens", tmp_path)
    assert log.events.select("user_id", "item_id", "timestamp", "label").rows() == [
        (196, 242, 881250949, 3.0), (186, 302, 891717742, 3.0)]
    assert log.events.schema["label"] == pl.Float32
    assert log.items is not None
    items = {r["item_id"]: r for r in log.items.iter_rows(named=True)}
    assert items[242]["attributes"] == ["Children's", "Comedy"] and items[242]["category"] == "Children's"
    assert items[302]["title"] == "Café (1997)" and items[302]["category"] is None


def test_movielens_1m_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (tmp_path / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::"
        "Animation|Children's|Musical\n".encode("latin-1"))
    log = load_recipe("movielens", tmp_path)
    assert log.events.select("user_id", "item_id", "label").rows() == [(1, 1193, 5.0), (1, 661, 3.0)]
    assert log.items is not None
    row = log.items.filter(pl.col("item_id") == 661).row(0, named=True)
    assert row["category"] == "Animation" and row["attributes"] == ["Animation", "Children's", "Musical"]
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(BadRowError) as info:
        load_recipe("movielens", tmp_path)
    assert (info.value.file, info.value.line, info.value.column) == ("ratings.dat", 2, "*")


def test_movielens_20m_csv(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,x,1112484676\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n2,Jumanji (1995),Adventure|Children|Fantasy\n'
        '29,"City of Lost Children, The (1995)",(no genres listed)\n')
    with pytest.raises(BadRowError) as info:
        load_recipe("movielens", tmp_path)
    assert (info.value.line, info.value.column) == (3, "label")
    with pytest.warns(BadRowsSkippedWarning):
        log = load_recipe("movielens", tmp_path, on_bad_rows="skip")
    assert log.events.select("item_id", "label").rows() == [(2, 3.5)]
    assert log.items is not None
    items = {r["item_id"]: r for r in log.items.iter_rows(named=True)}
    assert items[29]["title"] == "City of Lost Children, The (1995)" and items[29]["attributes"] == []
    assert items[2]["category"] == "Adventure"


def test_movielens_unknown_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MovieLens"):
        load_recipe("movielens", tmp_path)


# ----------------------------------------------------------------------------------- taobao-userbehavior


def test_taobao(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,10,100,pv,1511544070\n1,11,101,buy,1511544071\n2,10,999,cart,1511544072\n")
    log = load_recipe("taobao-userbehavior", tmp_path)
    assert log.events["behavior"].to_list() == ["pv", "buy", "cart"]
    assert log.items is not None and log.items.sort("item_id").rows() == [(10, "100"), (11, "101")]
    path.write_text("1,10,100,pv,1511544070\n1,11,101,click,1511544071\n")
    with pytest.raises(BadRowError) as info:
        load_recipe("taobao-userbehavior", path)
    assert (info.value.line, info.value.column, info.value.value) == (2, "behavior", "click")
    (tmp_path / "other.csv").write_text("")
    with pytest.raises(ValueError, match="exactly one CSV"):
        load_recipe("taobao-userbehavior", tmp_path)


# --------------------------------------------------------------------------------------------------- csv


def test_csv_recipe(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text("uid\tiid\tts\tcat\n1\ta\t100\tx\n2\ta\t200\ty\n2\tb\t300\t\n")
    with pytest.raises(ValueError, match="columns"):
        load_recipe("csv", path)
    log = load_recipe("csv", path, columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts", "category": "cat"})
    assert isinstance(log, EventLog) and log.recipe == "csv"
    assert "category" not in log.events.columns
    assert log.items is not None and log.items.rows() == [("a", "x"), ("b", None)]


def test_csv_recipe_parquet_ms(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pl.DataFrame({"u": [1], "i": [2], "t": [1511544070123]}).write_parquet(path)
    log = load_recipe("csv", path, columns={"user_id": "u", "item_id": "i", "timestamp": "t"}, timestamp_unit="ms")
    assert log.events["timestamp"].to_list() == [1511544070]


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
def test_real_amazon_beauty() -> None:
    log = load_recipe("amazon-s3rec", need("amazon-beauty"))
    assert log.summary() == {"events": 198_502, "users": 22_363, "items": 12_101, "rejected": 0}
    assert log.items is not None and log.items["category"].n_unique() == 629
    assert log.items["category"].null_count() == 0


@pytest.mark.slow
def test_real_amazon_sports() -> None:
    log = load_recipe("amazon-s3rec", need("amazon-sports"))
    assert log.events.height == 296_337
    assert log.items is not None and log.items["category"].n_unique() == 2_159


@pytest.mark.slow
def test_real_movielens_100k() -> None:
    log = load_recipe("movielens", need("movielens-100k"))
    assert log.summary() == {"events": 100_000, "users": 943, "items": 1_682, "rejected": 0}
    assert log.items is not None and log.items.height == 1_682
    assert log.items.filter(pl.col("item_id") == 1)["title"].item() == "Toy Story (1995)"


@pytest.mark.slow
def test_real_taobao_head() -> None:
    log = load_recipe("taobao-userbehavior", need("taobao-userbehavior") / "UserBehavior_head.csv")
    assert log.events.height == 84_475
    # 814 complete histories plus the first rows of the next user (the head stops mid-user)
    assert log.events["user_id"].n_unique() == 815
    assert set(log.events["behavior"].unique()) == {"pv", "cart", "fav", "buy"}
    assert log.items is not None and log.items.height == log.events["item_id"].n_unique()
