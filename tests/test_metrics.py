"""nDCG@k and Recall@k against values computed by hand."""

import math

import numpy as np
import pytest

from aisle.training.metrics import dcg, ndcg_at_k, rank_order, recall_at_k

# Ranking by score: candidate 0 (gain 0), 1 (gain 2), 3 (gain 0), 2 (gain 1).
SCORES = np.array([0.9, 0.8, 0.1, 0.5])
GAINS = np.array([0.0, 2.0, 1.0, 0.0])


def test_dcg_discounts_each_rank_by_log2_of_rank_plus_one() -> None:
    assert dcg(np.array([3.0, 2.0, 1.0]), 3) == pytest.approx(3 / 1 + 2 / math.log2(3) + 1 / 2)
    assert dcg(np.array([3.0, 2.0, 1.0]), 2) == pytest.approx(3 + 2 / math.log2(3))


def test_ndcg_uses_graded_gains_and_the_ideal_order() -> None:
    achieved = 0 / 1 + 2 / math.log2(3) + 0 / 2
    ideal = 2 / 1 + 1 / math.log2(3) + 0 / 2
    assert ndcg_at_k(SCORES, GAINS, 3) == pytest.approx(achieved / ideal)


def test_ndcg_counts_only_the_first_k_ranks() -> None:
    # At k=1 the top candidate has gain 0 while the ideal top has gain 2.
    assert ndcg_at_k(SCORES, GAINS, 1) == 0.0
    # Beyond the list length nothing changes.
    full = (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(SCORES, GAINS, 10) == pytest.approx(full)


def test_ndcg_is_one_for_the_ideal_ranking_and_prefers_purchase_over_click() -> None:
    assert ndcg_at_k(np.array([0.0, 3.0, 2.0, 1.0]), GAINS, 10) == pytest.approx(1.0)
    click_first = ndcg_at_k(np.array([0.0, 2.0, 3.0, 1.0]), GAINS, 10)
    assert click_first < 1.0


def test_recall_is_the_share_of_relevant_candidates_in_the_top_k() -> None:
    relevant = GAINS > 0
    assert recall_at_k(SCORES, relevant, 1) == 0.0
    assert recall_at_k(SCORES, relevant, 2) == pytest.approx(0.5)
    assert recall_at_k(SCORES, relevant, 4) == pytest.approx(1.0)


def test_metrics_without_positives_are_zero() -> None:
    zeros = np.zeros(4)
    assert ndcg_at_k(SCORES, zeros, 10) == 0.0
    assert recall_at_k(SCORES, zeros > 0, 10) == 0.0


def test_ties_keep_the_pool_order() -> None:
    assert rank_order(np.array([1.0, 2.0, 1.0, 2.0])).tolist() == [1, 3, 0, 2]
    assert ndcg_at_k(np.zeros(4), GAINS, 2) == pytest.approx((2 / math.log2(3)) / (2 + 1 / math.log2(3)))
