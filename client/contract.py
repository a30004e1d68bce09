"""Check, at first use, that the server serves the ensembles this client was built for.

Why: a repository rendered by another aisle version (a renamed tensor, a changed dtype, a
different max batch) would otherwise fail deep inside some later call with an opaque Triton
message, or worse, return misaligned results. Comparing the server's model metadata and configs
with `aisle.schema` once, before the first request, turns that into one clear SchemaMismatchError
listing every difference.

The embedding size is not fixed by aisle (it comes from the checkpoint), so it is read from the
server's `embed_query` output and the expected schema is built for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tritonclient.grpc.service_pb2 import ModelMetadataResponse

from aisle.schema import EMBED_QUERY, EMBEDDING, EnsembleDecl, Schema, TensorDecl, build_schema

from .errors import SchemaMismatchError

#: The ensembles a client needs, by name (their names do not depend on the embedding size).
CONTRACT_ENSEMBLES: tuple[str, ...] = tuple(decl.name for decl in build_schema().ensembles)


@dataclass(frozen=True)
class ServedEnsemble:
    """What the server reports about one ensemble: its metadata and its configured max batch."""

    metadata: ModelMetadataResponse
    max_batch_size: int


def wire_shape(decl: EnsembleDecl, tensor: TensorDecl) -> list[int]:
    """The shape Triton reports for a declared tensor: a leading -1 when the ensemble batches."""
    return ([-1] if decl.max_batch_size > 0 else []) + list(tensor.dims)


def served_embedding_dim(url: str, served: Mapping[str, ServedEnsemble | None]) -> int:
    """The embedding size the server's query tower produces (last dim of embed_query's output)."""
    ensemble = served.get(EMBED_QUERY)
    shapes = {t.name: list(t.shape) for t in ensemble.metadata.outputs} if ensemble else {}
    shape = shapes.get(EMBEDDING)
    if not shape or shape[-1] <= 0:
        raise SchemaMismatchError(
            f"server {url}: cannot read the embedding size: {EMBED_QUERY} output {EMBEDDING} is "
            f"{'missing' if shape is None else shape}; is it an aisle repository?"
        )
    return shape[-1]


def ensemble_mismatches(decl: EnsembleDecl, served: ServedEnsemble | None) -> list[str]:
    """Every difference between one declared ensemble and what the server reports for it."""
    if served is None:
        return [f"no ensemble {decl.name!r}"]
    problems = []
    if served.max_batch_size != decl.max_batch_size:
        problems.append(f"{decl.name}: max_batch_size {served.max_batch_size}, expected {decl.max_batch_size}")
    for kind, declared, reported in (
        ("input", decl.inputs, served.metadata.inputs),
        ("output", decl.outputs, served.metadata.outputs),
    ):
        by_name = {t.name: t for t in reported}
        for tensor in declared:
            got = by_name.get(tensor.name)
            if got is None:
                problems.append(f"{decl.name}: no {kind} {tensor.name}")
                continue
            if got.datatype != tensor.dtype.value:
                problems.append(f"{decl.name}: {kind} {tensor.name} is {got.datatype}, expected {tensor.dtype.value}")
            if list(got.shape) != wire_shape(decl, tensor):
                problems.append(
                    f"{decl.name}: {kind} {tensor.name} has dims {list(got.shape)}, expected {wire_shape(decl, tensor)}"
                )
        if kind == "input":
            extra = sorted(set(by_name) - {t.name for t in declared})
            problems += [f"{decl.name}: unexpected input {name} (the client would not send it)" for name in extra]
    return problems


def verify_contract(url: str, served: Mapping[str, ServedEnsemble | None]) -> Schema:
    """The schema for the served embedding size, once every ensemble matches it.

    `served` maps each of CONTRACT_ENSEMBLES to what the server reported, or None when the server
    does not know it. Raises SchemaMismatchError naming every mismatch.
    """
    schema = build_schema(served_embedding_dim(url, served))
    problems = [p for decl in schema.ensembles for p in ensemble_mismatches(decl, served.get(decl.name))]
    if problems:
        raise SchemaMismatchError(
            f"server {url} does not serve the ensembles aisle.client expects "
            f"(a repository rendered by another aisle version?): {'; '.join(problems)}"
        )
    return schema
