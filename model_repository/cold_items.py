"""The cold-start encoder: CANDIDATE_TEXTS [B, N] (+ CANDIDATE_FEATURES [B, N, F]) -> item embeddings.

For candidates the catalog does not hold yet (new listings), rank_cold embeds their texts with the
item tower on the fly: the texts of all requests of a batch are sorted by length and embedded in
chunks of the item encoder's maximum batch, with the tokenizer.json and model.onnx that embed_item
serves (TextEncoder.serving), so cold and catalog embeddings come from the same tower.

Why in-process and not a BLS call to embed_item: tritonserver refuses every new request, BLS ones
included, once it starts shutting down, so a rank_cold request caught by SIGTERM between two BLS
chunks would fail instead of draining. The cost: on GPU targets the cold path runs onnxruntime
(CPU) in this model's stub rather than the TensorRT engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.text_encoder import TextEncoder
from aisle.model_repository.validation import check_count, check_features, cut_texts
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_TEXTS,
    EMBED_ITEM,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES_TENSOR,
    NUM_ITEM_FEATURES,
)

#: Embeds a 1-D object array of UTF-8 item texts -> [len, D] float32.
EmbedTexts = Callable[[np.ndarray], np.ndarray]


class ColdItemEncoder:
    """Validates candidate texts and features, embeds all texts of a batch in encoder-sized chunks."""

    def __init__(
        self,
        embed: EmbedTexts,
        *,
        dim: int,
        max_candidates: int,
        num_features: int,
        chunk_size: int,
        max_text_bytes: int,
    ) -> None:
        self.embed = embed
        self.max_text_bytes = max_text_bytes
        self.dim = dim
        self.max_candidates = max_candidates
        self.num_features = num_features
        self.chunk_size = chunk_size

    @classmethod
    def from_context(cls, context: ModelContext) -> ColdItemEncoder:
        """What embed_item's steps run; chunks as large as its max_batch_size."""
        schema = context.schema
        return cls(
            TextEncoder.serving(context, EMBED_ITEM).embed,
            dim=schema.embedding_dim,
            max_candidates=schema.limits.max_candidates,
            num_features=NUM_ITEM_FEATURES,
            chunk_size=schema.ensemble(EMBED_ITEM).max_batch_size,
            max_text_bytes=schema.limits.max_item_text_bytes,
        )

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, inputs = validate_each(requests, self._validate)
        flat = np.concatenate([r[CANDIDATE_TEXTS].reshape(-1) for r in inputs]) if inputs else np.empty(0, object)
        embeddings = self._embed_sorted(flat)
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

    def _embed_sorted(self, texts: np.ndarray) -> np.ndarray:
        """Embed shortest first, so each chunk pads to a small bucket; rows come back in input order."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        embeddings = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), self.chunk_size):
            rows = order[start : start + self.chunk_size]
            embeddings[rows] = self.embed(texts[rows])
        return embeddings

    def _validate(self, request: Tensors) -> Tensors:
        texts, features = request[CANDIDATE_TEXTS], request[CANDIDATE_FEATURES]
        check_count(texts, CANDIDATE_TEXTS, self.max_candidates, "max_candidates", "candidates")
        check_features(features, texts, self.num_features)
        return {CANDIDATE_TEXTS: cut_texts(texts, CANDIDATE_TEXTS, self.max_text_bytes), CANDIDATE_FEATURES: features}
