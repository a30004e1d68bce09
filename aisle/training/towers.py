"""Contrastive fine-tuning of the query and item towers.

Pairs: (query, item judged E) from the judgments and (query, clicked item) from train search
sessions. Judgments teach graded relevance (attributes, synonyms, typos); clicks add what
shoppers actually pick for a query. Empty queries (feeds) never appear: a blank query embeds to
zero by construction and has nothing to learn.

Loss: InfoNCE with in-batch negatives plus one hard negative per pair. A judged pair draws it
from the query's S-labelled substitutes and the I-labelled items of the same top-level category:
they differ from an E item in one attribute or share its department, exactly the distinctions
the base model blurs. A click pair draws it from the same session's impressions that were shown
and not clicked: mostly relevant items too, so what separates them is what shoppers prefer
(brand, model line, the listing itself), which relevance labels cannot teach. In-batch items
known to be relevant to a query (its E judgments and its clicks) are masked out of its
negatives. Cold-start items are kept out of every pair, so the cold-start evaluation measures
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
from aisle.training.presets import TowerTraining, use_bf16


@dataclass
class PairSet:
    """Training pairs as row arrays, each query's known positives, each pair's hard-negative pool."""

    queries: np.ndarray  # [P] query rows
    items: np.ndarray  # [P] positive item rows
    from_clicks: np.ndarray  # [P] True for (query, clicked item), False for (query, E item)
    pool_of: np.ndarray  # [P] index into `pools`: where the pair's hard negative is drawn from
    pools: list[np.ndarray]  # item-row pools; pools[0] is every warm item (the fallback)
    positives: dict[int, set[int]]  # query row -> item rows never to be used as its in-batch negatives

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
        positives: dict[int, set[int]] = defaultdict(set)
        for query, labels in labelled.items():
            positives[query].update(labels["E"])
        clicks: list[tuple[int, np.ndarray, np.ndarray]] = []
        for session in dataset.split("train"):
            if session.query.strip() and has_click(session):
                shown = corpus.rows([i.item_id for i in session.impressions])
                picked = np.array([i.clicked or i.purchased for i in session.impressions]) & ~corpus.cold[shown]
                query = corpus.query_row[session.query]
                clicks.append((query, shown[picked], shown[~picked & ~corpus.cold[shown]]))
                positives[query].update(shown[picked].tolist())
        root = np.array([item.category[0] if item.category else "" for item in dataset.items])
        pools: list[np.ndarray] = [np.flatnonzero(~corpus.cold)]
        rows: list[tuple[int, int, bool, int]] = []
        for query, labels in labelled.items():
            roots = {root[i] for i in positives[query]}
            near = labels["S"] + [i for i in labels["I"] if root[i] in roots]
            judged = [i for i in near if i not in positives[query]]
            pools.append(np.array(judged, dtype=np.int64))
            rows += [(query, item, False, len(pools) - 1 if judged else 0) for item in labels["E"]]
        for query, clicked, unclicked in clicks:
            # An item shown here but clicked (or judged E) elsewhere for this query is no negative.
            unclicked = unclicked[~np.isin(unclicked, list(positives[query]))]
            pools.append(unclicked)
            rows += [(query, int(item), True, len(pools) - 1 if len(unclicked) else 0) for item in clicked]
        if not rows:
            raise DataError(
                f"{dataset.manifest.name}: no training pairs: the towers need E judgments or clicked train searches"
            )
        table = np.array(rows, dtype=np.int64)
        return cls(table[:, 0], table[:, 1], table[:, 2] == 1, table[:, 3], pools, dict(positives))

    def sample(
        self, rng: np.random.Generator, batch_size: int, click_share: float
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Query rows [B], item rows [2B] (positives, then one hard negative each), false-negative mask.

        About `click_share` of the pairs come from clicks, the rest from E judgments (all from
        one source when the other has none). The mask hides, for each query, the other columns
        holding items known to be relevant to it; its own positive and its own hard negative
        always count.
        """
        clicks, judged = np.flatnonzero(self.from_clicks), np.flatnonzero(~self.from_clicks)
        batch_size = min(batch_size, len(self))
        from_clicks = int(rng.binomial(batch_size, click_share)) if len(clicks) and len(judged) else len(clicks)
        from_clicks = min(from_clicks, len(clicks), batch_size)
        from_judged = min(batch_size - from_clicks, len(judged))
        picked = np.concatenate(
            [rng.choice(clicks, size=from_clicks, replace=False), rng.choice(judged, size=from_judged, replace=False)]
        )
        queries, positive = self.queries[picked], self.items[picked]
        negative = np.array([rng.choice(self.pools[pool]) for pool in self.pool_of[picked]], dtype=np.int64)
        items = np.concatenate([positive, negative])
        mask = torch.tensor([[int(item) in self.positives.get(int(q), ()) for item in items] for q in queries])
        own = torch.arange(len(queries))
        mask[own, own] = False
        mask[own, own + len(queries)] = False
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
        queries, items, false_negatives = pairs.sample(rng, config.batch_size, config.click_share)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(config.bf16)):
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
