"""The training loop of retrieval models (P2 ``seq-loo``): the same shape as the CTR loop (Adam,
early stopping on a validation metric, atomic checkpoints, exact resume, per-epoch metrics, one result
line per run), with the model's own training loss and exact full-ranking evaluation.

- Training rows are the windows of :func:`lifelong.protocols.training_windows`: every prefix of
  every training sequence is trained once per epoch. Batches are drawn by length
  (:func:`lifelong.batch.length_bucketed_order`: windows of similar length together, the batches in
  random order), so a batch is padded to little more than its own length: on P2 Beauty (mean length
  8.9, L = 50) random batches were padded to ~50 and spent most of their time on padding, above all
  drawing dropout masks for it.
- With ``loss = bce`` each training position gets one negative, drawn per epoch with the seed from the
  items the user never interacted with, in ``batch.history_negative_items`` (aligned with the
  position's *next* item, the one it must predict).
- Hooks a model may define: ``set_item_categories(cates)`` (called once after it is built, with the
  category vocabulary index of every item vocabulary index, for models that use item attributes) and
  ``epoch_start(batches, epoch)`` (called before each epoch, after the epoch's seeding, with a function
  that yields every training window once, as batches in a fixed order (by length, for little padding);
  e.g. ICLRec re-clusters its intents there).
- Model selection: validation NDCG@20 (the S3-Rec / ICLRec / ICSRec selection metric); the best
  epoch's weights are evaluated on test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lifelong.batch import Batch, Collator, iterate_batches, length_bucketed_order, length_order
from lifelong.dataset.store import PreparedDataset, load_dataset
from lifelong.models import build_model
from lifelong.models.retrieval import next_items
from lifelong.protocols import InteractionIndex, sample_negatives, training_windows
from lifelong.train.checkpoint import load_weights
from lifelong.train.ranking import evaluate_ranking, training_popularity

SELECT_METRIC = "ndcg@20"
SCORE_CELLS = 1 << 25  # at most 33.5M user x item scores per evaluation chunk (128 MB of float32)


def eval_chunk(config, n_items: int) -> int:
    return max(1, min(config.eval_batch_size, SCORE_CELLS // max(n_items, 1)))


def item_categories(dataset: PreparedDataset, n_items: int) -> np.ndarray:
    """(n_items,) category vocabulary index of every item vocabulary index (0 for padding/unknown)."""
    cates = np.zeros(n_items, dtype=np.int64)
    known = dataset.item_idx >= 2
    cates[dataset.item_idx[known]] = dataset.item_cate[known]
    return cates


def add_negatives(batch: Batch, dataset: PreparedDataset, index: InteractionIndex, rng: np.random.Generator) -> None:
    """One negative per real position (for its next item): an item the user never interacted with."""
    _, mask = next_items(batch)
    users = batch.users.unsqueeze(1).expand_as(mask)[mask].numpy()
    rows = sample_negatives(users, index, rng)
    negatives = torch.zeros_like(batch.history_items)
    negatives[mask] = torch.from_numpy(dataset.item_idx[rows])
    batch.history_negative_items = negatives
    batch.history_negative_cates = torch.zeros_like(batch.history_items)
    batch.history_negative_cates[mask] = torch.from_numpy(dataset.item_cate[rows])


def train_retrieval(config, *, resume: bool = False, command: str | None = None,
                    on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train a retrieval model, select the epoch with the best validation NDCG@20, rank test."""
    from lifelong.train.loop import Distributed, _log, end_epoch, model_config_for, start_run

    config.validate()
    if Distributed().enabled:
        raise ValueError("retrieval models train in one process for now (torchrun/DDP is for the CTR loop)")
    if config.threads:
        torch.set_num_threads(config.threads)
    run = Path(config.out)
    dataset = load_dataset(config.data)
    protocol = dataset.manifest.get("protocol", {}).get("name")
    if protocol != "seq-loo":
        raise ValueError(f"{config.model} is a retrieval model: it needs a dataset prepared with --protocol seq-loo, "
                         f"got {protocol!r}")
    model_config = model_config_for(config, dataset)
    collator = Collator(dataset, config.max_length)
    valid_samples = dataset.samples("valid")
    chunk = eval_chunk(config, model_config["n_items"])
    model, epoch_of = _trainer(config, dataset, collator, model_config, dataset.samples("train"))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = start_run(config, dataset, model_config, model, optimizer, "best_score", resume, command)

    while not state["done"] and state["epoch"] < config.epochs:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        loss_sum, seen, targets = epoch_of(model, optimizer, epoch)
        seconds = time.perf_counter() - started
        valid = evaluate_ranking(model, collator, valid_samples, chunk)
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_targets_per_s": targets / seconds,
                  "train_seconds": seconds, **{f"valid_{k}": v for k, v in valid.items()}}
        end_epoch(run, state, "best_score", valid[SELECT_METRIC], valid, record, config.patience, model,
                  model_config, optimizer)
        _log(config, f"epoch {epoch}: train loss {record['train_loss']:.4f}, {record['train_targets_per_s']:,.0f} "
                     f"targets/s, valid HR@10 {valid['hr@10']:.4f} NDCG@10 {valid['ndcg@10']:.4f} "
                     f"NDCG@20 {valid['ndcg@20']:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    load_weights(run / "checkpoints" / "best", model)
    speeds = [json.loads(line)["train_targets_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = dataset.samples("test")
    started = time.perf_counter()
    beyond = {"item_cates": item_categories(dataset, model_config["n_items"]),
              "popularity": training_popularity(dataset, model_config["n_items"])}
    test_metrics, ranks = evaluate_ranking(model, collator, test, chunk, keep_ranks=True, beyond=beyond)
    results = {
        "task": "retrieval",
        "loss": model_config.get("loss"),
        "select": SELECT_METRIC,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_targets_per_s": float(np.median(speeds[1:] or speeds)),
        "valid": state["best_valid"],
        "test": test_metrics,
        "test_seconds": time.perf_counter() - started,
    }
    if config.save_predictions:
        np.savez_compressed(run / "test_ranks.npz", user=test.user, target=test.target, rank=ranks)
    if config.refit_with_valid:
        results["test_refit"], results["refit_epochs"] = refit_with_valid(config, dataset, collator, model_config,
                                                                          state["best_epoch"], chunk, beyond)
    (run / "results.json").write_text(json.dumps(results, indent=2))
    if config.results_csv:
        append_retrieval_line(Path(config.results_csv), config, dataset, model_config, results, run, command)
    return results


def append_retrieval_line(path: Path, config, dataset: PreparedDataset, model_config: dict, results: dict,
                          run: Path, command: str | None) -> None:
    """One line per run: model, loss, data, protocol, seed, L, D, the test metrics, the command."""
    test = results["test"]
    row = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": str(run),
        "data": str(config.data),
        "protocol": dataset.manifest.get("protocol", {}).get("name"),
        "model": config.model,
        "loss": model_config.get("loss"),
        "seed": config.seed,
        "max_length": config.max_length,
        "embedding_dim": model_config.get("embedding_dim"),
        "best_epoch": results["best_epoch"],
        "valid_ndcg@20": round(results["valid"]["ndcg@20"], 5),
        **{f"test_{k}": round(test[k], 5) for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "recall@50")},
        "train_targets_per_s": round(results["train_targets_per_s"], 1),
        "command": command or " ".join(sys.argv),
    }
    from lifelong.train.loop import write_result_row

    write_result_row(path, row)


def _trainer(config, dataset: PreparedDataset, collator: Collator, model_config: dict, rows):
    """Build the model (seeded) and return it with ``epoch_of(model, optimizer, epoch)``, which trains
    one epoch on the windows of ``rows`` (every prefix of each row's sequence up to its target) and
    returns ``(loss sum, windows seen, targets trained)``."""
    from lifelong.train.loop import _progress

    windows = training_windows(rows, dataset.offsets, dataset.event_items, config.max_length)
    window_lengths = np.minimum(windows.end, config.max_length)  # targets per window (batches by length)
    windows_by_length = length_order(windows, config.max_length)
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    if hasattr(model, "set_item_categories"):
        model.set_item_categories(torch.from_numpy(item_categories(dataset, model_config["n_items"])))
    needs_negatives = model.config.batch_needs().get("with_negatives", False)
    index = InteractionIndex.build(dataset.offsets, dataset.event_items, int(dataset.item_idx.shape[0])) \
        if needs_negatives else None

    def epoch_of(model, optimizer, epoch: int) -> tuple[float, int, int]:
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout and sampled negatives restart exactly on resume
        shuffle = np.random.default_rng([config.seed, epoch])
        order = length_bucketed_order(shuffle.permutation(len(windows)), window_lengths, config.batch_size, shuffle)
        negative_rng = np.random.default_rng([config.seed, epoch, 1])
        if hasattr(model, "epoch_start"):
            model.epoch_start(lambda: iterate_batches(collator, windows, config.batch_size, windows_by_length), epoch)
        model.train()
        loss_sum, seen, targets = 0.0, 0, 0
        with _progress(config.progress, f"epoch {epoch}", order.shape[0]) as advance:
            for batch in iterate_batches(collator, windows, config.batch_size, order):
                if needs_negatives:
                    add_negatives(batch, dataset, index, negative_rng)
                output = model(batch)
                optimizer.zero_grad(set_to_none=True)
                output.loss.backward()
                optimizer.step()
                loss_sum += output.loss.item() * len(batch)
                seen += len(batch)
                targets += int(batch.lengths.sum())
                advance(len(batch))
        return loss_sum, seen, targets

    return model, epoch_of


def refit_with_valid(config, dataset: PreparedDataset, collator: Collator, model_config: dict, epochs: int,
                     chunk: int, beyond: dict) -> tuple[dict, int]:
    """uSASRec's final fit, a documented variant of P2 (never used for selection): a fresh model with
    the same seed, trained for the selected number of ``epochs`` on every prefix of ``i1..i(n-1)`` (the
    validation item is now a training target), then ranked on test exactly as the P2 model. Returns its
    test metrics and the epochs trained."""
    from lifelong.train.loop import _log

    model, epoch_of = _trainer(config, dataset, collator, model_config, dataset.samples("valid"))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for epoch in range(1, epochs + 1):
        loss_sum, seen, _ = epoch_of(model, optimizer, epoch)
        _log(config, f"refit epoch {epoch}/{epochs}: train loss {loss_sum / max(seen, 1):.4f}")
    return evaluate_ranking(model, collator, dataset.samples("test"), chunk, beyond=beyond), epochs
