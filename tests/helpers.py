"""Shared test helpers: random batches and hand-built logs."""

from __future__ import annotations

import os
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under the real datasets (../shared/data beside the checkout). Missing: the test is skipped
    on a developer's machine, and FAILS under CI=true naming the path, so a CI run never passes by
    skipping its real-data checks."""
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    message = f"real data missing: {path} (the real datasets are read from ../shared/data beside the checkout)"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message + "; under CI=true a missing dataset is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def benchmark_module(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module (its functions, not its ``main``)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_batch(batch_size: int = 6, width: int = 7, n_items: int = 30, n_cates: int = 8,
                 n_behaviors: int = 4, seed: int = 0) -> Batch:
    """A valid batch with varied history lengths (at least one full, one of length 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch_size,), generator=g)
    lengths[0] = width
    lengths[-1] = 1
    mask = torch.arange(width)[None, :] < lengths[:, None]
    items = torch.randint(2, n_items, (batch_size, width), generator=g) * mask
    cates = torch.randint(2, n_cates, (batch_size, width), generator=g) * mask
    behaviors = torch.randint(2, max(n_behaviors, 3), (batch_size, width), generator=g) * mask
    timestamps = torch.cumsum(torch.randint(1, 1000, (batch_size, width), generator=g), dim=1) * mask
    negative_items = torch.randint(2, n_items, (batch_size, width), generator=g) * mask
    negative_cates = torch.randint(2, n_cates, (batch_size, width), generator=g) * mask
    return Batch(
        history_items=items, history_cates=cates, history_mask=mask,
        target_items=torch.randint(2, n_items, (batch_size,), generator=g),
        target_cates=torch.randint(2, n_cates, (batch_size,), generator=g),
        labels=(torch.arange(batch_size) % 2).float(),
        users=torch.arange(batch_size),
        history_behaviors=behaviors, history_timestamps=timestamps,
        timestamps=timestamps.max(dim=1).values + 10,
        history_negative_items=negative_items, history_negative_cates=negative_cates,
    )


def select(batch: Batch, index: torch.Tensor, width: int | None = None) -> Batch:
    """Rows ``index`` of a batch, its history cut or zero-padded to ``width``."""
    out = {}
    for name, value in vars(batch).items():
        if not isinstance(value, torch.Tensor):  # None, or a flag such as last_target_only
            out[name] = value
            continue
        value = value[index]
        if value.dim() == 2 and width is not None:
            if width <= value.shape[1]:
                value = value[:, :width]
            else:
                pad = torch.zeros(value.shape[0], width - value.shape[1], dtype=value.dtype)
                value = torch.cat([value, pad], dim=1)
        out[name] = value
    return Batch(**out)


def random_candidates(batch: Batch, k: int = 5, n_items: int = 30, n_cates: int = 8, seed: int = 0) -> Candidates:
    """K random candidates per user of ``batch`` (never padding), scored at the batch's sample times."""
    g = torch.Generator().manual_seed(seed)
    return Candidates(items=torch.randint(2, n_items, (len(batch), k), generator=g),
                      cates=torch.randint(2, n_cates, (len(batch), k), generator=g), timestamps=batch.timestamps)


def select_candidates(candidates: Candidates, rows: torch.Tensor) -> Candidates:
    """The candidates of users ``rows``."""
    return Candidates(candidates.items[rows], candidates.cates[rows],
                      None if candidates.timestamps is None else candidates.timestamps[rows])


