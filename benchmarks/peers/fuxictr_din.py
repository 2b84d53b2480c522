"""FuxiCTR 2.3.10 DIN on the exported P1 samples (runs in .venv-bench).

    fuxictr_din.py --inputs DIR/fuxictr --info DIR/info.json --work DIR --epochs 3 --result FILE --predictions FILE.npy

FuxiCTR's DIN ships in the wheel as ``model_zoo.LongCTR.DIN`` (the long-sequence model zoo); it reads data
the way that zoo's ``run_expid.py`` does: ``FeatureProcessor`` + ``build_dataset`` with
``rebuild_dataset=False`` (the inputs are already index-encoded) give ``feature_map.json``; ``FeatureMap``
loads it; ``RankDataLoader`` with ``data_loader=LongCTRDataLoader`` reads the sample parquet
(user_index, item_index, seq_len, label) and builds each batch's histories from ``user_info.parquet``
(every user's item sequence) and item features from ``item_info.parquet``, truncated to the last
``max_len=50`` events. ``model.fit(train_gen, validation_data=valid_gen, epochs=N)`` trains, evaluates
validation AUC after every epoch, keeps the best checkpoint and reloads it; test predictions come from
``model.predict`` on the test loader.

Epoch time: the instance's ``train_epoch`` and ``eval_step`` (the end-of-epoch validation FuxiCTR runs
inside ``train_epoch``) are wrapped with timers; training time = train_epoch minus eval_step.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import fuxictr  # noqa: E402
from fuxictr.features import FeatureMap  # noqa: E402
from fuxictr.preprocess import FeatureProcessor, build_dataset  # noqa: E402
from fuxictr.pytorch.dataloaders import RankDataLoader  # noqa: E402
from fuxictr.pytorch.torch_utils import seed_everything  # noqa: E402
from model_zoo.LongCTR.DIN import DIN  # noqa: E402
from model_zoo.LongCTR.longctr_dataloader import LongCTRDataLoader  # noqa: E402


def params_for(inputs: Path, work: Path, info: dict, epochs: int, num_workers: int) -> dict:
    sizes = info["vocab_sizes"]
    meta = {"active": True, "dtype": "int", "type": "meta", "remap": False}
    item = {"active": True, "dtype": "int", "type": "categorical", "source": "item", "remap": False}
    return {
        # dataset config (LongCTR layout, already index-encoded)
        "dataset_id": "p1_amazon_beauty", "data_root": str(work / "data"), "data_format": "parquet",
        "train_data": str(inputs / "train.parquet"), "valid_data": str(inputs / "valid.parquet"),
        "test_data": str(inputs / "test.parquet"), "user_info": str(inputs / "user_info.parquet"),
        "item_info": str(inputs / "item_info.parquet"), "rebuild_dataset": False,
        "feature_cols": [
            {"name": "user_index", **meta}, {"name": "item_index", **meta}, {"name": "seq_len", **meta},
            {"name": "item_id", **item, "vocab_size": sizes["item"]},
            {"name": "cate_id", **item, "vocab_size": max(sizes.get("cate", 2), 2)},
        ],
        "label_col": {"name": "label", "dtype": "float"},
        # model config: the zoo's DIN_default template with the benchmark's settings
        "model": "DIN", "model_id": "DIN_bench", "model_root": str(work / "checkpoints"), "gpu": -1,
        "loss": "binary_crossentropy", "metrics": ["AUC", "logloss"], "task": "binary_classification",
        "optimizer": "adam", "learning_rate": common.LR, "embedding_regularizer": 0, "net_regularizer": 0,
        "batch_size": common.BATCH_SIZE, "embedding_dim": common.EMBEDDING_DIM,
        "dnn_hidden_units": list(common.DNN_HIDDEN), "dnn_activations": "Dice",
        "attention_hidden_units": list(common.ATTENTION_HIDDEN), "attention_hidden_activations": "Dice",
        "attention_output_activation": None, "attention_dropout": 0, "din_use_softmax": False,
        "net_dropout": 0, "batch_norm": False, "epochs": epochs, "shuffle": True, "seed": common.SEED,
        "monitor": "AUC", "monitor_mode": "max", "max_len": common.MAX_LEN, "accumulation_steps": 1,
        "num_workers": num_workers, "verbose": 0, "early_stop_patience": 10, "save_best_only": True,
        "eval_steps": None, "group_id": None, "use_features": None, "feature_specs": None,
        "feature_config": None, "pickle_feature_encoder": False, "debug_mode": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--info", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    common.set_threads(torch)

    info = json.loads(args.info.read_text())
    params = params_for(args.inputs, args.work, info, args.epochs, args.num_workers)
    seed_everything(seed=params["seed"])
    common.set_threads(torch)  # after seed_everything, in case it touches torch settings
    feature_encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(feature_encoder, **params)
    data_dir = Path(params["data_root"]) / params["dataset_id"]
    feature_map = FeatureMap(params["dataset_id"], str(data_dir))
    feature_map.load(str(data_dir / "feature_map.json"), params)
    model = DIN(feature_map, **params)
    Path(model.model_dir).mkdir(parents=True, exist_ok=True)

    params["data_loader"] = LongCTRDataLoader
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)

    fit = common.timed_fit(model, train_gen, valid_gen, params, "fuxictr")
    epoch_seconds, valid_aucs, best = fit["epoch_seconds"], fit["valid_aucs"], {"epoch": fit["best_epoch"]}

    test_gen = RankDataLoader(feature_map, stage="test", **params)
    predictions = model.predict(test_gen)
    np.save(args.predictions, predictions.astype(np.float64))
    speeds = [train_gen.num_samples / s for s in epoch_seconds]
    common.write_result(args.result, {
        "library": "FuxiCTR", "version": fuxictr.__version__, "model": "din",
        "epoch_samples_per_s": speeds, "samples_per_s": common.median_after_warmup(speeds),
        "best_epoch": best["epoch"], "auc_at": "best validation epoch", "valid_auc_improved": valid_aucs,
        "train_samples": int(train_gen.num_samples), "predictions": str(args.predictions),
        "settings": f"model_zoo.LongCTR.DIN + LongCTRDataLoader (num_workers={args.num_workers}), embedding 32, "
                    "attention [64,32] Dice, dnn [200,80] Dice, Adam 1e-3, grad-norm clip 10 (its default), batch 1024",
    })


if __name__ == "__main__":
    main()
