"""Search and exact stages of the long-history models (SIM, ETA, TWIN; SDIM shares the head).

The lifelong models of docs/design.md are built in two stages:

- a **search unit** (GSU) scores every history event against the candidate cheaply and keeps the top
  ``k`` (:func:`top_k_events`); what it scores with (a category match, a Hamming distance, an inner
  product of pre-projected keys) is each model's own;
- an **exact unit** (ESU, :class:`ExactAttention`): multi-head target attention over the retrieved
  events, with a time-gap embedding where the paper has one (SIM concatenates it to each event, TWIN
  adds the cross features as a scalar bias per head);
- the **head** (:class:`LifelongHead`), the papers' overall shape: a DIN over the last ``short_length``
  events, the long-term interest, the target and the user features go into one MLP.

The search is not differentiable: it runs under ``no_grad`` on keys the user side computes once
(:func:`embed_in_chunks`, so the whole history is never embedded at once), and only the retrieved
events are embedded with gradients (:func:`embed_events` on the ids :func:`gather_events` picks). With
``k`` at least the history length, the retrieved set is the whole history and the two stages equal
full target attention (tested).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.nn.layers import MLP, TargetAttention

NEGATIVE = -1e30  # the search score of a padding event: below every real one, finite (no inf * 0)


def gather_events(values: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """The values of history events ``index`` of each user.

    Args:
        values: (B, T, ...) per-event values (ids, timestamps, side features), or None.
        index: (B, K, n) positions in ``[0, T)``.

    Returns:
        (B, K, n, ...) values, or None.

    Example:
        >>> gather_events(torch.tensor([[10, 11, 12]]), torch.tensor([[[2, 0]]]))
        tensor([[[12, 10]]])
    """
    if values is None:
        return None
    b, t = values.shape[:2]
    if not values.is_contiguous():
        return values[torch.arange(b, device=index.device).view(b, *[1] * (index.dim() - 1)), index]
    flat = index.reshape(b, -1) + torch.arange(b, device=index.device).view(b, 1) * t  # rows of (B T, ...)
    return values.reshape(b * t, *values.shape[2:]).index_select(0, flat.view(-1)).view(*index.shape, *values.shape[2:])


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` of a 1-D tensor, shaped like ``index`` (an ``index_select``: on the CPU several times
    faster than indexing with a tensor, which the searches do on every read event)."""
    return values.index_select(0, index.reshape(-1)).view(index.shape)


def put(table: torch.Tensor, row: torch.Tensor, slot: torch.Tensor, values: torch.Tensor) -> None:
    """``table[row, slot] = values`` of a contiguous 2-D ``table``, in place (an ``index_copy_``, see :func:`take`)."""
    table.view(-1).index_copy_(0, row * table.shape[1] + slot, values)


