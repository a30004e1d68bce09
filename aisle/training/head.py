"""Training the fusion head on session impressions, over frozen tower embeddings.

Why frozen towers: after contrastive fine-tuning the towers are fixed and every catalog item and
query is embedded once, so the head trains on precomputed vectors (seconds per epoch instead of
encoder passes per step), and the item embeddings the head learned from are exactly the ones the
item store serves. Joint training would need encoder passes for every impression of every step,
far beyond the fast preset's budget on 2 cores.

Inputs mirror serving: the query embedding is zero for feed sessions (empty query), and the user
vector is aisle.modeling.user.user_vector over the item-tower embeddings of the last
`max_history` history items. Each list is a session's impressions plus random warm catalog items
(gain 0), scored with a listwise softmax against the gains purchase 2 > click 1 > none 0.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from aisle.modeling.fusion import LOG_FEATURES, FusionHead, FusionHeadConfig
from aisle.training.corpus import RankingLists
from aisle.training.losses import listwise_softmax
from aisle.training.presets import HeadTraining, use_bf16


def feature_stats(features: np.ndarray, names: tuple[str, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per feature after the head's own transform (log1p of the heavy-tailed ones).

    Fitted on the training catalog and stored in the head's config, so every runtime normalises
    with the same numbers. NaN (unknown) values are ignored; a constant feature gets std 1.
    """
    logged = np.where([name in LOG_FEATURES for name in names], np.log1p(np.clip(features, 0.0, None)), features)
    mean = np.nanmean(logged, axis=0)
    std = np.nanstd(logged, axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def score_lists(
    head: FusionHead,
    queries: torch.Tensor,
    users: torch.Tensor,
    lists: RankingLists,
    index: np.ndarray,
    item_embeddings: torch.Tensor,
    features: torch.Tensor,
) -> torch.Tensor:
    """Head scores [len(index), N] for the lists at `index` (padding positions score anything)."""
    candidates = torch.from_numpy(lists.candidates[index])
    return head(queries[index], users[index], item_embeddings[candidates], features[candidates])


def train_head(
    head_config: FusionHeadConfig,
    lists: RankingLists,
    queries: torch.Tensor,
    users: torch.Tensor,
    item_embeddings: torch.Tensor,
    features: torch.Tensor,
    config: HeadTraining,
    rng: np.random.Generator,
) -> tuple[FusionHead, list[float]]:
    """Fit a fresh head on `lists` (each with a positive gain); returns it in eval mode and the epoch losses."""
    head = FusionHead(head_config)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batches_per_epoch = -(-len(lists) // config.batch_sessions)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * batches_per_epoch, pct_start=0.1
    )
    gains = torch.from_numpy(lists.gains)
    valid = torch.from_numpy(lists.valid)
    head.train()
    epoch_losses: list[float] = []
    for epoch in range(config.epochs):
        order = rng.permutation(len(lists))
        total = 0.0
        progress = tqdm(range(0, len(order), config.batch_sessions), desc=f"head epoch {epoch + 1}", leave=False)
        for start in progress:
            index = order[start : start + config.batch_sessions]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(config.bf16)):
                scores = score_lists(head, queries, users, lists, index, item_embeddings, features)
            loss = listwise_softmax(scores.float(), gains[index], valid[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        epoch_losses.append(total / len(lists))
    return head.eval(), epoch_losses
