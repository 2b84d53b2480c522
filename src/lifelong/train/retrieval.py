"""Training of retrieval models (P2 ``seq-loo`` and P3 ``mi-split``) through the one loop of every model
(:mod:`lifelong.train.epoch`: Adam, early stopping on a validation metric, atomic checkpoints, exact
resume, per-epoch metrics, one result line per run): what is theirs is the :class:`RetrievalTask` (the
model's own training loss on the rows below) and exact full-catalogue evaluation.

- P3: every training row ``(user, end, target)`` is one sample (the history before ``end`` predicts the
  item at ``end``), batched by length as below; evaluation retrieves each held-out user's top 20 / 50
  and scores them against the user's target set (:func:`lifelong.train.ranking.evaluate_sets`);
  selection on validation Recall@50 (ComiRec's). With ``desmil`` the step is DESMIL's
  (:class:`lifelong.train.desmil.DesmilStep`, a variant of the loop's step: per-sample weights that minimise the weighted HSIC between the
  interests, alternating with the weighted model update); its batches are drawn at random, not by
  length (a batch of one-event histories has identical interests: nothing to reweight). A sequence
  model (SASRec...) under P3 trains on the windows of each training user's sequence, so every target is
  trained once per epoch as under P2. A model's ``prepare_retrieval(user_batches)``
  hook is called before every evaluation with one batch row per training user (its most recent L
  training events), e.g. kNN-Embed's clusters and neighbour bank.

- Training rows are the windows of :func:`lifelong.protocols.training_windows`: every prefix of
  every training sequence is trained once per epoch. Batches are drawn by length
  (:func:`lifelong.batch.length_bucketed_order`: windows of similar length together, the batches in
  random order), so a batch is padded to little more than its own length: on P2 Beauty (mean length
  8.9, L = 50) random batches were padded to ~50 and spent most of their time on padding, above all
  drawing dropout masks for it.
- With ``samples = prefixes`` (``--samples prefixes``) the rows are instead every prefix of every training
  sequence (:func:`lifelong.protocols.training_prefixes`), each trained on its last position only
  (``Batch.last_target_only``): the training-sample regime of ICSRec, BSARec and RecBole. Every target
  is still trained once per epoch, but each with its own forward pass and dropout draw, at roughly
  ``mean length / 2`` times the encoder work. Only models whose loss follows ``last_target_only``
  (``last_target_loss = True``: SASRec and the models built on it) accept it.
- With ``loss = bce`` each training position gets one negative, drawn per epoch with the seed from the
  items the user never interacted with in the events training sees (:mod:`lifelong.protocols.negatives`),
  in ``batch.history_negative_items`` (aligned with the
  position's *next* item, the one it must predict).
- A model with ``target_partners = True`` (ICLRec with ICSRec's ``subsequence_views``) gets, in every
  training batch, the history of another training row with the same target (``Batch.partner_items`` /
  ``partner_mask``), drawn per epoch with the seed (:func:`lifelong.protocols.target_partners`) from all
  training rows, not only the batch's.
- Hooks a model may define: ``set_item_categories(cates)`` (called once after it is built, with the
  category vocabulary index of every item vocabulary index, for models that use item attributes) and
  ``epoch_start(batches, epoch)`` (called before each epoch, after the epoch's seeding, with a function
  that yields every training window once, as batches in a fixed order (by length, for little padding);
  e.g. ICLRec re-clusters its intents there).
- Model selection: validation NDCG@20 on P2 (the S3-Rec / ICLRec / ICSRec selection metric), Recall@50
  on P3; the best epoch's weights are evaluated on test.
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
from lifelong.dataset.store import PreparedDataset, SampleTable, load_dataset
from lifelong.errors import UserError
from lifelong.models import MODELS, build_model
from lifelong.models.retrieval import next_items
from lifelong.protocols import (InteractionIndex, negative_index, sample_negatives, target_partners,
                                training_popularity, training_prefixes, training_windows)
from lifelong.train.desmil import DesmilStep, SampleWeighting, interest_hsic
from lifelong.train.device import resolve_device, training_autocast
from lifelong.train.epoch import (EpochBatches, PlainStep, Selection, Trainer, median_speed, model_loss, train_epoch,
                                  train_epochs)
from lifelong.train.ranking import evaluate_ranking, evaluate_sets, item_categories, retrieve_lists
from lifelong.train.run import Distributed, _log, model_config_for, start_run, write_result_row

SELECT_METRIC = "ndcg@20"
SELECT_METRIC_P3 = "recall@50"
P2_SELECTION = Selection(SELECT_METRIC, "best_score", "train_loss", "train_targets_per_s",
                         (("hr@10", "hr@10"), ("ndcg@10", "ndcg@10"), ("ndcg@20", "ndcg@20")))
P3_SELECTION = Selection(SELECT_METRIC_P3, "best_score", "train_loss", "train_targets_per_s",
                         (("recall@20", "recall@20"), ("recall@50", "recall@50"), ("ndcg@50", "ndcg@50")))
SCORE_CELLS = 1 << 25  # at most 33.5M user x item scores per evaluation chunk (128 MB of float32)


def eval_chunk(config, n_items: int, interests: int = 1) -> int:
    """Users per evaluation chunk: at most ``SCORE_CELLS`` scores (users x interests x items) at once."""
    return max(1, min(config.eval_batch_size, SCORE_CELLS // max(n_items * interests, 1)))


def add_negatives(batch: Batch, dataset: PreparedDataset, index: InteractionIndex, rng: np.random.Generator) -> None:
    """One negative per real position (for its next item): an item the user never interacted with in the
    events training sees (drawn by :func:`lifelong.protocols.sample_negatives` over ``index``, a
    :func:`lifelong.protocols.negative_index`)."""
    _, mask = next_items(batch)
    users = batch.users.unsqueeze(1).expand_as(mask)[mask].cpu().numpy()
    rows = sample_negatives(users, index, rng)
    negatives = torch.zeros_like(batch.history_items)
    negatives[mask] = torch.from_numpy(dataset.item_idx[rows]).to(batch.device)
    batch.history_negative_items = negatives
    batch.history_negative_cates = torch.zeros_like(batch.history_items)
    batch.history_negative_cates[mask] = torch.from_numpy(dataset.item_cate[rows]).to(batch.device)


def train_retrieval(config, *, resume: bool = False, command: str | None = None,
                    on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train a retrieval model, select the epoch with the best validation NDCG@20, rank test."""
    config.validate()
    with Distributed(resolve_device(config.device)) as ctx:
        return _train_retrieval(config, ctx, resume=resume, command=command, on_epoch_end=on_epoch_end)


