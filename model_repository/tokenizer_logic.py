"""The tokenizer models: TEXT [B, 1] bytes -> INPUT_IDS, ATTENTION_MASK [B, bucket] int64.

All texts of a dynamic batch go through one Rust `tokenizers` call (aisle.tokenization.encode_batch,
the same function training and export use). Each request is then cut back to the smallest bucket
that fits its own longest text, so the encoder's batcher, which merges only same-shape requests,
can merge requests of one bucket regardless of what else the tokenizer batched them with.

Each text is cut to ServingLimits.max_text_bytes of its buckets before tokenizing (bytes past the
cut are never read): a multi-MB text costs what its first kilobytes cost, and an ordinary text,
whose largest-bucket tokens lie well within the cut, gets the same ids as uncut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.validation import decode_texts
from aisle.schema import ATTENTION_MASK, INPUT_IDS, TEXT, Schema, tokenizer_buckets
from aisle.tokenization import Bucketing, encode_batch, load_tokenizer


def public_inputs(schema: Schema, model: str, tensor: str) -> str:
    """The ensemble inputs that reach `tensor` of `model`, e.g. "QUERY" for query_tokenizer's TEXT.

    Errors name the tensor the client sent, not the internal one.
    """
    names = sorted(
        {
            source
            for ensemble in schema.ensembles
            for step in ensemble.steps
            if step.model == model
            for target, source in step.input_map
            if target == tensor and source in {t.name for t in ensemble.inputs}
        }
    )
    return "/".join(names) or tensor


class BatchTokenizer:
    """Tokenises the requests of one dynamic batch together, each padded to its own bucket."""

    def __init__(self, tokenizer: Tokenizer, bucketing: Bucketing, *, max_text_bytes: int, source: str = TEXT) -> None:
        self.tokenizer = tokenizer
        self.bucketing = bucketing
        self.max_text_bytes = max_text_bytes
        self.source = source

    @classmethod
    def from_context(cls, context: ModelContext, source: str | None = None) -> BatchTokenizer:
        """The tokenizer of a tokenizing model; errors name `source`, by default the ensemble inputs
        that reach its TEXT."""
        buckets = tokenizer_buckets(context.decl)
        tokenizer = load_tokenizer(context.version_dir, max_length=buckets[-1])
        return cls(
            tokenizer,
            Bucketing(buckets),
            max_text_bytes=context.schema.limits.max_text_bytes(buckets),
            source=source or public_inputs(context.schema, context.decl.name, TEXT),
        )

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, inputs = validate_each(requests, self._decode)
        texts = [list(request[TEXT]) for request in inputs]
        flat = [text for request_texts in texts for text in request_texts]
        ids, mask = encode_batch(self.tokenizer, flat, self.bucketing)
        results = []
        start = 0
        for request_texts in texts:
            rows = slice(start, start + len(request_texts))
            start = rows.stop
            # Blank texts have an all-zero mask but still two special tokens; the smallest bucket
            # (>= 2 by construction) always holds them, so the mask alone decides the width.
            width = self.bucketing.bucket_for(int(mask[rows].sum(axis=1).max(initial=0)))
            results.append({INPUT_IDS: ids[rows, :width], ATTENTION_MASK: mask[rows, :width]})
        return merge(outcomes, valid, results)

    def _decode(self, request: Tensors) -> Tensors:
        texts = decode_texts(request[TEXT], self.source, max_bytes=self.max_text_bytes)
        return {TEXT: np.array(texts, dtype=object)}