def last_events(mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the last ``n`` real events of left-aligned histories, oldest first.

    Args:
        mask: (B, T) bool, True at real events (left-aligned).
        n: how many to keep.

    Returns:
        index (B, S) and its mask (B, S), ``S = min(n, T)``; the real ones left-aligned.

    Example:
        >>> index, keep = last_events(torch.tensor([[True, True, True, False], [True, False, False, False]]), 2)
        >>> index.tolist(), keep.tolist()
        ([[1, 2], [0, 1]], [[True, True], [True, False]])
    """
    width = min(n, mask.shape[1])
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    start = (lengths - width).clamp(min=0)
    index = start + torch.arange(width, device=mask.device)  # (B, S)
    keep = torch.arange(width, device=mask.device) < lengths.clamp(max=width)
    return index.clamp(max=mask.shape[1] - 1), keep


def top_k_events(scores: torch.Tensor, k: int, ties: bool = True) -> torch.Tensor:
    """The search stage's selection: the ``k`` highest-scoring events per (user, candidate).

    Scores of padding must be :data:`NEGATIVE` (or lower); a selected padding event is masked by the
    caller (``gather_events(mask, index)``). Ties are broken towards the most recent event, so the
    selected set does not depend on the padding of the batch: a tie straddling the cut (the ``k``-th
    and ``(k + 1)``-th scores equal, found for free by asking ``topk`` for one more) sends that row to a
    stable sort. ``ties=False`` skips the check when the scores are known to be distinct (ETA's keys).

    Args:
        scores: (B, K, T) search scores.
        k: how many to keep.
        ties: resolve ties at the cut deterministically.

    Returns:
        (B, K, min(k, T)) int64 positions, in no particular order.

    Example:
        >>> top_k_events(torch.tensor([[[0.1, 0.9, 0.9, 0.3]]]), 2).sort(dim=-1).values.tolist()
        [[[1, 2]]]
        >>> top_k_events(torch.tensor([[[0.5, 0.5, 0.5, 0.1]]]), 2).sort(dim=-1).values.tolist()  # the most recent
        [[[1, 2]]]
    """
    t = scores.shape[-1]
    if k >= t:
        return torch.arange(t, device=scores.device).expand(*scores.shape[:-1], t)
    if not ties:
        return torch.topk(scores, k, dim=-1, sorted=False).indices
    values, index = torch.topk(scores, k + 1, dim=-1)  # sorted: the cut is between k - 1 and k
    index = index[..., :k]
    tied = (values[..., k - 1] == values[..., k]) & (values[..., k - 1] > NEGATIVE)  # (B, K)
    if bool(tied.any()):  # rows whose cut splits equal scores: above the cut, then the most recent at it
        rows = tied.nonzero(as_tuple=True)
        row_scores, cut = scores[rows], values[rows][:, k - 1 : k]  # (R, T), (R, 1)
        above = row_scores > cut
        at = row_scores == cut
        wanted = k - above.sum(dim=1, keepdim=True)  # (R, 1) how many of the tied ones
        from_end = at.flip(-1).cumsum(dim=-1).flip(-1)  # (R, T) tied ones at or after each position
        keep = above | (at & (from_end <= wanted))  # exactly k per row
        index = index.index_put(rows, keep.nonzero(as_tuple=True)[1].view(-1, k))
    return index


@dataclass
class DistinctKeys:
    """A history grouped by search key (:func:`distinct_keys`).

    Attributes:
        first: (B, D) the position of each distinct key's most recent event, -1 at padding (users with
            fewer than D keys).
        start, count: (B, D) where the key's events begin in ``positions`` and how many it has (0 at padding).
        positions: (P,) the history positions of every kept event, grouped by (user, key), the most recent
            first within a key (a key keeps at most ``cap`` events).
        slots: (B, T) each real event's key (its column of ``first``; 0 at padding), or None.
    """

    first: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> DistinctKeys:
        """The rows of users ``index``, their events copied out (``positions`` stays grouped by row)."""
        count = self.count[index]  # (b, D)
        listed = self.listed(self.start[index], count)
        start = (torch.cumsum(count.flatten(), 0) - count.flatten()).view_as(count)
        return DistinctKeys(self.first[index], start, count, self.positions[listed],
                            None if self.slots is None else self.slots[index])

    @staticmethod
    def concat(parts: list[DistinctKeys]) -> DistinctKeys:
        """The users of ``parts`` (same history length ``T``) in one, in order: each part's keys padded to
        the most keys of any (``first`` -1, no events), its ``start`` moved past the events before it."""
        d = max(part.first.shape[1] for part in parts)
        shift = itertools.accumulate([part.positions.numel() for part in parts[:-1]], initial=0)
        pad = lambda x, value: torch.nn.functional.pad(x, (0, d - x.shape[1]), value=value)  # noqa: E731
        slots = None if any(part.slots is None for part in parts) else torch.cat([part.slots for part in parts])
        return DistinctKeys(torch.cat([pad(part.first, -1) for part in parts]),
                            torch.cat([pad(part.start + offset, 0) for part, offset in zip(parts, shift)]),
                            torch.cat([pad(part.count, 0) for part in parts]),
                            torch.cat([part.positions for part in parts]), slots)

    @staticmethod
    def listed(start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(E,) the indices into ``positions`` of keys with ``start``, ``count`` (any shape), in order."""
        count = count.flatten()
        segment = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
        return take(start.flatten(), segment) + torch.arange(segment.numel(), device=count.device) \
            - take(torch.cumsum(count, 0) - count, segment)

    def segments(self) -> torch.Tensor:
        """(P,) ``user * D + slot`` of every event of ``positions`` (they are listed in that order)."""
        count = self.count.flatten()
        return torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)

    def to(self, device: torch.device | str) -> DistinctKeys:
        return DistinctKeys(*(None if value is None else value.to(device)
                              for value in (self.first, self.start, self.count, self.positions, self.slots)))


