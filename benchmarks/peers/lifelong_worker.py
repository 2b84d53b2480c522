"""The lifelong side of the throughput benchmark (runs in the main venv, .venv/bin/python).

    lifelong_worker.py prepare --data DIR --source DIR       prepare P1 Amazon Beauty if DIR is missing
    lifelong_worker.py export  --data DIR --out DIR          the same samples for the peers (see below)
    lifelong_worker.py train   --data DIR --model din --epochs 3 --run DIR --result FILE
    lifelong_worker.py score   --data DIR --predictions FILE.npy --result FILE

``export`` writes, from the prepared dataset and lifelong's own ``Collator`` (so every library sees the
very same histories: the 50 most recent events before each target, item and category indices):

  deepctr/{train,valid,test}.npz    pre-padded arrays: hist_item, hist_cate (N, 50) left-aligned with
                                    0 padding after, item, cate, seq_length, label, user
  fuxictr/{train,valid,test}.parquet  FuxiCTR LongCTR layout: user_index, item_index (target item row),
                                    seq_len (events before the target), label; all int64 (its loader
                                    stacks the columns into one array and indexes with user_index)
  fuxictr/user_info.parquet         full_item_seq: the item rows of each user's events, in time order
  fuxictr/item_info.parquet         item_index (row) -> item_id, cate_id (lifelong vocabulary indices)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lifelong.outputs import RUN, replace_folder  # noqa: E402

SPLITS = ("train", "valid", "test")


def prepare(data: Path, source: Path) -> None:
    if (data / "manifest.json").exists():
        common.log(f"dataset {data} exists, reusing it")
        return
    from lifelong.pipeline import ProtocolOptions, prepare as prepare_log

    started = time.perf_counter()
    try:
        from lifelong.data import load_recipe

        log = load_recipe("amazon-s3rec", source)
        how = "lifelong.data.load_recipe('amazon-s3rec')"
    except ImportError:  # the data layer is older than the recipes: build the same EventLog by hand
        log = _s3rec_log_by_hand(source)
        how = "hand-built EventLog (fallback)"
    prepare_log(log, data, ProtocolOptions())
    common.log(f"prepared {data} from {source} with {how} in {time.perf_counter() - started:.1f}s")


def _s3rec_log_by_hand(source: Path):
    import polars as pl

    from lifelong.data.schema import EventLog

    events = pl.read_csv(source / "interactions.csv").with_row_index("row").with_columns(
        pl.col("row").cast(pl.Int64), pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64),
        pl.col("timestamp").cast(pl.Int64))
    attrs = json.loads((source / "item2attributes.json").read_text())
    freq: dict = {}
    for values in attrs.values():
        for a in set(values):
            freq[a] = freq.get(a, 0) + 1
    # category = the item's least frequent attribute (ties: smaller id), as the amazon-s3rec recipe does
    cate = {int(k): (str(min(v, key=lambda a: (freq[a], a))) if v else None) for k, v in attrs.items()}
    items = pl.DataFrame({"item_id": list(cate), "category": list(cate.values()),
                          "attributes": [[str(a) for a in attrs[str(k)]] for k in cate]})
    return EventLog(events=events, items=items, recipe="amazon-s3rec")


def export(data: Path, out: Path, chunk: int = 65536) -> None:
    import polars as pl

    from lifelong.batch import Collator
    from lifelong.dataset import load_dataset

    marker = out / "done.json"
    manifest = json.loads((data / "manifest.json").read_text())
    stamp = {"data": str(data), "samples": manifest.get("samples"), "max_len": common.MAX_LEN, "layout": 2,
             "created": manifest.get("created")}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        common.log(f"peer inputs in {out} are up to date")
        return
    started = time.perf_counter()
    if out.exists():  # only this worker's own peer-input folder is replaced (nothing else in it)
        foreign = sorted(e.name for e in out.iterdir() if e.name not in ("deepctr", "fuxictr", "done.json"))
        if foreign:
            raise SystemExit(f"{out} holds files the worker did not write ({', '.join(foreign)}); choose another --out")
        shutil.rmtree(out)
    (out / "deepctr").mkdir(parents=True)
    (out / "fuxictr").mkdir(parents=True)
    ds = load_dataset(data)
    if ds.item_idx[0] != 0 or ds.item_cate[0] != 0 or int(ds.event_items.min()) < 1:
        raise RuntimeError("expected item row 0 to be the padding row (index 0) and no event to use it")
    collator = Collator(ds, common.MAX_LEN)
    for split in SPLITS:
        samples = ds.samples(split)
        n = len(samples)
        hist_item = np.zeros((n, common.MAX_LEN), np.int32)
        hist_cate = np.zeros((n, common.MAX_LEN), np.int32)
        item, cate = np.zeros(n, np.int32), np.zeros(n, np.int32)
        for begin in range(0, n, chunk):
            batch = collator(samples.subset(np.arange(begin, min(begin + chunk, n))))
            width = batch.history_items.shape[1]
            hist_item[begin:begin + len(batch), :width] = batch.history_items.numpy()
            hist_cate[begin:begin + len(batch), :width] = batch.history_cates.numpy()
            item[begin:begin + len(batch)] = batch.target_items.numpy()
            cate[begin:begin + len(batch)] = batch.target_cates.numpy()
        np.savez(out / "deepctr" / f"{split}.npz", hist_item=hist_item, hist_cate=hist_cate, item=item, cate=cate,
                 seq_length=np.minimum(samples.end, common.MAX_LEN).astype(np.int32),
                 label=samples.label.astype(np.float32), user=samples.user.astype(np.int64))
        pl.DataFrame({"user_index": samples.user.astype(np.int64), "item_index": samples.target.astype(np.int64),
                      "seq_len": samples.end.astype(np.int64), "label": samples.label.astype(np.int64)}
                     ).write_parquet(out / "fuxictr" / f"{split}.parquet")
    offsets = ds.offsets
    sequences = [ds.event_items[offsets[u]:offsets[u + 1]].astype(np.int64) for u in range(ds.n_users)]
    pl.DataFrame({"full_item_seq": sequences}, schema={"full_item_seq": pl.List(pl.Int64)}).write_parquet(
        out / "fuxictr" / "user_info.parquet")
    pl.DataFrame({"item_index": np.arange(ds.item_idx.shape[0], dtype=np.int64),
                  "item_id": ds.item_idx, "cate_id": ds.item_cate}).write_parquet(out / "fuxictr" / "item_info.parquet")
    info = {"vocab_sizes": ds.vocab_sizes, "samples": {s: len(ds.samples(s)) for s in SPLITS}}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    marker.write_text(json.dumps(stamp))
    common.log(f"exported peer inputs to {out} in {time.perf_counter() - started:.1f}s")


def model_options(model: str) -> dict:
    """The benchmark settings, limited to the options the model's config accepts."""
    from lifelong.models import MODELS

    wanted = {"embedding_dim": common.EMBEDDING_DIM, "attention_hidden": common.ATTENTION_HIDDEN,
              "dnn_hidden": common.DNN_HIDDEN}
    if model not in MODELS:
        raise SystemExit(f"unknown lifelong model {model!r}; registered: {sorted(MODELS)}")
    known = {f.name for f in dataclasses.fields(MODELS[model][0])}
    return {k: v for k, v in wanted.items() if k in known}