def _train_retrieval(config, ctx: Distributed, *, resume: bool, command: str | None,
                     on_epoch_end: Callable[[int, dict], None] | None) -> dict:
    device = ctx.device
    if config.threads:
        torch.set_num_threads(config.threads)
    run = Path(config.out)
    dataset = load_dataset(config.data)
    protocol = dataset.manifest.get("protocol", {}).get("name")
    if protocol not in ("seq-loo", "mi-split"):
        raise ValueError(f"{config.model} is a retrieval model: it needs a dataset prepared with --protocol seq-loo "
                         f"or mi-split, got {protocol!r}")
    if ctx.enabled and (protocol == "mi-split" or config.refit_with_valid):
        raise UserError("under torchrun, retrieval trains P2 (seq-loo) without --refit-with-valid; P3 (mi-split) "
                        "and the refit train in one process for now: run without torchrun")
    if protocol == "mi-split":
        return train_mi(config, dataset, resume=resume, command=command, on_epoch_end=on_epoch_end)
    if config.desmil:
        raise ValueError("--desmil is a training option of multi-interest models under P3 (mi-split)")
    model_config = model_config_for(config, dataset)
    collator = Collator(dataset, config.max_length, device=device)
    valid_samples = dataset.samples("valid")
    chunk = eval_chunk(config, model_config["n_items"])
    model, epoch_of = _trainer(config, dataset, collator, model_config, dataset.samples("train"), dist_ctx=ctx)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = start_run(config, dataset, model_config, model, optimizer, "best_score", resume, command, ctx.main)

    records = train_epochs(config, state, model, model_config, optimizer, epoch_of,
                           lambda: evaluate_ranking(model, collator, valid_samples, chunk, dist_ctx=ctx), P2_SELECTION,
                           on_epoch_end, dist_ctx=ctx)
    test = dataset.samples("test")
    started = time.perf_counter()
    beyond = {"item_cates": item_categories(dataset, model_config["n_items"]),
              "popularity": training_popularity(dataset, model_config["n_items"])}
    test_metrics, ranks = evaluate_ranking(model, collator, test, chunk, keep_ranks=True, beyond=beyond, dist_ctx=ctx)
    results = {
        "task": "retrieval",
        "loss": model_config.get("loss"),
        "select": SELECT_METRIC,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_targets_per_s": median_speed(records, P2_SELECTION.speed_key),
        "valid": state["best_valid"],
        "test": test_metrics,
        "test_seconds": time.perf_counter() - started,
    }
    if config.refit_with_valid:
        results["test_refit"], results["refit_epochs"] = refit_with_valid(config, dataset, collator, model_config,
                                                                          state["best_epoch"], chunk, beyond)
    if ctx.main:
        if config.save_predictions:
            np.savez_compressed(run / "test_ranks.npz", user=test.user, target=test.target, rank=ranks)
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
        **(p3_columns(results) if results.get("protocol") == "mi-split" else {
            "valid_ndcg@20": round(results["valid"]["ndcg@20"], 5),
            **{f"test_{k}": round(test[k], 5) for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "recall@50")},
            "train_targets_per_s": round(results["train_targets_per_s"], 1)}),
        "command": command or " ".join(sys.argv),
    }
    write_result_row(path, row)