def distinct_keys(ids: torch.Tensor, mask: torch.Tensor, cap: int) -> DistinctKeys | None:
    """Groups a history by search key: events with the same key (the same item, category and context)
    get the same search score up to a per-event term (their position), so a search can score each
    distinct key once instead of every event (:func:`top_k_distinct`). Lifelong histories repeat items:
    a user of the lifelong synthetic log with 100,000 events has about 5,600 distinct ones.

    Args:
        ids: (B, T) int64 key of every event (equal keys: equal search features).
        mask: (B, T) bool, True at real events.
        cap: how many of a key's events to keep (the search's ``k``: no key contributes more).

    Returns:
        :class:`DistinctKeys`, or None when the composite sort key would overflow int64.

    Example:
        >>> keys = distinct_keys(torch.tensor([[7, 8, 7, 7, 0]]), torch.tensor([[1, 1, 1, 1, 0]]).bool(), 2)
        >>> keys.first.tolist(), keys.count.tolist(), keys.positions[keys.start[0, 0]:][:2].tolist()
        ([[3, 1]], [[2, 1]], [3, 2])
    """
    b, t = ids.shape
    compact = torch.unique(torch.where(mask, ids, -1), return_inverse=True)[1]  # (B, T) in [0, U)
    n_codes = int(compact.max()) + 1 if compact.numel() else 1
    if b * n_codes * max(t, 1) >= 2 ** 62:
        return None
    user = torch.arange(b, device=ids.device).unsqueeze(1)
    group = user * n_codes + compact  # (B, T) one code per (user, key)
    positions = torch.arange(t, device=ids.device).expand(b, t)
    order = torch.argsort((group * t + (t - 1 - positions)).flatten())  # by (user, key), the most recent first
    group_sorted = group.flatten()[order]
    real = mask.flatten()[order]
    starts = torch.ones_like(group_sorted, dtype=torch.bool)
    starts[1:] = group_sorted[1:] != group_sorted[:-1]
    run = torch.cumsum(starts, 0) - 1  # (B T,) the run (one (user, key)) of each sorted event
    run_start = torch.nonzero(starts).squeeze(1)  # (R,)
    rank = torch.arange(order.numel(), device=ids.device) - run_start[run]  # 0 = the key's most recent event
    run_user = group_sorted[run_start] // n_codes  # (R,)
    run_real = real[run_start]
    counts = torch.bincount(run_user[run_real], minlength=b)  # distinct keys per user
    d = max(int(counts.max()) if counts.numel() else 0, 1)
    slot = torch.cumsum(run_real.long(), 0) - 1 - torch.cumsum(torch.cat([counts.new_zeros(1), counts[:-1]]), 0)[run_user]
    keep = real & (rank < cap)  # the kept events, still grouped by run
    kept_index = torch.cumsum(keep.long(), 0) - 1  # their index in ``positions``
    run_length = torch.bincount(run[keep], minlength=run_start.numel())  # kept events per run
    first = torch.full((b, d), -1, dtype=torch.long, device=ids.device)
    start = torch.zeros((b, d), dtype=torch.long, device=ids.device)
    count = torch.zeros((b, d), dtype=torch.long, device=ids.device)
    users, slots = run_user[run_real], slot[run_real]
    first[users, slots] = order[run_start[run_real]] % max(t, 1)
    start[users, slots] = kept_index[run_start[run_real]]
    count[users, slots] = run_length[run_real]
    event_slots = torch.zeros(b * t, dtype=torch.long, device=ids.device)
    event_slots[order] = torch.where(real, slot[run], 0)  # each event's key
    return DistinctKeys(first, start, count, order[keep] % max(t, 1), event_slots.view(b, t))


def ordered(scores: torch.Tensor, positions: torch.Tensor, t: int, integral: bool = False) -> torch.Tensor:
    """Float64 keys that order events by float32 ``scores``, ties to the most recent ``positions`` (in
    ``[0, t)``); -inf stays -inf.

    Each score plus a fraction of its gap to the next float32, growing with the position (exact: float64
    has 29 bits below a float32's last one). ``integral`` (the scores are integers, as ETA's): ``score
    (t + 1) + position``, exact while that stays below 2**53.

    Example:
        >>> keys = ordered(torch.tensor([1.0, 1.0, 0.5]), torch.tensor([3, 7, 9]), t=10)
        >>> torch.argsort(keys, descending=True).tolist()
        [1, 0, 2]
    """
    if integral:
        return scores.double().mul_(t + 1).add_(positions)
    gap = (torch.nextafter(scores, torch.full_like(scores, float("inf"))) - scores).double()
    keys = scores.double() + gap * ((positions.double() + 1) / (t + 1))
    return keys.masked_fill(torch.isinf(scores), float("-inf"))


