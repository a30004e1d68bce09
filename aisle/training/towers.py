"""Contrastive fine-tuning of the query and item towers.

Pairs: (query, item judged E) from the judgments and (query, clicked item) from train search
sessions. Judgments teach graded relevance (attributes, synonyms, typos); clicks add what
shoppers actually pick for a query. Empty queries (feeds) never appear: a blank query embeds to
zero by construction and has nothing to learn.

Loss: InfoNCE with in-batch negatives plus one hard negative per pair, drawn from the query's
S-labelled substitutes and the I-labelled items of the same top-level category. Those differ from
an E item in one attribute or share its department, exactly the distinctions the base model
blurs. Items known to be relevant to a query (its E judgments and its clicks) are never used as
its negatives. Cold-start items are kept out of every pair, so the cold-start evaluation measures
items the towers never saw.

Separate query and item weights by default: queries are short keyword strings and items are long
structured listings, so each side gets its own top layers (`--tie-towers` shares one encoder,
halving the trainable weights and the checkpoint's distinct tensors).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from aisle.errors import DataError
from aisle.training.corpus import Corpus, has_click
from aisle.training.encoding import CutEncoder, StateCache
from aisle.training.losses import info_nce
from aisle.training.presets import TowerTraining


@dataclass
class PairSet:
    """Training pairs as row arrays, each query's known positives and its hard negatives."""

    queries: np.ndarray  # [P] query rows
    items: np.ndarray  # [P] positive item rows
    positives: dict[int, set[int]]  # query row -> item rows never to be used as its negatives
    hard_negatives: dict[int, np.ndarray]  # query row -> candidate hard negative item rows
    fallback: np.ndarray  # warm item rows, for queries without judged hard negatives

    def __len__(self) -> int:
        return len(self.queries)

    @classmethod
    def mine(cls, corpus: Corpus) -> PairSet:
        dataset = corpus.dataset
        text_of = {q.query_id: q.text for q in dataset.queries}
        labelled: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for judgment in dataset.judgments:
            if judgment.query_id not in text_of:
                raise DataError(f"judgments.jsonl: query_id {judgment.query_id} is not in queries.jsonl")
            if judgment.item_id not in corpus.item_row:
                raise DataError(f"judgments.jsonl: item_id {judgment.item_id} is not in items.jsonl")
            row = corpus.item_row[judgment.item_id]
            if not corpus.cold[row]:
                labelled[corpus.query_row[text_of[judgment.query_id]]][judgment.label].append(row)
        pairs: list[tuple[int, int]] = []
        positives: dict[int, set[int]] = defaultdict(set)
        for query, labels in labelled.items():
            pairs += [(query, item) for item in labels["E"]]
            positives[query].update(labels["E"])
        for session in dataset.split("train"):
            if session.query.strip() and has_click(session):
                query = corpus.query_row[session.query]
                clicked = corpus.rows([i.item_id for i in session.impressions if i.clicked or i.purchased])
                clicked = clicked[~corpus.cold[clicked]]
                pairs += [(query, int(item)) for item in clicked]
                positives[query].update(clicked.tolist())
        if not pairs:
            raise DataError(
                f"{dataset.manifest.name}: no training pairs: the towers need E judgments or clicked train searches"
            )
        root = np.array([item.category[0] if item.category else "" for item in dataset.items])
        hard: dict[int, np.ndarray] = {}
        for query, labels in labelled.items():
            roots = {root[i] for i in positives[query]}
            candidates = labels["S"] + [i for i in labels["I"] if root[i] in roots]
            candidates = [i for i in candidates if i not in positives[query]]
            if candidates:
                hard[query] = np.array(candidates, dtype=np.int64)
        rows = np.array(pairs, dtype=np.int64)
        return cls(rows[:, 0], rows[:, 1], dict(positives), hard, np.flatnonzero(~corpus.cold))

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Query rows [B], item rows [2B] (positives, then one hard negative each), false-negative mask."""
        picked = rng.choice(len(self), size=min(batch_size, len(self)), replace=False)
        queries, positive = self.queries[picked], self.items[picked]
        negative = np.array([rng.choice(self.hard_negatives.get(int(q), self.fallback)) for q in queries])
        items = np.concatenate([positive, negative])
        mask = torch.tensor([[int(item) in self.positives.get(int(q), ()) for item in items] for q in queries])
        mask[torch.arange(len(queries)), torch.arange(len(queries))] = False
        return queries, items, mask


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then linear decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return max(total - step, 0) / max(total - warmup, 1)


def train_towers(
    query_encoder: CutEncoder,
    item_encoder: CutEncoder,
    query_cache: StateCache,
    item_cache: StateCache,
    pairs: PairSet,
    config: TowerTraining,
    rng: np.random.Generator,
) -> list[float]:
    """Fine-tune the towers' top layers in place; returns the loss of every step.

    With tied towers `query_encoder` and `item_encoder` are the same object (one set of weights).
    """
    encoders = [query_encoder] if query_encoder is item_encoder else [query_encoder, item_encoder]
    parameters = [p for encoder in encoders for p in encoder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(int(config.steps * config.warmup_fraction), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, config.steps, warmup))
    for encoder in encoders:
        encoder.model.train()
    losses: list[float] = []
    progress = tqdm(range(config.steps), desc="towers", unit="step", leave=False)
    for _ in progress:
        queries, items, false_negatives = pairs.sample(rng, config.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            query_vectors = query_encoder.top(*query_cache.batch(queries.tolist()))
            item_vectors = item_encoder.top(*item_cache.batch(items.tolist()))
        loss = info_nce(query_vectors.float(), item_vectors.float(), false_negatives, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    for encoder in encoders:
        encoder.model.eval()
    return losses
