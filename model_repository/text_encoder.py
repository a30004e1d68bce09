"""A text encoder: TEXT [B, 1] bytes -> EMBEDDING [B, D], tokenizer and graph in one process.

On the embedded target the query tower's encoder tokenizes its own requests (aisle.schema.
fuse_tokenizers): the tokenizer logic (tokenizer_logic.BatchTokenizer, each request cut to its own
length bucket) feeds the graph (ort_runner.OrtGraph, one run per bucket) without a stub process in
between. The same pairing embeds cold candidates in-process (cold_items), whichever form the
embedding ensemble's steps take.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.model_repository.batching import Outcome, Tensors, merge
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.ort_runner import OrtGraph
from aisle.model_repository.tokenizer_logic import BatchTokenizer
from aisle.schema import EMBEDDING, TEXT


class TextEncoder:
    """Tokenizes a dynamic batch's texts together, then runs the graph once per length bucket."""

    def __init__(self, tokenizer: BatchTokenizer, graph: OrtGraph) -> None:
        self.tokenizer = tokenizer
        self.graph = graph

    @classmethod
    def from_context(cls, context: ModelContext) -> TextEncoder:
        """A TEXT_ENCODER model: its tokenizer.json and model.onnx lie in its own version directory."""
        return cls(BatchTokenizer.from_context(context), OrtGraph.from_context(context))

    @classmethod
    def serving(cls, context: ModelContext, ensemble: str) -> TextEncoder:
        """What an embedding ensemble runs (tokenizer -> encoder steps, or one text encoder), loaded
        from the repository of `context` into the calling process."""
        steps = context.schema.ensemble(ensemble).steps
        version = context.version_dir.name
        first, last = (ModelContext.load(context.repo, step.model, version) for step in (steps[0], steps[-1]))
        return cls(BatchTokenizer.from_context(first), OrtGraph.from_context(last))

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        tokens = self.tokenizer(requests)
        valid = [index for index, outcome in enumerate(tokens) if not isinstance(outcome, InvalidInput)]
        return merge(tokens, valid, self.graph([tokens[index] for index in valid]))

    def embed(self, texts: np.ndarray) -> np.ndarray:
        """Already-checked texts (a 1-D object array) -> [len, D] float32, as one graph run."""
        (tokens,) = self.tokenizer([{TEXT: texts.reshape(-1, 1)}])
        return self.graph.run(tokens)[EMBEDDING]
