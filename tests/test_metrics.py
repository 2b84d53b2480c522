"""Tests for lifelong.metrics against scikit-learn and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from lifelong.metrics import auc, ctr_metrics, gauc, gauc_detail, logloss, logloss_from_logits


def _random_case(seed: int, n: int, n_users: int, decimals: int = 1):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=n)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    # Scores correlated with labels and rounded, so that ties are frequent.
    scores = np.round(rng.normal(size=n) + 0.8 * labels, decimals)
    return users, labels, scores


def _gauc_brute_force(users, labels, scores) -> tuple[float, int]:
    total, weight, used = 0.0, 0, 0
    for user in np.unique(users):
        mask = users == user
        if labels[mask].min() == labels[mask].max():
            continue
        total += mask.sum() * roc_auc_score(labels[mask], scores[mask])
        weight += mask.sum()
        used += 1
    return total / weight, used


@pytest.mark.parametrize("seed", range(25))
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    _, labels, scores = _random_case(seed, n=50 + 37 * seed, n_users=5)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=-5, max_value=5)), min_size=2, max_size=200
    ).filter(lambda rows: len({label for label, _ in rows}) == 2)
)
def test_auc_property_matches_sklearn(rows: list[tuple[bool, int]]) -> None:
    labels = np.array([label for label, _ in rows], dtype=np.int64)
    scores = np.array([score for _, score in rows], dtype=np.float64) / 2.0
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_known_values() -> None:
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc(np.array([True, False, True]), [3, 1, 2]) == 1.0
    assert auc([0.0, 1.0, 1.0], np.array([[0.2], [0.4], [0.1]])) == 0.5


@pytest.mark.parametrize("seed", range(15))
def test_gauc_matches_brute_force(seed: int) -> None:
    users, labels, scores = _random_case(seed, n=300 + 50 * seed, n_users=3 + seed)
    expected, expected_used = _gauc_brute_force(users, labels, scores)
    value, used = gauc_detail(users, labels, scores)
    assert used == expected_used
    assert value == pytest.approx(expected, abs=1e-12)
    assert gauc(users, labels, scores) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4),
            st.booleans(),
            st.integers(min_value=-3, max_value=3),
        ),
        min_size=1,
        max_size=120,
    )
)
def test_gauc_property_matches_brute_force(rows: list[tuple[int, bool, int]]) -> None:
    users = np.array([r[0] for r in rows])
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    scores = np.array([r[2] for r in rows], dtype=np.float64)
    value, used = gauc_detail(users, labels, scores)
    has_both = [u for u in np.unique(users) if len(np.unique(labels[users == u])) == 2]
    if not has_both:
        assert used == 0 and math.isnan(value)
        return
    expected, expected_used = _gauc_brute_force(users, labels, scores)
    assert used == expected_used
    assert value == pytest.approx(expected, abs=1e-12)


def test_gauc_string_users_and_unsorted_input() -> None:
    users, labels, scores = _random_case(3, n=400, n_users=7)
    names = np.array([f"user-{u}" for u in users], dtype=object)
    expected, _ = _gauc_brute_force(users, labels, scores)
    assert gauc(names, labels, scores) == pytest.approx(expected, abs=1e-12)
    perm = np.random.default_rng(0).permutation(len(users))
    assert gauc(users[perm], labels[perm], scores[perm]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("scale", [1, -70_001, 10**11])
def test_gauc_user_key_ranges(scale: int) -> None:
    # Compact, 32-bit and 64-bit user-key spans take different sort paths; results must agree.
    users, labels, scores = _random_case(11, n=600, n_users=9)
    expected, _ = _gauc_brute_force(users, labels, scores)
    assert gauc(users * scale + 3, labels, scores) == pytest.approx(expected, abs=1e-12)


def test_gauc_skips_single_class_users() -> None:
    users = [1, 1, 2, 2, 2]
    labels = [0, 1, 1, 1, 1]
    scores = [0.2, 0.8, 0.1, 0.2, 0.3]
    assert gauc_detail(users, labels, scores) == (1.0, 1)
    with pytest.raises(ValueError, match="no user has both"):
        gauc([1, 2], [0, 1], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(10))
def test_logloss_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=500)
    labels[:2] = [0, 1]
    probs = rng.uniform(0.01, 0.99, size=500)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-12)


def test_logloss_clips() -> None:
    value = logloss([1, 0], [0.0, 1.0], eps=1e-7)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-9)


def test_logloss_from_logits_is_stable_and_consistent() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=1000)
    logits = rng.normal(scale=3.0, size=1000)
    probs = 1.0 / (1.0 + np.exp(-logits))
    assert logloss_from_logits(labels, logits) == pytest.approx(logloss(labels, probs), rel=1e-9)
    # Extreme logits: no overflow, exact limits.
    assert logloss_from_logits([1, 0], [1000.0, -1000.0]) == pytest.approx(0.0, abs=1e-300)
    assert logloss_from_logits([0], [1000.0]) == pytest.approx(1000.0)


def test_ctr_metrics() -> None:
    users, labels, scores = _random_case(7, n=2000, n_users=40, decimals=2)
    logits = scores * 2.0 - 0.5
    probs = 1.0 / (1.0 + np.exp(-logits))
    result = ctr_metrics(users, labels, logits)
    assert set(result) == {"auc", "gauc", "logloss", "n"}
    assert result["n"] == 2000
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert result["gauc"] == pytest.approx(_gauc_brute_force(users, labels, probs)[0], abs=1e-12)
    assert result["logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-9)


def test_ctr_metrics_gauc_nan_without_mixed_users() -> None:
    result = ctr_metrics([1, 2], [0, 1], [-1.0, 1.0])
    assert result["auc"] == 1.0 and math.isnan(result["gauc"])


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only one class"),
        ([0, 0], [0.1, 0.2], "only one class"),
        ([0, 1, 1], [0.1, 0.2], "lengths differ"),
        ([0, 1], [0.1, float("nan")], "non-finite"),
        ([0, 1], [0.1, float("inf")], "non-finite"),
        ([0, 2], [0.1, 0.2], "binary"),
        ([0, float("nan")], [0.1, 0.2], "non-finite"),
        ([], [], "empty"),
        ([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], "1-d"),
    ],
)
def test_auc_invalid_inputs_raise(labels, scores, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auc(labels, scores)


def test_other_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        gauc([1, 1], [0, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        gauc([1, 1], [0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="probs must lie"):
        logloss([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="non-finite"):
        logloss([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="eps"):
        logloss([0, 1], [0.5, 0.5], eps=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        logloss_from_logits([0, 1], [0.5, np.inf])
    with pytest.raises(ValueError, match="only one class"):
        ctr_metrics([1, 2], [1, 1], [0.3, 0.4])


def test_large_input_is_exact() -> None:
    rng = np.random.default_rng(5)
    n = 1_000_000
    labels = (rng.random(n) < 0.1).astype(np.int8)
    scores = np.round(rng.random(n) + 0.2 * labels, 3).astype(np.float32)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
