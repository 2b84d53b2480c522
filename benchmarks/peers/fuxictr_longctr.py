"""One FuxiCTR LongCTR model (SIM, ETA, SDIM or TWIN) on exported P5 samples (runs in .venv-bench).

    fuxictr_longctr.py feature-map --inputs DIR --work DIR
    fuxictr_longctr.py train --model sdim --inputs DIR --work DIR [--epochs 1] [--batch-size 256] [--threads 1]
        [--num-workers 3] [--set key=value ...] [--result FILE] [--predictions FILE.npy]

``--inputs`` is a folder written by ``longctr_export.py`` (the samples of a lifelong P5 dataset in the LongCTR
layout, with ``dataset_config.yaml`` and ``info.json``). ``train`` prints one JSON line (and writes it to
``--result``).

The peers' code is not copied: it is imported at run time from FuxiCTR's LongCTR model zoo in
``../shared/peers/fuxictr-longctr`` (``--zoo``; its ``model_zoo/LongCTR`` folder goes on ``sys.path``, as
that zoo's ``run_expid.py`` runs from inside it), with ``fuxictr==2.3.10`` from ``make bench-setup``.

The run is ``run_expid.py``'s:

- ``feature-map``: FuxiCTR's ``FeatureProcessor`` + ``build_dataset(rebuild_dataset=False)`` on the exported
  dataset config write ``feature_map.json`` (the inputs are already index-encoded). It is its own process
  so that the measured one does not carry ``fuxictr.preprocess``'s imports (ray, about 190 MB of RSS).
- ``train``: ``FeatureMap.load``; the model class from the zoo built with the zoo's
  ``config/<model>_config/model_config.yaml`` (``Base`` + ``<MODEL>_default``) as the base, then the dataset
  config, then the benchmark's sizes: ``embedding_dim`` 32 (item id and category, so 64 per item),
  ``topk`` 100 (SIM, ETA, TWIN), ``max_len`` = the export's L, ``batch_size``, ``epochs``, ``num_workers``
  (default: the zoo config's 3) and ``verbose`` 0 (no tqdm bars); everything else (DNN [64, 32] ReLU,
  attention_dim 64, 2 heads, SDIM's 2 hashes x 4 bits, ETA's 32 hash bits, short_seq_len 50, Adam 1e-3,
  grad-norm clip 10, seed, early stopping) as the zoo sets it. ``--set key=value`` overrides a parameter.
  ``RankDataLoader(..., data_loader=LongCTRDataLoader)`` gives the train/valid loaders (FuxiCTR 2.3.10
  returns the loaders themselves: the zoo's ``.make_iterator()`` is for older versions), ``model.fit``
  trains (validation AUC after every epoch, best checkpoint kept and reloaded), ``model.predict`` on the
  test loader gives the test predictions.

Measured:

- ``samples_per_s``: training samples per second of an epoch = training samples / the wall time of the
  zoo model's ``train_epoch`` minus the end-of-epoch validation run inside it (its ``eval_step`` is timed
  and subtracted). Data loading, the workers' start-up of each epoch, forward, backward and the optimiser
  step are inside. Over one epoch: with ``--epochs 1`` that epoch (warm-up included); with more, the
  median of the epochs after the first (the first is the warm-up), as ``lifelong train`` reports its own.
- peak RSS: ``ru_maxrss`` of this process (RUSAGE_SELF) and of its largest finished child (RUSAGE_CHILDREN:
  the DataLoader workers, which end with each epoch's iterator), and their sum. The driver
  (``benchmarks/long_peers.py``) also samples the whole process tree's RSS.
- ``test_auc``: sklearn's ROC AUC (the one FuxiCTR's own ``AUC`` metric calls) of the test predictions of the
  best validation epoch; ``--predictions`` saves them (probabilities, in the test samples' order) for
  ``lifelong_worker.py score``.

Work-arounds for the zoo snapshot on fuxictr 2.3.10 (no zoo file is changed):

- ``longctr_dataloader.py`` imports ``keras_preprocessing.sequence.pad_sequences``: keras-preprocessing 1.1.2
  (``make bench-setup``) reads ``np.unicode_``, removed in numpy 2, so this process sets that alias
  (``np.unicode_ = np.str_``) before the import. Without keras-preprocessing, FuxiCTR's own
  ``fuxictr.preprocess.tokenizer.pad_sequences`` (the same function; the copy of the loader in the 2.3.10
  wheel imports it) stands in under that module name. The JSON says which ran.
- ``fuxictr_version.py`` (asserts 2.3.2) is only imported by ``run_expid.py``, which is not used.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import resource
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ZOO = Path(os.environ.get("FUXICTR_LONGCTR", ROOT.parent / "shared" / "peers" / "fuxictr-longctr"))
MODELS = {"sim": "SIM", "eta": "ETA", "sdim": "SDIM", "twin": "TWIN"}
TOPK = 100  # lifelong's top_k default (SIM, ETA, TWIN)


def zoo_dir(zoo: Path) -> Path:
    path = zoo / "model_zoo" / "LongCTR"
    if not (path / "longctr_dataloader.py").exists():
        raise SystemExit(f"{path} is not FuxiCTR's LongCTR model zoo (set --zoo or FUXICTR_LONGCTR)")
    return path


def dataset_params(inputs: Path, work: Path) -> tuple[dict, dict]:
    """The exported dataset config (``dataset_config.yaml``, one dataset id) and ``info.json``."""
    config = yaml.safe_load((inputs / "dataset_config.yaml").read_text())
    (dataset_id, params), = config.items()
    info = json.loads((inputs / "info.json").read_text())
    return {"dataset_id": dataset_id, "data_root": str(work / "data"), **params}, info


def feature_map_path(work: Path, dataset_id: str) -> Path:
    return work / "data" / dataset_id / "feature_map.json"


def build_feature_map(inputs: Path, work: Path) -> None:
    from fuxictr.preprocess import FeatureProcessor, build_dataset

    params, _ = dataset_params(inputs, work)
    feature_encoder = FeatureProcessor(**params)
    build_dataset(feature_encoder, **params)  # rebuild_dataset=False: fits the vocabularies from vocab_size only
    common.log(f"wrote {feature_map_path(work, params['dataset_id'])}")


def model_params(zoo: Path, name: str, dataset: dict, info: dict, work: Path, args) -> dict:
    """The zoo's model config (``Base`` + ``<MODEL>_default``), the dataset config, the benchmark's sizes."""
    config = yaml.safe_load((zoo_dir(zoo) / "config" / f"{name.lower()}_config" / "model_config.yaml").read_text())
    params = {**config.get("Base", {}), **config[f"{name}_default"], **dataset}
    params.update({
        "model_id": f"{name}_bench", "model_root": str(work / "checkpoints"), "gpu": -1, "verbose": 0,
        "embedding_dim": common.EMBEDDING_DIM, "batch_size": args.batch_size, "epochs": args.epochs,
        "max_len": int(info["max_len"]),
    })
    if "topk" in params:
        params["topk"] = TOPK
    if args.num_workers is not None:
        params["num_workers"] = args.num_workers
    if args.seed is not None:
        params["seed"] = args.seed
    for pair in args.set:
        key, value = pair.split("=", 1)
        params[key] = yaml.safe_load(value)
    return params


def import_zoo(zoo: Path, name: str):
    """The model class and ``LongCTRDataLoader`` from the zoo folder (on ``sys.path``, as run_expid runs)."""
    sys.path.insert(0, str(zoo_dir(zoo)))
    try:
        import keras_preprocessing.sequence  # noqa: F401  (installed? else the stand-in below)

        if not hasattr(np, "unicode_"):  # numpy 2 removed the alias keras-preprocessing 1.1.2 reads
            np.unicode_ = np.str_
        pad = f"keras_preprocessing {importlib.metadata.version('keras-preprocessing')}"
    except ImportError:
        from fuxictr.preprocess.tokenizer import pad_sequences

        package = types.ModuleType("keras_preprocessing")
        package.sequence = types.ModuleType("keras_preprocessing.sequence")
        package.sequence.pad_sequences = pad_sequences
        sys.modules.update({"keras_preprocessing": package, "keras_preprocessing.sequence": package.sequence})
        pad = "fuxictr.preprocess.tokenizer.pad_sequences (stand-in: keras-preprocessing is not installed)"
    loader_module = importlib.import_module("longctr_dataloader")
    model_class = getattr(importlib.import_module(name), name)
    for module in (loader_module, sys.modules[model_class.__module__]):
        if not Path(module.__file__).resolve().is_relative_to(zoo.resolve()):
            raise SystemExit(f"{module.__name__} came from {module.__file__}, not from {zoo}")
    return model_class, loader_module.LongCTRDataLoader, pad


def rss_mb() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_self_mb": round(own, 1), "peak_rss_children_mb": round(children, 1),
            "peak_rss_mb": round(own + children, 1)}


def train(args) -> dict:
    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything
    from sklearn.metrics import roc_auc_score

    name = MODELS[args.model]
    torch.set_num_threads(args.threads)
    dataset, info = dataset_params(args.inputs, args.work)
    fmap_json = feature_map_path(args.work, dataset["dataset_id"])
    if not fmap_json.exists():
        raise SystemExit(f"{fmap_json} is missing: run `{Path(__file__).name} feature-map` first")
    model_class, loader_class, pad = import_zoo(args.zoo, name)
    params = model_params(args.zoo, name, dataset, info, args.work, args)
    seed_everything(seed=params["seed"])
    torch.set_num_threads(args.threads)
    feature_map = FeatureMap(params["dataset_id"], str(fmap_json.parent))
    feature_map.load(str(fmap_json), params)
    model = model_class(feature_map, **params)
    Path(model.model_dir).mkdir(parents=True, exist_ok=True)
    params["data_loader"] = loader_class
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)

    fit = common.timed_fit(model, train_gen, valid_gen, params, f"fuxictr {name}")
    epoch_seconds, valid_aucs, best = fit["epoch_seconds"], fit["valid_aucs"], {"epoch": fit["best_epoch"]}
    fit_seconds = fit["fit_seconds"]
    test_gen = RankDataLoader(feature_map, stage="test", **params)
    predictions = model.predict(test_gen)
    labels = test_gen.dataset.darray[:, test_gen.dataset.column_index["label"]].astype(np.float64)
    if args.predictions:
        np.save(args.predictions, predictions.astype(np.float64))
    speeds = [train_gen.num_samples / s for s in epoch_seconds]
    shown = ("embedding_dim", "batch_size", "max_len", "num_workers", "short_seq_len", "topk", "dnn_hidden_units",
             "dnn_activations", "attention_dim", "num_heads", "num_hashes", "hash_bits", "use_qkvo", "gsu_type",
             "Kc_cross_features", "learning_rate", "seed", "epochs", "early_stop_patience")
    return {
        "library": "FuxiCTR", "version": fuxictr.__version__, "model": args.model, "zoo_model": name,
        "samples_per_s": common.median_after_warmup(speeds), "epoch_samples_per_s": speeds,
        "speed_over": "one epoch (the only one)" if len(speeds) == 1 else "median of the epochs after the first",
        "train_samples": int(train_gen.num_samples), "epochs_run": len(epoch_seconds),
        "fit_seconds": round(fit_seconds, 1), "best_epoch": best["epoch"], "valid_auc_improved": valid_aucs,
        "test_auc": float(roc_auc_score(labels, predictions)), "test_n": int(labels.shape[0]),
        "threads": args.threads, "pad_sequences": pad, **rss_mb(),
        "params": {k: params[k] for k in shown if k in params},
        "zoo": str(args.zoo), "pid": os.getpid(), "python": sys.executable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["feature-map", "train"])
    parser.add_argument("--model", choices=sorted(MODELS), default="sdim")
    parser.add_argument("--inputs", type=Path, required=True, help="a folder written by longctr_export.py")
    parser.add_argument("--work", type=Path, required=True, help="FuxiCTR's data_root/model_root go here")
    parser.add_argument("--zoo", type=Path, default=ZOO, help="the FuxiCTR LongCTR checkout (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the zoo config's)")
    parser.add_argument("--seed", type=int, default=None, help="default: the zoo config's")
    parser.add_argument("--set", action="append", default=[], help="FuxiCTR parameter key=value (YAML value)")
    parser.add_argument("--result", type=Path)
    parser.add_argument("--predictions", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # torch warns at every loader that the zoo config's 3 workers exceed a 2-core machine's suggestion
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "feature-map":
        build_feature_map(args.inputs, args.work)
        return
    result = train(args)
    line = json.dumps(result)
    if args.result:
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