def p3_columns(results: dict) -> dict:
    """The P3 part of a result line: options, validation Recall@50, the test set metrics and reports."""
    test = results["test"]
    names = ("recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50", "interest_redundancy",
             "interest_hsic", "top50_category_diversity")
    return {"desmil": results["desmil"], "user_order": results["user_order"],
            "valid_recall@50": round(results["valid"]["recall@50"], 5),
            **{f"test_{k}": round(test[k], 5) if k in test else "" for k in names},
            "train_samples_per_s": round(results["train_samples_per_s"], 1)}


class RetrievalTask:
    """The training epochs of a retrieval model (a :class:`lifelong.train.epoch.Task`): the model's own
    loss on the windows of the training ``rows`` (every prefix of each row's sequence up to its target),
    on every prefix as its own row (``--samples prefixes``), or on the rows themselves (P3 multi-interest
    models, ``windowed = False``: one target each).

    An epoch's rows are shuffled with the seed and batched by length (windows of similar length together),
    or kept in random order when the step reweights samples (DESMIL: a batch of one-event histories has
    identical interests, nothing to reweight); under DDP each rank takes its share. Before the epoch the
    model's ``epoch_start`` hook sees every window once (by length); each batch gets its sampled negatives
    (``loss = bce``) and its rows' same-target partners (``target_partners`` models) on the way.
    """

    def __init__(self, config, dataset: PreparedDataset, collator: Collator, model, rows: SampleTable,
                 windowed: bool = True, bucketed: bool = True, dist_ctx: Distributed | None = None) -> None:
        self.config, self.dataset, self.collator, self.model = config, dataset, collator, model
        self.objective = model_loss
        self.prefixes = windowed and config.samples == "prefixes"
        self.one_target_per_row = self.prefixes or not windowed  # else a window trains each of its real positions
        if not windowed:
            self.windows = rows
        elif self.prefixes:
            self.windows = training_prefixes(rows, dataset.offsets, dataset.event_items)
        else:
            self.windows = training_windows(rows, dataset.offsets, dataset.event_items, config.max_length)
        self.window_lengths = np.minimum(self.windows.end, config.max_length)  # targets per window (batches by length)
        self.windows_by_length = length_order(self.windows, config.max_length)
        self.bucketed = bucketed
        self.dist_ctx = dist_ctx if dist_ctx is not None and dist_ctx.enabled else None  # None: one process
        self.index = negative_index(dataset, rows) if model.config.batch_needs().get("with_negatives", False) else None

    def batches(self, epoch: int) -> EpochBatches:
        """The epoch's batches (after its seeding): rows shuffled with ``(seed, epoch)``, then by length."""
        config = self.config
        shuffle = np.random.default_rng([config.seed, epoch])
        order = shuffle.permutation(len(self.windows))
        if self.bucketed:
            order = length_bucketed_order(order, self.window_lengths, config.batch_size, shuffle)
        if self.dist_ctx is not None:  # each rank trains its share of every epoch's windows
            order = self.dist_ctx.shard(order, equal=True)
        negative_rng = np.random.default_rng([config.seed, epoch, 1]) if self.index is not None else None
        partners = target_partners(self.windows.target, np.random.default_rng([config.seed, epoch, 2])) \
            if self.model.target_partners else None
        self.model.epoch_start(lambda: self.batches_of(self.windows_by_length), epoch)
        return EpochBatches(order.shape[0], self.batches_of(order, partners, negative_rng))

    def batches_of(self, order: np.ndarray, partners: np.ndarray | None = None,
                   negative_rng: np.random.Generator | None = None):
        """The batches of the windows in ``order``, with their partners' histories and their negatives."""
        windows, collator = self.windows, self.collator
        batches = iterate_batches(collator, windows, self.config.batch_size, order)
        partner_batches = iterate_batches(collator, windows, self.config.batch_size, partners[order]) \
            if partners is not None else None  # ICSRec: each row's same-target partner row, collated alike
        for batch in batches:
            batch.last_target_only = self.prefixes
            if partner_batches is not None:
                partner = next(partner_batches)
                batch.partner_items, batch.partner_mask = partner.history_items, partner.history_mask
            if negative_rng is not None:
                add_negatives(batch, self.dataset, self.index, negative_rng)
            yield batch

    def targets(self, batch: Batch) -> int | torch.Tensor:
        return len(batch) if self.one_target_per_row else batch.lengths.sum()


