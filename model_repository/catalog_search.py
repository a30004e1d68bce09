"""The catalog_search model: search's stages 1 and 2 in one python step.

    QUERY_EMBEDDING [B, D], USER_HISTORY_IDS [B, H], TOP_K [B, 1], CATEGORY [B, 1], BRANDS [B, n],
    EXCLUDE_BRANDS [B, m], PRICE_RANGE [B, 2], EXCLUDE_IDS [B, e] -> ITEM_IDS [B, k], SCORES [B, k]

Stage 1 (aisle.model_repository.retriever) finds each request's candidates under its filters;
stage 2 scores them with the fusion head's own exported graph (the file `rank`'s fusion_head
serves, run here by onnxruntime on the CPU) and keeps the TOP_K best real ones, best first.
k = min(TOP_K, allowed items): padding rows (a narrow filter) never come back, so a filter that
matches nothing returns an empty result.

Why one step: the candidates' embeddings ([N, D] floats per request) would otherwise cross two
stub boundaries (retriever -> fusion_head -> selection) through shared memory. Measured on the
small shop (contended quick bench, concurrency 1): retriever 4.3 ms + head 5.5 ms + selection
1.1 ms as three steps, while the same retrieval takes 0.85 ms in-process and the head over 100
candidates 1.4 ms. The head is a small MLP, so running it on the CPU costs GPU targets little.
It also means every stage of a request reads one catalog store. On the embedded target the query
encoder is folded in too (aisle.schema.fuse_encoders; text_encoder.EmbedsItsText embeds QUERY in
this process before this logic runs), so there search is a single step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.export.repo_format import graph_file
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.ort_runner import OrtGraph, OrtOptions
from aisle.model_repository.retriever import Candidates, Retriever
from aisle.retrieval import PAD_ROW
from aisle.schema import (
    FUSION_HEAD,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES_TENSOR,
    ITEM_IDS,
    QUERY_EMBEDDING,
    SCORES,
    USER_EMBEDDING,
)


def best_first(scores: np.ndarray, ids: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top_k (id, score) pairs of real candidates, by descending score (ties keep retrieval's order)."""
    real = np.flatnonzero(ids != PAD_ROW)
    order = real[np.argsort(-scores[real], kind="stable")[:top_k]]
    return ids[order], scores[order]


class CatalogSearch:
    """Checked search requests -> retrieval -> fusion head -> TOP_K, for a dynamic batch."""

    def __init__(self, retriever: Retriever, head: OrtGraph) -> None:
        self.retriever = retriever
        self.head = head

    @classmethod
    def from_context(cls, context: ModelContext) -> CatalogSearch:
        head = OrtGraph(graph_file(context.repo, FUSION_HEAD), OrtOptions.from_context(context))
        return cls(Retriever.from_context(context), head)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, checked = validate_each(requests, self.retriever.check)
        return merge(outcomes, valid, self.rank(self.retriever.retrieve(checked)))

    def rank(self, batch: Sequence[Candidates]) -> list[Tensors]:
        """Stage 2: one head run per group of requests with the same candidate count."""
        results: list[Tensors] = [{} for _ in batch]
        by_depth: dict[int, list[int]] = {}
        for i, candidates in enumerate(batch):
            by_depth.setdefault(len(candidates.rows), []).append(i)
        for members in by_depth.values():
            group = [batch[i] for i in members]
            scores = self.head.run(self.head_inputs(group))[SCORES]
            for i, candidates, row_scores in zip(members, group, scores):
                ids, best = best_first(row_scores, self.ids(candidates.rows), candidates.top_k)
                results[i] = {ITEM_IDS: ids[None], SCORES: best[None].astype(np.float32)}
        return results

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Catalog rows -> item ids, PAD_ROW kept."""
        item_ids = self.retriever.store.catalog.item_ids
        return np.where(rows != PAD_ROW, item_ids[np.where(rows != PAD_ROW, rows, 0)], PAD_ROW)

    def head_inputs(self, group: Sequence[Candidates]) -> Tensors:
        """The fusion head's feeds for requests of one candidate count: padding rows get zero
        embeddings and unknown (NaN) features, and their scores are dropped by best_first."""
        catalog = self.retriever.store.catalog
        rows = np.stack([c.rows for c in group])
        real = rows != PAD_ROW
        safe = np.where(real, rows, 0)
        embeddings = np.where(real[..., None], catalog.embeddings[safe.ravel()].reshape(*rows.shape, -1), 0.0)
        features = np.where(real[..., None], catalog.features[safe.ravel()].reshape(*rows.shape, -1), np.nan)
        return {
            QUERY_EMBEDDING: np.concatenate([c.query for c in group]).astype(np.float32),
            USER_EMBEDDING: np.concatenate([c.user for c in group]).astype(np.float32),
            ITEM_EMBEDDINGS: embeddings.astype(np.float32),
            ITEM_FEATURES_TENSOR: features.astype(np.float32),
        }