def best_keys(scores: torch.Tensor, positions: torch.Tensor, t: int, n: int, integral: bool = False) -> torch.Tensor:
    """(B, K, n) the ``n`` best keys of each row by (score, position), best first: :func:`ordered`'s order.

    A full ``topk`` over many keys costs more than the search's product, so with at least ``8 n`` keys the
    rows are first cut to the keys at or above a bound that ``n`` keys reach: the ``n``-th highest of the
    maxima of ``4 n`` blocks (``n`` blocks hold a key at or above it). The keys above the cut (a few times
    ``n`` on search scores, ties at the cut included) are then ordered exactly.

    Args:
        scores: (B, K, D) float32 each key's score, -inf for absent keys.
        positions: (B, D) each key's position (ties go to the highest).
        t: the history length (positions are in ``[0, t)``).
        n: keys to keep (at most D).
        integral: the scores are integers (see :func:`ordered`).
    """
    b, kk, d = scores.shape
    if d < 8 * n:
        return torch.topk(ordered(scores, positions.view(b, 1, d), t, integral), n, dim=-1).indices
    blocks = 4 * n
    width = d // blocks
    maxima = scores[..., : blocks * width].reshape(b, kk, width, blocks).amax(dim=-2)  # block j: keys j mod blocks
    bound = torch.topk(maxima, n, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # n keys reach it
    flat = (scores >= bound).view(-1).nonzero().squeeze(1)  # (N,) the keys above the cut, row by row
    row, column = flat // d, flat % d
    per_row = torch.bincount(row, minlength=b * kk)
    slot = torch.arange(flat.numel(), device=scores.device) - take(torch.cumsum(per_row, 0) - per_row, row)
    table = torch.full((b * kk, int(per_row.max())), float("-inf"), dtype=torch.float64, device=scores.device)
    put(table, row, slot, ordered(take(scores.reshape(-1), flat), take(positions.reshape(-1), row // kk * d + column),
                                  t, integral))
    where = torch.zeros(table.shape, dtype=torch.long, device=scores.device)
    put(where, row, slot, column)
    return where.gather(-1, torch.topk(table, n, dim=-1).indices).view(b, kk, n)


def top_k_distinct(base: torch.Tensor, offsets: torch.Tensor | None, keys: DistinctKeys, t: int,
                   k: int, integral: bool = False,
                   levels: Levels | None = None,
                   first_keys: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` events of a search whose event score is its key's score plus a per-event term
    (``base(key) + offset(event)``, ties to the most recent event), from the distinct keys
    (:func:`distinct_keys`): the same selection as scoring every event.

    Each key lists its events best first (``offsets`` non-increasing, ties the most recent first), so a
    key's best event is its first and its worst its last. The keys are ranked by their best event
    (:func:`best_keys`); only the ``k`` best can hold a selected event, and the search reads a prefix of
    each, as short as these bounds allow (ragged: no (K, k, k) table), then takes the top ``k`` of what it
    read:

    - a threshold ``tau`` with at least ``k`` events at or above it (the ``k``-th best key's best event, the
      score where the keys' best events, counted with the events that share their best offset, add up to
      ``k``, or where the keys' worst events, best first, add up to ``k`` events): no event below it is
      selected, so a key is read only down to ``tau`` (its events per offset level, ``levels``);
    - the key ranked ``r``-th (from 0): the ``A`` events of the ``a`` keys whose worst event beats its best,
      and the best event of each of the other keys ranked above it, beat all of its events, so at most
      ``k - A - (r - a)`` of them can be selected.

    With one offset level (ETA: all of a key's events score the same) this reads the keys above the
    ``k``-th event's score whole (fewer than ``k`` events) and, at that score, at most as many as remain,
    the key with the most recent best event first: about ``k`` events per candidate instead of the
    ``k (k + 1) / 2`` of the rank bound alone.

    The selected events usually come from far fewer than ``k`` keys (a lifelong history repeats items), and
    ranking the best keys costs most where there are many. So the search first ranks only the
    ``first_keys`` best keys: where ``k`` of their events score strictly above the last one's best event,
    those are read and hold the top ``k`` (every other key's events score at most that best event); the
    other candidates are searched again over the ``k`` best keys. Same selection either way.

    Args:
        base: (B, K, D) float32 each key's score without the per-event term (ETA: ``T <s_q, s_h>``; TWIN:
            the pre-projected key against the query).
        offsets: (P,) float32 the per-event term of each event of ``keys.positions``; None: none (a key's
            events differ by recency alone, ETA's and SIM soft's).
        keys: :class:`DistinctKeys`; ``first`` holds each key's first listed event.
        t: the history length ``T`` (ties resolve by position).
        k: events to keep.
        integral: the scores are integers (see :func:`ordered`).
        levels: the :class:`Levels` of ``offsets`` (:func:`level_table`: a caller that reuses a listing
            passes them); None: computed from ``offsets``.
        first_keys: keys ranked by the first pass; None: :func:`first_key_count` (about ``k / 3`` with one
            offset level, ``k`` with several); ``k`` or more: one pass over the ``k`` best keys.

    Returns:
        index (B, K, n) positions, ``n = min(k, events read)``, and valid (B, K, n) bool (False where a
        candidate's history holds fewer than ``n`` events: the position is filler).
    """
    b, kk, d = base.shape
    if keys.positions.numel() == 0:  # no event at all (users with no history): filler only
        return base.new_zeros((b, kk, 1), dtype=torch.long), base.new_zeros((b, kk, 1), dtype=torch.bool)
    if offsets is not None and levels is None:
        levels = level_table(*offset_levels(offsets, keys))
    values = base.new_zeros(1) if offsets is None else levels.values  # no per-event term: one offset level, 0
    one_level = values.numel() == 1
    best = base  # each key's best event: its score plus its first event's offset
    if offsets is not None and (not one_level or bool(values[0] != 0)):
        best = base + take(offsets, keys.start.clamp(max=offsets.numel() - 1)).view(b, 1, d)
    if bool((keys.first < 0).any()):
        best = best.masked_fill((keys.first < 0).unsqueeze(1), float("-inf"))
    n_all = min(k, d)
    n_first = min(n_all, first_key_count(k, one_level) if first_keys is None else max(1, first_keys))
    levels = None if one_level else levels
    index, valid, settled = _read_best_keys(base, best, offsets, keys, t, k, integral, values, levels, n_first)
    if n_first < n_all and not bool(settled.all()):  # candidates whose top k may lie beyond the first keys
        again = (~settled).any(dim=0).nonzero().squeeze(1)  # (R,) their columns, for every user
        index_again, valid_again, _ = _read_best_keys(base[:, again], best[:, again], offsets, keys, t, k, integral,
                                                      values, levels, n_all)
        width = max(index.shape[-1], index_again.shape[-1])
        index, valid, index_again, valid_again = (
            torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in (index, valid, index_again, valid_again))
        index[:, again], valid[:, again] = index_again, valid_again
    return index, valid


def first_key_count(k: int, one_level: bool) -> int:
    """Keys :func:`top_k_distinct` ranks in its first pass: about ``k / 3`` with one offset level (ETA, SIM
    soft: a key's events all score alike; on the lifelong synthetic log at 100,000 events and ``k = 100`` the
    top ``k`` came from at most 37 keys in 1,000 candidates, and with the exact stage's change of the same
    commit a request of 200 candidates took 17.9 ms against 21.6 (ETA) and 18.8 against 22.5 (SIM soft), one
    thread, the two alternating, 2026-12-08); ``k`` with several (TWIN's time-gap bias spreads a key's events
    over its levels: with random weights, for 3 of 4 users of that log no candidate settled among the first
    ``2 k / 3`` keys, and a request took about 1.3x as long as with one pass)."""
    return max(1, (k + 2) // 3) if one_level else k


def _read_best_keys(base: torch.Tensor, best: torch.Tensor, offsets: torch.Tensor | None, keys: DistinctKeys,
                    t: int, k: int, integral: bool, values: torch.Tensor, levels: Levels | None,
                    n_keys: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`top_k_distinct`'s search of (B, K) candidates over their ``n_keys`` best keys (``best`` (B, K, D)
    their best events' scores, ``levels`` None with one offset level): index and valid (B, K, n), and
    settled (B, K) bool, True where no other key can hold one of the top ``k`` (``k`` events of the ranked keys
    score strictly above the last one's best event, or no key is left unranked; always with ``min(k, D)``
    keys), whose events alone are read."""
    one_level = levels is None
    b, kk, d = base.shape
    device = base.device
    rows = torch.arange(b, device=device).view(b, 1, 1)
    top = best_keys(best, keys.first.clamp(min=0), t, n_keys, integral)  # (B, K, n_keys) best first
    counts = gather_events(keys.count, top)
    top_best, top_base = best.gather(-1, top), base.gather(-1, top)
    # at least k events score tau or more: the k best keys' best events, ...
    tau = top_best[..., -1] if n_keys == k else torch.full_like(top_best[..., 0], float("-inf"))
    at_best_reach = None
    if not one_level:  # ... the keys' best events, counted with the events that share their best offset, ...
        reach = torch.cumsum(gather_events(levels.at_best, top), dim=-1) >= k  # these keys hold k events at their best
        at_best_reach = reach.any(dim=-1)
        tau = torch.maximum(tau, torch.where(at_best_reach, top_best.gather(
            -1, reach.long().argmax(dim=-1, keepdim=True)).squeeze(-1), float("-inf")))
    # the rank bound needs the keys' worst events in order: with several offset levels that sort is skipped
    # where the keys' best events already reach k (the threshold then leaves about k events to read)
    rank_bound = one_level or not bool(at_best_reach.all())
    if rank_bound:  # the keys' worst events, best first (keys whose worst event beats a key's best rank above it)
        if one_level:
            worst, worst_counts = top_best, counts  # one level: a key's events all score the same
        else:
            worst = (top_base + take(values, gather_events(levels.lowest, top))).masked_fill(top_best == float("-inf"),
                                                                              float("-inf"))
            worst, by_worst = torch.sort(worst, dim=-1, descending=True)
            worst_counts = counts.gather(-1, by_worst)
        held = torch.cumsum(worst_counts, dim=-1)  # (B, K, n_keys) events of the keys at or above each worst
        enough = held >= k  # ... or the keys' worst events, best first, where they add up to k events
        tau = torch.maximum(tau, torch.where(enough.any(dim=-1), worst.gather(
            -1, enough.long().argmax(dim=-1, keepdim=True)).squeeze(-1), float("-inf")))
    first_pass = n_keys < min(k, d)
    if first_pass:  # only events strictly above the last ranked key's best event: no other key's event reaches them
        tau = torch.maximum(tau, torch.nextafter(top_best[..., -1], torch.full_like(tau, float("inf"))))
    # events of each key at or above tau (a prefix of its listing)
    if one_level:
        above_tau = torch.where(top_best >= tau.unsqueeze(-1), counts, 0)
    else:  # the lowest level whose events reach tau, and the events at or above it
        n_levels = values.numel()
        level = torch.searchsorted(values, (tau.unsqueeze(-1) - top_base).contiguous())  # (B, K, n_keys)
        reaches = lambda at: top_base + take(values, at.clamp(0, n_levels - 1)) >= tau.unsqueeze(-1)  # noqa: E731
        while True:  # the events' own float32 sums decide (rounding): down while the level below reaches tau
            lower = (level > 0) & reaches(level - 1)
            if not bool(lower.any()):
                break
            level = level - lower.long()
        level = level + ((level < n_levels) & ~reaches(level)).long()  # up one where this level falls short
        above_tau = take(levels.at_or_above.reshape(-1), (rows * d + top) * (n_levels + 1) + level)
    if rank_bound:
        beaten_by = torch.searchsorted(-worst.contiguous(), -top_best.contiguous())  # keys whose worst beats it
        better = torch.where(beaten_by > 0, held.gather(-1, (beaten_by - 1).clamp(min=0)), 0)
        rank = torch.arange(n_keys, device=device)
        lengths = torch.minimum(above_tau, k - better - (rank - beaten_by)).clamp(min=0)  # events read from each key
    else:  # no key gives more than k
        lengths = above_tau.clamp(max=k)
    # settled: k events lie above the last ranked key's best event (then they are the top k), or every key is ranked
    settled = (above_tau.sum(dim=-1) >= k) | (top_best[..., -1] == float("-inf")) if first_pass else \
        torch.ones_like(tau, dtype=torch.bool)  # (B, K)
    # no event from absent keys, nor for a candidate that is searched again (its threshold may read whole keys)
    lengths = lengths.masked_fill((top_best == float("-inf")) | ~settled.unsqueeze(-1), 0).flatten()  # (B K n_keys,)
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)  # (E,)
    listed = DistinctKeys.listed(gather_events(keys.start, top), lengths)  # (E,) indices into keys.positions
    positions = take(keys.positions, listed)
    scores = take(top_base.flatten(), segment)
    if offsets is not None and (not one_level or bool(values[0] != 0)):
        scores = scores + take(offsets, listed)
    scores = ordered(scores, positions, t, integral)
    row = segment // n_keys  # the (user, candidate) of each read event
    per_row = lengths.view(b * kk, n_keys).sum(dim=1)
    slot = torch.arange(segment.numel(), device=device) - take(torch.cumsum(per_row, 0) - per_row, row)
    width = max(int(per_row.max()) if per_row.numel() else 0, 1)
    table = torch.full((b * kk, width), float("-inf"), dtype=scores.dtype, device=device)
    put(table, row, slot, scores)
    where = torch.zeros((b * kk, width), dtype=torch.long, device=device)
    put(where, row, slot, positions)
    n = min(k, width)
    kept, picked = torch.topk(table, n, dim=-1, sorted=False)
    return where.gather(-1, picked).view(b, kk, n), (kept > float("-inf")).view(b, kk, n), settled.view(b, kk)


@dataclass
class Levels:
    """The offset levels of a listing, and what :func:`top_k_distinct` derives from them per key (they
    depend on the listing alone, so a caller that reuses a listing reuses them: :func:`level_table`).

    Attributes:
        values: (n,) the distinct offsets, ascending.
        counts: (B, D, n) how many events of each key have each.
        lowest: (B, D) each key's lowest level holding an event (its worst events).
        at_best: (B, D) how many of the key's events share its highest offset (its best score).
        at_or_above: (B, D, n + 1) how many of the key's events are at or above each level (0 past the top).
    """

    values: torch.Tensor
    counts: torch.Tensor
    lowest: torch.Tensor
    at_best: torch.Tensor
    at_or_above: torch.Tensor


def level_table(values: torch.Tensor, counts: torch.Tensor) -> Levels:
    """:class:`Levels` from the distinct offsets (n,) ascending and the (B, D, n) events per key and level."""
    n = values.numel()
    occupied = counts > 0
    top_level = n - 1 - occupied.flip(-1).long().argmax(dim=-1, keepdim=True)  # (B, D, 1)
    at_or_above = torch.cat([counts.flip(-1).cumsum(dim=-1).flip(-1), counts[..., :1] * 0], dim=-1)
    return Levels(values, counts, occupied.long().argmax(dim=-1), counts.gather(-1, top_level).squeeze(-1),
                  at_or_above)


def offset_levels(offsets: torch.Tensor, keys: DistinctKeys) -> tuple[torch.Tensor, torch.Tensor]:
    """The offset levels :func:`top_k_distinct` reads keys by: the distinct values of ``offsets`` (n,),
    ascending, and (B, D, n) how many events of each key have each."""
    b, d = keys.first.shape
    if offsets.numel() == 0 or bool((offsets == offsets[0]).all()):
        value = offsets[:1] if offsets.numel() else offsets.new_zeros(1)
        return value, keys.count.unsqueeze(-1)
    values, level = torch.unique(offsets, return_inverse=True)
    n = values.numel()
    counts = torch.bincount(keys.segments() * n + level, minlength=b * d * n).view(b, d, n)
    return values, counts


def embed_events(embedding: nn.Module, items: torch.Tensor, cates: torch.Tensor, behaviors: torch.Tensor | None = None,
                 attrs: torch.Tensor | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
    """History events at any positions S, embedded like :meth:`FeatureEmbedding.history` does.

    Args:
        embedding: a :class:`lifelong.nn.features.FeatureEmbedding`.
        items, cates: S int64.
        behaviors: S int64 event contexts, read when the embedding has the context table.
        attrs: S + (A,) attribute bags, or None.
        dense: S + (D,) content vectors, or None.

    Returns:
        S + (W,) events (0 at padding).
    """
    embedded = embedding.items(items, cates, attrs, dense)
    if embedding.behavior is not None:
        if behaviors is None:
            raise ValueError("this model reads the event context (behavior types) and the batch has none")
        embedded = embedded + embedding.behavior(behaviors)
    return embedded


def embed_in_chunks(embed: Callable[[slice], torch.Tensor], length: int, chunk: int,
                    transposed: bool = False) -> torch.Tensor:
    """``embed`` of the history positions in chunks of ``chunk``, without gradients, written into one
    preallocated tensor: the search keys of a long history, with at most (B, chunk, W) embedded events
    alive at a time.

    Args:
        embed: positions slice -> (B, n, X) keys of those positions.
        length: ``T``.
        chunk: positions per step.
        transposed: return (B, X, T) (the layout of a search's matrix product) instead of (B, T, X).

    Returns:
        (B, T, X), or (B, X, T) when ``transposed``.

    Example:
        >>> table = torch.arange(12.0).view(6, 2)
        >>> embed_in_chunks(lambda part: table[part].unsqueeze(0), 6, chunk=4, transposed=True).shape
        torch.Size([1, 2, 6])
    """
    out = None
    with torch.no_grad():
        for start in range(0, max(length, 1), chunk):
            part = slice(start, min(start + chunk, length))
            keys = embed(part)  # (B, n, X)
            if out is None:
                b, _, x = keys.shape
                out = keys.new_empty((b, x, length) if transposed else (b, length, x))
            if transposed:
                out[:, :, part] = keys.transpose(1, 2)
            else:
                out[:, part] = keys
    return out


class ExactAttention(nn.Module):
    """The exact stage (ESU): multi-head scaled dot-product target attention over the retrieved events.

    Per head ``h``: ``alpha_h = softmax_i(q W^q_h . k_i W^k_h / sqrt(d) + b_h(gap_i))``, the interest is
    ``concat_h sum_i alpha_h,i v_i W^v_h``. The time gap between an event and the scoring time enters
    as the paper has it (``gap``):

    - ``none``: keys and values are the events ``e_i`` (ETA);
    - ``concat``: keys and values are ``[e_i, d_i]`` with ``d_i`` a learned embedding of the gap's
      bucket (SIM's ESU);
    - ``bias``: keys are the events' inherent features ``e_i`` alone, so they can be projected once per
      behavior (:meth:`keys`, TWIN's pre-projection), the gap is a cross feature compressed to a
      learned scalar per head ``b_h(gap_i)`` added to the logits; values are ``[e_i, d_i]`` (TWIN).

    Args:
        dim: event and target width ``W``.
        heads: number of heads; each is ``dim // heads`` wide.
        gap: ``none``, ``concat`` or ``bias``.
        gap_buckets: rows of the gap tables (bucket 0 is padding), unused with ``gap="none"``.
        impl: ``reference`` projects every retrieved event (``k_i W^k``, ``v_i W^v``); ``fused`` (default)
            folds the projections into the query and the pooled values, ``(q W^q W^k^T) . k_i`` and
            ``(sum_i alpha_i v_i) W^v``, so a candidate costs ``O(n H W)`` instead of ``O(n W^2)``. The
            same result (tested).

    Example:
        >>> esu = ExactAttention(8, heads=2, gap="concat", gap_buckets=5)
        >>> target, events = torch.randn(3, 4, 8), torch.randn(3, 4, 6, 8)
        >>> mask, gaps = torch.ones(3, 4, 6, dtype=torch.bool), torch.randint(1, 5, (3, 4, 6))
        >>> esu(target, events, mask, gaps).shape
        torch.Size([3, 4, 8])
    """

    GAPS = ("none", "concat", "bias")

    def __init__(self, dim: int, heads: int = 1, gap: str = "none", gap_buckets: int = 0, impl: str = "fused") -> None:
        super().__init__()
        if impl not in ("fused", "reference"):
            raise ValueError(f"impl must be 'fused' or 'reference', got {impl!r}")
        self.impl = impl
        if gap not in self.GAPS:
            raise ValueError(f"gap must be one of {self.GAPS}, got {gap!r}")
        if heads < 1 or dim % heads:
            raise ValueError(f"ExactAttention: dim {dim} must split into {heads} heads of equal width")
        if gap != "none" and gap_buckets < 2:
            raise ValueError(f"ExactAttention: gap={gap!r} needs at least 2 gap buckets, got {gap_buckets}")
        self.heads, self.head_dim, self.gap = heads, dim // heads, gap
        gap_dim = dim if gap != "none" else 0
        self.gap_embedding = nn.Embedding(gap_buckets, gap_dim, padding_idx=0) if gap_dim else None
        key_dim = dim + (gap_dim if gap == "concat" else 0)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(key_dim, dim, bias=False)
        self.value = nn.Linear(dim + gap_dim, dim, bias=False)
        self.gap_bias = nn.Embedding(gap_buckets, heads, padding_idx=0) if gap == "bias" else None
        for table in (self.gap_embedding, self.gap_bias):
            if table is not None:
                nn.init.normal_(table.weight, std=1e-2)
                with torch.no_grad():
                    table.weight[0].zero_()
        self.out_dim = dim

    def queries(self, target: torch.Tensor) -> torch.Tensor:
        """(..., W) targets -> (..., H, d) per-head queries, scaled by ``1 / sqrt(d)``."""
        q = self.query(target) / self.head_dim ** 0.5
        return q.view(*q.shape[:-1], self.heads, self.head_dim)

    def keys(self, events: torch.Tensor, gaps: torch.Tensor | None = None) -> torch.Tensor:
        """(..., W) events (and (...,) gap buckets with ``gap="concat"``) -> (..., H, d) per-head keys."""
        inputs = torch.cat([events, self.gap_embedding(gaps)], dim=-1) if self.gap == "concat" else events
        k = self.key(inputs)
        return k.view(*k.shape[:-1], self.heads, self.head_dim)

    def bias(self, gaps: torch.Tensor | None) -> torch.Tensor | None:
        """(...,) gap buckets -> (..., H) the cross features' scalar per head (``gap="bias"``), else None."""
        return None if self.gap_bias is None else self.gap_bias(gaps)

    def forward(self, target: torch.Tensor, events: torch.Tensor, mask: torch.Tensor,
                gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            target: (B, K, W) candidates.
            events: (B, K, n, W) each candidate's retrieved events.
            mask: (B, K, n) bool, True at real events.
            gaps: (B, K, n) int64 gap buckets (0 at padding), needed unless ``gap="none"``.

        Returns:
            (B, K, W) the long-term interest (0 for a candidate with no event).
        """
        if self.gap != "none" and gaps is None:
            raise ValueError("ExactAttention: the time gap needs gap buckets (the batch's timestamps)")
        reference = self.impl == "reference"
        gap_rows = self.gap_embedding(gaps) if self.gap_embedding is not None and reference else None  # (B, K, n, W)
        q = self.queries(target)  # (B, K, H, d)
        width = events.shape[-1]
        if reference:  # project every event, then attend
            logits = torch.einsum("bkhd,bknhd->bkhn", q, self.keys(events, gaps))  # (B, K, H, n)
        else:  # the key projection folded into the query (q W^k_h^T), applied to [e_i, d_i] in two parts (no concat)
            folded = torch.einsum("bkhd,hde->bkhe", q, self.key.weight.view(self.heads, self.head_dim, -1))
            logits = folded[..., :width] @ events.transpose(-1, -2)  # (B, K, H, n)
            if self.gap == "concat":  # q' . d_g once per gap bucket g, read per event: no (B, K, n, W) gap rows
                per_bucket = folded[..., width:] @ self.gap_embedding.weight.T  # (B, K, H, G)
                logits = logits + per_bucket.gather(-1, gaps.unsqueeze(2).expand(-1, -1, self.heads, -1))
        bias = self.bias(gaps)
        if bias is not None:
            logits = logits + bias.transpose(-1, -2)
        logits = logits.masked_fill(~mask.unsqueeze(2), torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1) * mask.unsqueeze(2)  # (B, K, H, n), 0 at padding
        if self.impl == "reference":
            inputs = events if gap_rows is None else torch.cat([events, gap_rows], dim=-1)  # (B, K, n, Dv)
            v = self.value(inputs).view(*inputs.shape[:-1], self.heads, self.head_dim)  # (B, K, n, H, d)
            return torch.einsum("bkhn,bknhd->bkhd", weights, v).flatten(-2)  # (B, K, W)
        # the weighted inputs, projected once per head: (sum_i alpha_i [e_i, d_i]) W^v_h
        value = self.value.weight.view(self.heads, self.head_dim, -1)  # (H, d, Dv)
        out = torch.einsum("bkhe,hde->bkhd", weights @ events, value[..., :width])  # (B, K, H, d)
        if self.gap_embedding is not None:  # sum_i alpha_i d_{g_i} = sum_g (the weight of bucket g) d_g
            table = self.gap_embedding.weight  # (G, W)
            per_bucket = weights.new_zeros(*weights.shape[:-1], table.shape[0])  # (B, K, H, G)
            per_bucket = per_bucket.scatter_add(-1, gaps.unsqueeze(2).expand(-1, -1, self.heads, -1), weights)
            out = out + torch.einsum("bkhe,hde->bkhd", per_bucket @ table, value[..., width:])
        return out.flatten(-2)  # (B, K, W)


class LifelongHead(nn.Module):
    """The long-history papers' overall shape: a DIN over the last ``short_length`` events (the short-term
    interest), the long-term interest, the target and the user features -> MLP -> logit.

    Args:
        item_dim: width ``W`` of events and targets.
        long_dim: width of the long-term interest.
        user_dim: width of the user features (0 without).
        attention: DIN's activation unit over the short sequence (:class:`TargetAttention`).
        dnn: the MLP's hidden sizes, activation and dropout, e.g. ``((200, 80), "dice", 0.0)``.

    Example:
        >>> head = LifelongHead(8, 8, 0, TargetAttention(8, [4], "relu"), ((16,), "relu", 0.0))
        >>> short, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
        >>> head(torch.randn(2, 5, 8), short, mask, torch.randn(2, 5, 8)).shape
        torch.Size([2, 5])
    """

    def __init__(self, item_dim: int, long_dim: int, user_dim: int, attention: TargetAttention,
                 dnn: tuple[tuple[int, ...], str, float]) -> None:
        super().__init__()
        hidden, activation_name, dropout = dnn
        self.short_attention = attention
        self.dnn = MLP(2 * item_dim + long_dim + user_dim, list(hidden), activation_name, out_dim=1, dropout=dropout)

    def forward(self, target: torch.Tensor, short: torch.Tensor, short_mask: torch.Tensor, long_interest: torch.Tensor,
                user: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            target: (B, K, W) candidates.
            short: (B, S, W) the last events; short_mask (B, S) bool.
            long_interest: (B, K, X).
            user: (B, U) user features, or None.

        Returns:
            (B, K) logits.
        """
        short_interest, _ = self.short_attention(target, short, short_mask)  # (B, K, W)
        inputs = torch.cat([short_interest, long_interest, target], dim=-1)  # (B, K, 2W + X)
        if user is not None:
            inputs = torch.cat([inputs, user.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        return self.dnn(inputs.flatten(0, 1)).view(target.shape[:2])