def repeating_batch(users: int = 5, length: int = 120, pool: int = 6, seed: int = 30) -> Batch:
    """Histories that repeat a few items (as lifelong ones do), of different lengths (padding), with
    event contexts and times whose gaps span minutes to weeks (many log2-minute buckets); ids fit
    model_configs.TINY_VOCAB."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, pool + 1, (users, length), generator=g) * 3 + 1
    lengths = torch.tensor([length, length - 7, 40, 3, length - 1][:users])
    mask = torch.arange(length)[None, :] < lengths[:, None]
    cates = (items % 5 + 2) * mask
    behaviors = torch.randint(2, 4, (users, length), generator=g) * mask
    steps = torch.exp(torch.rand(users, length, generator=g) * 9).long()  # 1 s .. 2 hours apart
    timestamps = torch.cumsum(steps, dim=1) * mask
    return Batch(history_items=items * mask, history_cates=cates, history_mask=mask,
                 target_items=torch.randint(2, 20, (users,), generator=g),
                 target_cates=torch.randint(2, 6, (users,), generator=g), labels=torch.zeros(users),
                 users=torch.arange(users), history_behaviors=behaviors, history_timestamps=timestamps,
                 timestamps=timestamps.max(dim=1).values + 60)


def many_keys_batch(length: int = 300) -> Batch:
    """:func:`repeating_batch` over every item of model_configs.TINY_VOCAB: about 28 distinct events per user."""
    batch = repeating_batch(length=length)
    mask = batch.history_mask
    items = torch.randint(2, 30, mask.shape, generator=torch.Generator().manual_seed(33))
    batch.history_items, batch.history_cates = items * mask, (items % 5 + 2) * mask
    return batch


def assert_candidates_score_as_forward_passes(model, batch: Batch, k: int = 5, seed: int = 0) -> torch.Tensor:
    """A ranking model in eval mode: K candidates scored against one encoded state (without gradients, as
    serving does) equal K forward passes with each candidate as the batch's target, and a user's
    candidates get different scores. Returns the (B, K) scores."""
    candidates = random_candidates(batch, k, seed=seed)
    with torch.no_grad():
        scores = model.score(model.encode_user(batch), candidates)  # (B, K)
    assert scores.shape == (len(batch), k)
    expected = torch.stack([model(dataclasses.replace(batch, target_items=candidates.items[:, j],
                                                      target_cates=candidates.cates[:, j])).logits
                            for j in range(k)], dim=1)  # (B, K), one forward pass per candidate
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert bool((scores.std(dim=1) > 1e-4).all()), "a user's candidates get (nearly) equal scores"
    return scores


def event_frame(rows: list[tuple], with_behavior: bool = False) -> pl.DataFrame:
    """Events from (user, item, timestamp[, behavior]) tuples, in the reader's schema."""
    columns = {
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": [r[2] for r in rows],
        "row": list(range(len(rows))),
    }
    if with_behavior:
        columns["behavior"] = [r[3] for r in rows]
    return pl.DataFrame(columns).cast({"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "row": pl.Int64})


def random_log(n_users: int = 40, n_items: int = 60, n_cates: int = 6, max_events: int = 15,
               seed: int = 0, with_behavior: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A small random log (with repeated timestamps) and its item table."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        t = 1_600_000_000 + int(rng.integers(0, 10_000))
        for _ in range(int(rng.integers(4, max_events + 1))):
            t += int(rng.integers(0, 3)) * 3600  # gap 0 makes ties
            rows.append((user, int(rng.integers(1, n_items + 1)), t, str(rng.choice(["pv", "cart", "buy"]))))
    events = event_frame(rows, with_behavior)
    items = pl.DataFrame({"item_id": list(range(1, n_items + 1)),
                          "category": [f"c{i % n_cates}" for i in range(1, n_items + 1)]}).cast({"item_id": pl.Int64})
    return events, items


def assert_later_items_do_not_change_earlier_outputs(sequence, batch: Batch, cut: int = 4) -> None:
    """``sequence(batch)`` -> (B, T, D) per-position outputs: positions < ``cut`` must not change when the
    items from ``cut`` on change (and later positions must)."""
    before = sequence(batch)
    changed = batch.history_items.clone()
    tail = changed[:, cut:]
    changed[:, cut:] = torch.randint(2, 30, tail.shape, generator=torch.Generator().manual_seed(4)) * batch.history_mask[:, cut:]
    batch.history_items = changed
    after = sequence(batch)
    torch.testing.assert_close(after[:, :cut], before[:, :cut])
    assert not torch.allclose(after[:, cut:], before[:, cut:])


def overfit_losses(model, batch: Batch, steps: int = 60, lr: float = 1e-2) -> list[float]:
    """Train a retrieval model on one batch (torch's RNG and the random streams reseeded per step, for
    dropout, sampled negatives and augmentations) and return the loss of every step."""
    from lifelong.streams import STREAMS

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)
        STREAMS.reset(step)
        value = model(batch).loss
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses


class Interrupt(Exception):
    """Raised from ``on_epoch_end`` to stop a run as a crash would."""


def interrupt_after_first_epoch(config) -> None:
    """Start ``lifelong.train.train(config)`` and stop it when its first epoch has ended (checkpoint
    written), so that the test can resume it."""
    import pytest

    from lifelong.train import train

    def stop(epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, on_epoch_end=stop)