def train(data: Path, model: str, epochs: int, run: Path, result: Path, extra: list[str]) -> None:
    import torch

    from lifelong.train import TrainConfig, train as run_training

    common.set_threads(torch)
    replace_folder(run, RUN)  # only a run folder lifelong wrote
    options = model_options(model)
    for pair in extra:  # model options beyond the shared settings, e.g. attention_normalization=softmax
        key, value = pair.split("=", 1)
        options[key] = json.loads(value) if value[:1].isdigit() or value[:1] in "[-" else value
    config = TrainConfig(data=str(data), model=model, out=str(run), epochs=epochs, batch_size=common.BATCH_SIZE,
                         lr=common.LR, threads=common.THREADS, progress=False, patience=10,
                         max_length=common.MAX_LEN, seed=common.SEED, model_options=options)
    results = run_training(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["train_samples_per_s"] for r in records]
    common.write_result(result, {
        "library": "lifelong", "model": model, "epoch_samples_per_s": speeds,
        "samples_per_s": common.median_after_warmup(speeds), "model_options": options,
        "test": results["test"], "best_epoch": results["best_epoch"], "auc_at": "best validation epoch",
        "train_samples": json.loads((data / "manifest.json").read_text())["samples"]["train"],
    })


def score(data: Path, predictions: Path, result: Path) -> None:
    """Test metrics of a peer's predictions (probabilities, lifelong test-sample order), with lifelong's metrics."""
    from lifelong.dataset import load_dataset
    from lifelong.metrics import ctr_metrics

    test = load_dataset(data).samples("test")
    probs = np.load(predictions).astype(np.float64).reshape(-1)
    if probs.shape[0] != len(test):
        raise SystemExit(f"{predictions}: {probs.shape[0]} predictions for {len(test)} test samples")
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    Path(result).write_text(json.dumps(ctr_metrics(test.user, test.label, np.log(p) - np.log1p(-p))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "export", "train", "score"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", default="din")
    parser.add_argument("--set", action="append", default=[], help="model option key=value (repeatable)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--predictions", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.data, args.source)
    elif args.command == "export":
        export(args.data, args.out)
    elif args.command == "train":
        train(args.data, args.model, args.epochs, args.run, args.result, args.set)
    else:
        score(args.data, args.predictions, args.result)


if __name__ == "__main__":
    main()