def _trainer(config, dataset: PreparedDataset, collator: Collator, model_config: dict, rows, windowed: bool = True,
             dist_ctx: Distributed | None = None):
    """Build the model (seeded) and return it with ``epoch_of(model, optimizer, epoch)``, which trains
    one epoch of the :class:`RetrievalTask` of ``rows`` (:func:`lifelong.train.epoch.train_epoch`) and
    returns its :class:`lifelong.train.epoch.EpochResult`; with ``desmil`` the step is DESMIL's
    (:class:`lifelong.train.desmil.DesmilStep`), whose ``extra`` holds the batch-mean HSIC of the interests
    under uniform weights (``train_hsic_uniform``) and under the learned weights (``train_hsic_weighted``)."""
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    if windowed and config.samples == "prefixes" and not model.last_target_loss:
        raise ValueError(f"--samples prefixes trains the loss of each row's last position only; {config.model}'s "
                         f"training loss does not follow Batch.last_target_only")
    model.set_item_categories(torch.from_numpy(item_categories(dataset, model_config["n_items"])))
    model.to(collator.device)  # after the buffers above are set
    ddp = dist_ctx is not None and dist_ctx.enabled
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if ddp else model
    step = PlainStep()
    if config.desmil:
        if not model.multi_interest or model.config.interests < 2 or model.trains_one_vector:
            raise ValueError(f"--desmil reweights samples against the dependence of several interests; {config.model} "
                             f"does not train several")
        step = DesmilStep(SampleWeighting(seed=config.seed), config.seed)
    task = RetrievalTask(config, dataset, collator, model, rows, windowed=windowed, bucketed=not config.desmil,
                         dist_ctx=dist_ctx)
    autocast = training_autocast(config.precision, collator.device)

    def epoch_of(model, optimizer, epoch: int):
        trainer = Trainer(model, optimizer, task.objective, autocast, config.clip_norm, net)
        return train_epoch(config, task, trainer, step, epoch, dist_ctx)

    return model, epoch_of


