"""A text encoder: TEXT [B, 1] bytes -> EMBEDDING [B, D], tokenizer and graph in one process.

On the embedded target the query tower's encoder tokenizes its own requests (aisle.schema.
fuse_tokenizers): the tokenizer logic (tokenizer_logic.BatchTokenizer, each request cut to its own
length bucket) feeds the graph (ort_runner.OrtGraph, one run per bucket) without a stub process in
between. The same pairing embeds cold candidates in-process (cold_items), whichever form the
embedding ensemble's steps take, and EmbedsItsText runs the query tower inside catalog_search
(aisle.schema.fuse_encoders), which makes search one step on the embedded target.

Each run is cut to its longest text (aisle.tokenization.longest_width) rather than padded to the
bucket: with the batch formed, padding would only add cost. Shop queries average 7 tokens, so most
sit well inside bucket 8 or 16; measured with perf_analyzer (embed_query, small shop, two
interleaved pairs, bucket-padded vs cut) p50 at concurrency 1 7.38 / 7.00 vs 6.86 / 6.78 ms and
503 / 538 vs 586 / 572 req/s at 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.export.repo_format import GRAPH_FILE
from aisle.model_repository.batching import Logic, Outcome, Tensors, merge, run_stacked
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.ort_runner import OrtGraph, OrtOptions
from aisle.model_repository.tokenizer_logic import BatchTokenizer
from aisle.schema import ATTENTION_MASK, EMBEDDING, TEXT, FoldedEncoder
from aisle.tokenization import longest_width


class TextEncoder:
    """Tokenizes a dynamic batch's texts together, then runs the graph once per length bucket,
    each run cut to its longest text."""

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
        return merge(tokens, valid, run_stacked([tokens[index] for index in valid], self.run))

    def run(self, tokens: Tensors) -> Tensors:
        """One graph run over a stacked batch of token tensors, cut to its longest text."""
        width = longest_width(tokens[ATTENTION_MASK])
        return self.graph.run({name: array[:, :width] for name, array in tokens.items()})

    def embed(self, texts: np.ndarray) -> np.ndarray:
        """Already-checked texts (a 1-D object array) -> [len, D] float32, as one graph run."""
        (tokens,) = self.tokenizer([{TEXT: texts.reshape(-1, 1)}])
        return self.run(tokens)[EMBEDDING]


class EmbedsItsText:
    """A model's logic behind the text encoder folded into it (ModelDecl.folded_encoder, embedded
    target): the request's text is embedded in this process and reaches the logic as the embedding
    input the model was declared with, so the logic is the same on every target.

    The encoder's files are the encoder model's own (its tokenizer.json and model.onnx); its session
    takes this model's thread setting, since it runs in this model's instances.
    """

    def __init__(self, encoder: TextEncoder, fold: FoldedEncoder, logic: Logic) -> None:
        self.encoder = encoder
        self.fold = fold
        self.logic = logic

    @classmethod
    def wrap(cls, context: ModelContext, logic: Logic) -> Logic:
        """`logic` behind its model's folded encoder; `logic` itself where nothing was folded."""
        fold = context.decl.folded_encoder
        if fold is None:
            return logic
        encoder = ModelContext.load(context.repo, fold.encoder, context.version_dir.name)
        graph = OrtGraph(encoder.version_dir / GRAPH_FILE, OrtOptions.from_context(context))
        return cls(TextEncoder(BatchTokenizer.from_context(encoder, source=fold.text), graph), fold, logic)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        embedded = self.encoder([{TEXT: request[self.fold.text]} for request in requests])
        valid = [index for index, outcome in enumerate(embedded) if not isinstance(outcome, InvalidInput)]
        inputs = [
            {name: array for name, array in requests[index].items() if name != self.fold.text}
            | {self.fold.embedding: embedded[index][EMBEDDING]}
            for index in valid
        ]
        return merge(embedded, valid, self.logic(inputs))
