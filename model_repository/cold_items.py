"""The cold-start encoder: CANDIDATE_TEXTS [B, N] (+ CANDIDATE_FEATURES [B, N, F]) -> item embeddings.

For candidates the catalog does not hold yet (new listings), rank_cold embeds their texts with the
item tower on the fly. The texts of all requests of a batch are embedded together, in chunks of
the item encoder's maximum batch, through a callable the model supplies (in Triton, a BLS call to
the embed_item ensemble), so cold and catalog embeddings come from the very same path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.item_store import check_count
from aisle.model_repository.tokenizer_logic import decode_texts
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_TEXTS,
    EMBED_ITEM,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES_TENSOR,
    Schema,
)

#: Embeds a 1-D object array of UTF-8 item texts -> [len, D] float32.
EmbedTexts = Callable[[np.ndarray], np.ndarray]


class ColdItemEncoder:
    """Validates candidate texts and features, embeds all texts of a batch in encoder-sized chunks."""

    def __init__(self, embed: EmbedTexts, *, dim: int, max_candidates: int, num_features: int, chunk_size: int) -> None:
        self.embed = embed
        self.dim = dim
        self.max_candidates = max_candidates
        self.num_features = num_features
        self.chunk_size = chunk_size

    @classmethod
    def for_schema(cls, schema: Schema, embed: EmbedTexts) -> ColdItemEncoder:
        """Chunks as large as embed_item's max_batch_size: one chunk is one ensemble request."""
        return cls(
            embed,
            dim=schema.embedding_dim,
            max_candidates=schema.max_candidates,
            num_features=len(schema.item_features),
            chunk_size=schema.ensemble(EMBED_ITEM).max_batch_size,
        )

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, inputs = validate_each(requests, self._validate)
        flat = np.concatenate([r[CANDIDATE_TEXTS].reshape(-1) for r in inputs]) if inputs else np.empty(0, object)
        chunks = [self.embed(flat[start : start + self.chunk_size]) for start in range(0, len(flat), self.chunk_size)]
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        results = []
        start = 0
        for request in inputs:
            texts = request[CANDIDATE_TEXTS]
            stop = start + texts.size
            results.append(
                {
                    ITEM_EMBEDDINGS: embeddings[start:stop].reshape(*texts.shape, self.dim),
                    ITEM_FEATURES_TENSOR: request[CANDIDATE_FEATURES],
                }
            )
            start = stop
        return merge(outcomes, valid, results)

    def _validate(self, request: Tensors) -> Tensors:
        texts, features = request[CANDIDATE_TEXTS], request[CANDIDATE_FEATURES]
        check_count(texts, CANDIDATE_TEXTS, self.max_candidates, "max_candidates", "candidates")
        if features.shape != (*texts.shape, self.num_features):
            raise InvalidInput(
                CANDIDATE_FEATURES,
                f"shape {list(features.shape)} does not match {CANDIDATE_TEXTS} shape {list(texts.shape)}: "
                f"expected {[*texts.shape, self.num_features]} (one row of {self.num_features} features per text)",
            )
        decoded = decode_texts(texts, CANDIDATE_TEXTS)
        utf8 = np.array([t.encode("utf-8") for t in decoded], dtype=object).reshape(texts.shape)
        return {CANDIDATE_TEXTS: utf8, CANDIDATE_FEATURES: features}