def refit_with_valid(config, dataset: PreparedDataset, collator: Collator, model_config: dict, epochs: int,
                     chunk: int, beyond: dict) -> tuple[dict, int]:
    """uSASRec's final fit, a documented variant of P2 (never used for selection): a fresh model with
    the same seed, trained for the selected number of ``epochs`` on every prefix of ``i1..i(n-1)`` (the
    validation item is now a training target), then ranked on test exactly as the P2 model. Returns its
    test metrics and the epochs trained."""
    model, epoch_of = _trainer(config, dataset, collator, model_config, dataset.samples("valid"))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for epoch in range(1, epochs + 1):
        trained = epoch_of(model, optimizer, epoch)
        _log(config, f"refit epoch {epoch}/{epochs}: train loss {trained.loss_sum / max(trained.seen, 1):.4f}")
    return evaluate_ranking(model, collator, dataset.samples("test"), chunk, beyond=beyond), epochs


def training_user_rows(dataset: PreparedDataset, train: SampleTable) -> SampleTable:
    """One row per training user: its last training position (history = its most recent L training
    events before the last; target = its last event)."""
    last = np.flatnonzero(np.r_[train.user[1:] != train.user[:-1], True]) if len(train) else np.zeros(0, np.int64)
    return train.subset(last)


def prepare_retrieval(model, dataset: PreparedDataset, collator: Collator, chunk: int) -> None:
    """Call the model's ``prepare_retrieval(user_batches)`` hook (a no-op for most) with one row per
    training user (its most recent L training events), in eval mode."""
    users = training_user_rows(dataset, dataset.samples("train"))
    order = length_order(users, collator.max_length)
    model.eval()
    model.prepare_retrieval(lambda: iterate_batches(collator, users, chunk, order))


def evaluate_mi(model, config, dataset: PreparedDataset, samples: SampleTable, keep_tops: bool = False,
                index: dict | None = None):
    """The P3 test report of a trained model: set metrics at 20 / 50, interest redundancy, category
    diversity of the lists and (models with several interests) the interests' HSIC. With ``index``
    (``{"kind": "exact" | "ivf" | "hnsw", **params}``) the lists come from a faiss index over the item
    vectors (:mod:`lifelong.index`), and ``index_overlap@K`` is the share of the exact lists it returns."""
    collator = Collator(dataset, config.max_length, device=next(model.parameters()).device)
    interests = model.config.interests if model.multi_interest else 1
    chunk = eval_chunk(config, int(model.item_vectors().shape[0]), interests)
    prepare_retrieval(model, dataset, collator, chunk)
    if index is None:
        metrics, tops = evaluate_sets(model, collator, samples, chunk, keep_tops=True, details=True)
    else:
        from lifelong.index import ItemIndex

        if getattr(model.config, "diversity", 0) > 0:
            raise ValueError("--index merges the per-interest lists by score; ComiRec's aggregation (diversity > 0) "
                             "runs on the exact lists only")

        params = {k: v for k, v in index.items() if k != "kind"}
        built = ItemIndex.build(model.item_vectors().detach(), index["kind"], threads=config.threads, **params)
        exact = retrieve_lists(model, collator, samples, chunk)  # the lists only: the overlap's reference
        metrics, tops = evaluate_sets(model, collator, samples, chunk, keep_tops=True, details=True, index=built)
        for k in exact:
            found = [len(set(a.tolist()) & set(b.tolist()) - {-1}) / max(1, len(set(a.tolist()) - {-1}))
                     for a, b in zip(exact[k], tops[k])]
            metrics[f"index_overlap@{k}"] = float(np.mean(found))
        metrics["index"] = index["kind"]
    if model.single_query is not None:  # kNN-Embed: the same model's single-embedding query at the same K
        with model.single_query():
            single = evaluate_sets(model, collator, samples, chunk, details=True)
        metrics.update({f"single_{k}": v for k, v in single.items() if k != "n"})
    if model.multi_interest and model.config.interests > 1:
        metrics["interest_hsic"] = interest_hsic_of(model, collator, samples, chunk, seed=config.seed)
    return (metrics, tops) if keep_tops else metrics


