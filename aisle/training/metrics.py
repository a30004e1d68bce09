"""Ranking metrics over one scored candidate pool: nDCG@k with graded gains and Recall@k.

Both rank candidates by descending score with a stable sort, so ties keep the pool's order; the
evaluator shuffles each pool with a fixed seed first, which makes ties (a feed session without
history scores every candidate 0 under cosine) random instead of favouring the impressions.

A pool without any positive gain has no ideal ranking: both metrics return 0.0 for it, and the
evaluator never feeds such pools in (it keeps sessions with at least one click).
"""

from __future__ import annotations

import numpy as np


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices from best to worst; equal scores keep their original order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def dcg(gains_in_rank_order: np.ndarray, k: int) -> float:
    """Discounted cumulative gain of the first k ranks: sum of gain / log2(rank + 1), rank from 1."""
    top = np.asarray(gains_in_rank_order, dtype=np.float64)[:k]
    return float((top / np.log2(np.arange(2, top.size + 2))).sum())


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    """DCG@k of the ranking by `scores`, divided by the DCG@k of the best possible ranking."""
    gains = np.asarray(gains, dtype=np.float64)
    ideal = dcg(np.sort(gains)[::-1], k)
    if ideal == 0.0:
        return 0.0
    return dcg(gains[rank_order(scores)], k) / ideal


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Share of the relevant candidates that the ranking by `scores` places in the first k."""
    relevant = np.asarray(relevant, dtype=bool)
    total = int(relevant.sum())
    if total == 0:
        return 0.0
    return float(relevant[rank_order(scores)[:k]].sum()) / total
