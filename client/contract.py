"""Check, at first use, that the server serves the ensembles this client was built for.

Why: a repository rendered by another aisle version (a renamed tensor, a changed dtype, a
different max batch) would otherwise fail deep inside some later call with an opaque Triton
message, or worse, return misaligned results. Comparing the server's model metadata and configs
with `aisle.schema` once, before the first request, turns that into one clear SchemaMismatchError
listing every difference.

The embedding size and the serving limits (length buckets, max candidates, max history, ...) are
not fixed by aisle: they come from the checkpoint and the rendering. The embedding size is read from
the server's `embed_query` output and the limits from its config `parameters` (every ensemble
carries them), and the expected schema is built for both, so the client's argument checks are the
server's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tritonclient.grpc.service_pb2 import ModelMetadataResponse

from aisle.schema import EMBED_QUERY, EMBEDDING, EnsembleDecl, Schema, ServingLimits, TensorDecl, build_schema

from .errors import SchemaMismatchError

#: The ensembles a client needs, by name (their names do not depend on the embedding size).
CONTRACT_ENSEMBLES: tuple[str, ...] = tuple(decl.name for decl in build_schema().ensembles)


@dataclass(frozen=True)
class ServedEnsemble:
    """What the server reports about one ensemble: metadata, configured max batch, config parameters."""

    metadata: ModelMetadataResponse
    max_batch_size: int
    parameters: Mapping[str, str] = field(default_factory=dict)


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


def served_limits(url: str, served: Mapping[str, ServedEnsemble | None]) -> ServingLimits:
    """The ServingLimits the server declares in its embed_query ensemble's config parameters."""
    ensemble = served.get(EMBED_QUERY)
    try:
        return ServingLimits.from_parameters(ensemble.parameters if ensemble else {})
    except ValueError as e:
        raise SchemaMismatchError(
            f"server {url}: cannot read its serving limits from {EMBED_QUERY}'s config: {e} "
            "(a repository rendered by an older aisle? render it again with `aisle export repo`)"
        ) from e


def ensemble_mismatches(decl: EnsembleDecl, served: ServedEnsemble | None) -> list[str]:
    """Every difference between one declared ensemble and what the server reports for it."""
    if served is None:
        return [f"no ensemble {decl.name!r}"]
    problems = []
    for key, value in decl.parameters:
        if served.parameters.get(key) != value:
            problems.append(f"{decl.name}: parameter {key}={served.parameters.get(key)!r}, expected {value!r}")
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
    """The schema for the served embedding size and limits, once every ensemble matches it.

    `served` maps each of CONTRACT_ENSEMBLES to what the server reported, or None when the server
    does not know it. Raises SchemaMismatchError naming every mismatch.
    """
    schema = build_schema(served_embedding_dim(url, served), served_limits(url, served))
    problems = [p for decl in schema.ensembles for p in ensemble_mismatches(decl, served.get(decl.name))]
    if problems:
        raise SchemaMismatchError(
            f"server {url} does not serve the ensembles aisle.client expects "
            f"(a repository rendered by another aisle version?): {'; '.join(problems)}"
        )
    return schema