def train_mi(config, dataset: PreparedDataset, *, resume: bool = False, command: str | None = None,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """P3 ``mi-split``: train on every next-item position of the training users, select the epoch with
    the best validation Recall@50, retrieve the test users' top 20 / 50 (see the module docstring)."""
    run = Path(config.out)
    if config.refit_with_valid:
        raise ValueError("--refit-with-valid is a P2 option (the held-out users of P3 never train)")
    model_config = model_config_for(config, dataset)
    collator = Collator(dataset, config.max_length, device=resolve_device(config.device))
    train = dataset.samples("train")
    valid_samples, test = dataset.samples("valid"), dataset.samples("test")
    chunk = eval_chunk(config, model_config["n_items"], model_config.get("interests", 1))
    if MODELS[config.model][1].multi_interest:
        model, epoch_of = _trainer(config, dataset, collator, model_config, train, windowed=False)
    else:  # a sequence model (SASRec...) trains every position of its window: each target once per epoch
        model, epoch_of = _trainer(config, dataset, collator, model_config, training_user_rows(dataset, train))

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = start_run(config, dataset, model_config, model, optimizer, "best_score", resume, command)

    def validate() -> dict:  # kNN-Embed-like models refit their retrieval state from the current weights first
        prepare_retrieval(model, dataset, collator, chunk)
        return evaluate_sets(model, collator, valid_samples, chunk)

    records = train_epochs(config, state, model, model_config, optimizer, epoch_of, validate, P3_SELECTION,
                           on_epoch_end)
    started = time.perf_counter()
    test_metrics, tops = evaluate_mi(model, config, dataset, test, keep_tops=True)
    results = {
        "task": "retrieval",
        "protocol": "mi-split",
        "user_order": dataset.manifest.get("protocol", {}).get("user_order", "random"),
        "loss": model_config.get("loss"),
        "desmil": bool(config.desmil),
        "select": SELECT_METRIC_P3,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_samples_per_s": median_speed(records, P3_SELECTION.speed_key),
        "valid": state["best_valid"],
        "test": test_metrics,
        "test_seconds": time.perf_counter() - started,
    }
    if config.desmil:  # DESMIL's reweighting during training: batch HSIC with uniform vs learned weights
        results["train_hsic_uniform"] = float(np.mean([r["train_hsic_uniform"] for r in records]))
        results["train_hsic_weighted"] = float(np.mean([r["train_hsic_weighted"] for r in records]))
    if config.save_predictions:
        np.savez_compressed(run / "test_top50.npz", user=test.user, top=tops[max(tops)])
    (run / "results.json").write_text(json.dumps(results, indent=2))
    if config.results_csv:
        append_retrieval_line(Path(config.results_csv), config, dataset, model_config, results, run, command)
    return results


HSIC_USERS = 2048  # held-out users whose interests measure the HSIC (the RFF estimate is per batch)


@torch.no_grad()
def interest_hsic_of(model, collator: Collator, samples: SampleTable, chunk: int, seed: int) -> float:
    """HSIC between a trained model's interest vectors (summed over interest pairs, random Fourier
    features, uniform weights) on up to ``HSIC_USERS`` rows of ``samples`` drawn with the seed:
    DESMIL's measure of how dependent the interests are."""
    model.eval()
    rows = np.random.default_rng([seed, 7]).permutation(len(samples))[:HSIC_USERS]
    vectors, valid = [], []
    for begin in range(0, rows.shape[0], chunk):
        v, m = model.interests(collator(samples.subset(np.sort(rows[begin : begin + chunk]))))
        vectors.append(v)
        valid.append(m)
    return float(interest_hsic(torch.cat(vectors), torch.cat(valid), generator=torch.Generator().manual_seed(seed)))
