"""Export a prepared lifelong P5 (``ctr-long``) dataset for FuxiCTR's LongCTR model zoo (runs in .venv).

    longctr_export.py --data DIR --out DIR [--max-length 1000] [--check 512]

The same samples as lifelong trains on, read through lifelong's own API (``lifelong.dataset.load_dataset``),
in the layout FuxiCTR's LongCTR loader (``model_zoo/LongCTR/longctr_dataloader.py``: ``ParquetDataset`` +
``BatchCollator``) reads, the layout ``lifelong_worker.py export`` writes for the DIN peer:

  {train,valid,test}.parquet  one row per sample: user_index (user row), item_index (target item row),
                              seq_len (events before the target), label; all int64 (``ParquetDataset``
                              stacks the columns into one array, so one dtype)
  user_info.parquet           full_item_seq: the item rows of each user's events, in time order
  item_info.parquet           item_index (row, 0 = padding) -> item_id, cate_id (lifelong vocabulary indices)
  dataset_config.yaml         FuxiCTR's dataset config for these files (``dataset_id`` -> data files, the
                              feature columns item_id / cate_id with their vocabulary sizes, the label), for
                              ``FeatureProcessor`` + ``build_dataset(rebuild_dataset=False)``, which write
                              ``feature_map.json``
  info.json                   vocabulary sizes, sample counts, ``max_len``, the dataset's fingerprint

FuxiCTR's collator builds a sample's history as ``full_item_seq[user][:seq_len]`` padded/truncated "pre"
to ``max_len``: the last ``L`` events before the target, exactly lifelong's history
(``events[offset : offset + end]``, the most recent ``L``). ``--check N`` rebuilds the histories of the
first N samples of each split that way and compares them with lifelong's ``Collator(dataset, L)`` (item and
category indices, targets, labels); the export stops if one differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SPLITS = ("train", "valid", "test")
DATASET_ID = "lifelong_p5"
LAYOUT = 1  # bump when the files change
FILES = ("train.parquet", "valid.parquet", "test.parquet", "user_info.parquet", "item_info.parquet",
         "dataset_config.yaml", "info.json", "done.json")


def dataset_config(out: Path, vocab_sizes: dict) -> dict:
    """FuxiCTR's dataset config (the ``dataset_config.yaml`` of a LongCTR experiment) for the exported files:
    the LongCTR data loader's meta columns, the two item features read from ``item_info`` and the label.
    The inputs are already index-encoded (0 = padding), so nothing is remapped."""
    meta = {"active": True, "dtype": "int", "type": "meta", "remap": False}
    item = {"active": True, "dtype": "int", "type": "categorical", "source": "item", "remap": False}
    return {DATASET_ID: {
        "data_format": "parquet",
        "train_data": str(out / "train.parquet"), "valid_data": str(out / "valid.parquet"),
        "test_data": str(out / "test.parquet"), "user_info": str(out / "user_info.parquet"),
        "item_info": str(out / "item_info.parquet"), "rebuild_dataset": False,
        "feature_cols": [
            {"name": "user_index", **meta}, {"name": "item_index", **meta}, {"name": "seq_len", **meta},
            {"name": "item_id", **item, "vocab_size": int(vocab_sizes["item"])},
            {"name": "cate_id", **item, "vocab_size": max(int(vocab_sizes.get("cate", 2)), 2)},
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }}


def export(data: Path, out: Path, max_length: int, check: int = 512) -> dict:
    """Write the LongCTR files for ``data`` into ``out`` (reused when ``out`` already holds this export)."""
    import polars as pl

    from lifelong.dataset import load_dataset

    manifest = json.loads((data / "manifest.json").read_text())
    stamp = {"data": str(data.resolve()), "created": manifest.get("created"), "samples": manifest.get("samples"),
             "max_len": max_length, "layout": LAYOUT}
    marker = out / "done.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        common.log(f"longctr inputs in {out} are up to date")
        return json.loads((out / "info.json").read_text())
    if out.exists():  # only a folder this exporter wrote is replaced
        foreign = sorted(e.name for e in out.iterdir() if e.name not in FILES)
        if foreign:
            raise SystemExit(f"{out} holds files the exporter did not write ({', '.join(foreign)}); "
                             "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    ds = load_dataset(data)
    protocol = (ds.manifest.get("protocol") or {}).get("name")
    if protocol != "ctr-long":
        common.log(f"warning: {data} was prepared with protocol {protocol!r}, not ctr-long (P5)")
    if ds.item_idx[0] != 0 or ds.item_cate[0] != 0 or int(ds.event_items.min()) < 1:
        raise RuntimeError("expected item row 0 to be the padding row (index 0) and no event to use it: "
                           "FuxiCTR's collator pads with row 0 and masks it out")
    for split in SPLITS:
        samples = ds.samples(split)
        pl.DataFrame({"user_index": samples.user.astype(np.int64), "item_index": samples.target.astype(np.int64),
                      "seq_len": samples.end.astype(np.int64), "label": samples.label.astype(np.int64)}
                     ).write_parquet(out / f"{split}.parquet")
    offsets = ds.offsets
    sequences = [ds.event_items[offsets[u]:offsets[u + 1]].astype(np.int64) for u in range(ds.n_users)]
    pl.DataFrame({"full_item_seq": sequences}, schema={"full_item_seq": pl.List(pl.Int64)}).write_parquet(
        out / "user_info.parquet")
    pl.DataFrame({"item_index": np.arange(ds.item_idx.shape[0], dtype=np.int64),
                  "item_id": ds.item_idx, "cate_id": ds.item_cate}).write_parquet(out / "item_info.parquet")
    import yaml

    (out / "dataset_config.yaml").write_text(yaml.safe_dump(dataset_config(out.resolve(), ds.vocab_sizes),
                                                            sort_keys=False))
    if check:
        _check_histories(ds, out, max_length, check)
    info = {"dataset_id": DATASET_ID, "data": str(data.resolve()), "fingerprint": ds.manifest.get("fingerprint"),
            "max_len": max_length, "vocab_sizes": ds.vocab_sizes,
            "samples": {s: len(ds.samples(s)) for s in SPLITS},
            "mean_train_history": float(np.minimum(ds.samples("train").end, max_length).mean()),
            "checked_samples_per_split": check}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    marker.write_text(json.dumps(stamp))
    common.log(f"exported LongCTR inputs ({info['samples']}) to {out} in {time.perf_counter() - started:.1f}s")
    return info


def _check_histories(ds, out: Path, max_length: int, n: int) -> None:
    """The first ``n`` samples of each split, rebuilt from the exported files the way FuxiCTR's collator
    reads them (``full_item_seq[:seq_len]``, the last ``max_length``, item rows -> item_info), against
    lifelong's ``Collator``: same targets, labels and histories (ids and categories, in time order)."""
    import polars as pl

    from lifelong.batch import Collator

    user_info = pl.read_parquet(out / "user_info.parquet")["full_item_seq"].to_list()
    items = pl.read_parquet(out / "item_info.parquet")
    item_id, cate_id = items["item_id"].to_numpy(), items["cate_id"].to_numpy()
    collator = Collator(ds, max_length)
    for split in SPLITS:
        rows = pl.read_parquet(out / f"{split}.parquet")
        count = min(n, rows.height)
        batch = collator(ds.samples(split).subset(np.arange(count)))
        for i in range(count):
            user, target, seq_len, label = (int(rows[c][i]) for c in ("user_index", "item_index", "seq_len", "label"))
            history = np.asarray(user_info[user][:seq_len][-max_length:], dtype=np.int64)
            length = int(batch.history_mask[i].sum())
            same = (length == history.shape[0]
                    and np.array_equal(batch.history_items[i, :length].numpy(), item_id[history])
                    and np.array_equal(batch.history_cates[i, :length].numpy(), cate_id[history])
                    and int(batch.target_items[i]) == int(item_id[target])
                    and int(batch.target_cates[i]) == int(cate_id[target])
                    and float(batch.labels[i]) == float(label))
            if not same:
                raise SystemExit(f"export check: {split} sample {i} differs from lifelong's Collator")
    common.log(f"export check: the first {n} samples of each split match lifelong's Collator at L={max_length}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a lifelong dataset prepared with --protocol ctr-long")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=1000, help="L, recorded in info.json and checked")
    parser.add_argument("--check", type=int, default=512, help="samples per split compared with lifelong's Collator")
    args = parser.parse_args()
    export(args.data, args.out, args.max_length, args.check)


if __name__ == "__main__":
    main()
