"""Held-out evaluation: three rankers on test sessions and on cold-start items.

Pool: every test session with at least one click, ranked over its impressions plus
`sampled_candidates` catalog items (cold ones included: they are part of the catalog) drawn with
the run's seed and shuffled in. Gains: purchase 2, click 1, else 0.

Rankers:
- zero_shot: the base model as both towers. Search sessions rank by cosine(query, item); feed
  sessions (empty query) by the user vector from the base item embeddings (a dot product with
  it ranks like the cosine: the user vector's norm is the same for every candidate).
- towers: the same rule with the fine-tuned towers.
- fusion: the fusion head's scores (query, user, item embeddings and item features).

cold_start: the test sessions whose clicks include a cold-start item, on the same pools and scores
with gains kept only on the cold items: can a ranker surface an item no training session showed?
Each method's block also carries n_sessions and a search/feed breakdown (`by_type`).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from aisle.modeling.fusion import FusionHead
from aisle.training.corpus import RankingLists
from aisle.training.head import score_lists
from aisle.training.metrics import ndcg_at_k, recall_at_k
from aisle.training.presets import Evaluation

METHODS = ("zero_shot", "towers", "fusion")
#: Sessions scored per batch during evaluation (bounds the [S, N, 5D] head activation memory).
EVAL_BATCH = 16


def cosine_scores(queries: torch.Tensor, users: torch.Tensor, lists: RankingLists, items: torch.Tensor) -> np.ndarray:
    """Search lists by query cosine, feed lists by their user vector: [S, N]."""
    vectors = torch.where(torch.from_numpy(lists.is_search)[:, None], queries, users)
    out = np.zeros(lists.candidates.shape, dtype=np.float32)
    for start in range(0, len(lists), EVAL_BATCH):
        index = slice(start, start + EVAL_BATCH)
        candidates = items[torch.from_numpy(lists.candidates[index])]
        out[index] = torch.einsum("sd,snd->sn", vectors[index], candidates).numpy()
    return out


def fusion_scores(
    head: FusionHead,
    queries: torch.Tensor,
    users: torch.Tensor,
    lists: RankingLists,
    items: torch.Tensor,
    features: torch.Tensor,
) -> np.ndarray:
    out = np.zeros(lists.candidates.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(lists), EVAL_BATCH), desc="fusion eval", leave=False):
            index = np.arange(start, min(start + EVAL_BATCH, len(lists)))
            out[index] = score_lists(head, queries, users, lists, index, items, features).numpy()
    return out


def ranking_metrics(scores: np.ndarray, gains: np.ndarray, valid: np.ndarray, config: Evaluation) -> dict[str, float]:
    """Mean nDCG@k and Recall@k over lists (padding excluded); recall counts every positive gain.

    Without any list both means are None (JSON null): there is nothing to average.
    """
    ndcg = [ndcg_at_k(s[v], g[v], config.ndcg_k) for s, g, v in zip(scores, gains, valid)]
    recall = [recall_at_k(s[v], g[v] > 0, config.recall_k) for s, g, v in zip(scores, gains, valid)]
    return {
        f"ndcg@{config.ndcg_k}": float(np.mean(ndcg)) if ndcg else None,
        f"recall@{config.recall_k}": float(np.mean(recall)) if recall else None,
        "n_sessions": len(ndcg),
    }


def method_block(
    scores: np.ndarray, gains: np.ndarray, lists: RankingLists, keep: np.ndarray, config: Evaluation
) -> dict:
    """Metrics over the kept lists, plus the same split by session type."""
    block: dict = ranking_metrics(scores[keep], gains[keep], lists.valid[keep], config)
    block["by_type"] = {
        kind: ranking_metrics(scores[keep & mask], gains[keep & mask], lists.valid[keep & mask], config)
        for kind, mask in (("search", lists.is_search), ("feed", ~lists.is_search))
    }
    return block


def evaluate(scores: dict[str, np.ndarray], lists: RankingLists, cold: np.ndarray, config: Evaluation) -> dict:
    """metrics.json's content from each method's [S, N] scores over the test `lists`."""
    cold_gains = lists.gains * cold[lists.candidates]
    everything = np.ones(len(lists), dtype=bool)
    has_cold = cold_gains.sum(axis=1) > 0
    return {
        "test": {m: method_block(scores[m], lists.gains, lists, everything, config) for m in METHODS},
        "cold_start": {m: method_block(scores[m], cold_gains, lists, has_cold, config) for m in METHODS},
    }


def format_table(metrics: dict, config: Evaluation) -> str:
    """The metrics as a fixed-width table: one row per method, test and cold-start columns."""
    ndcg, recall = f"ndcg@{config.ndcg_k}", f"recall@{config.recall_k}"
    columns = [
        ("test", None, ndcg),
        ("test", None, recall),
        ("test", "search", ndcg),
        ("test", "feed", ndcg),
        ("cold_start", None, ndcg),
        ("cold_start", None, recall),
    ]
    header = ["method"] + [f"{split}{'/' + kind if kind else ''} {name}" for split, kind, name in columns]
    rows = [header]
    for method in METHODS:
        row = [method]
        for split, kind, name in columns:
            value = (metrics[split][method]["by_type"][kind] if kind else metrics[split][method])[name]
            row.append("-" if value is None else f"{value:.4f}")
        rows.append(row)
    counts = {split: metrics[split]["fusion"] for split in ("test", "cold_start")}
    widths = [max(len(row[n]) for row in rows) for n in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.append(
        f"sessions: test {counts['test']['n_sessions']} (search {counts['test']['by_type']['search']['n_sessions']}, "
        f"feed {counts['test']['by_type']['feed']['n_sessions']}), cold_start {counts['cold_start']['n_sessions']}"
    )
    return "\n".join(lines)
