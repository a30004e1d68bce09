"""The first-use check of the server's ensembles against the schema, on metadata protobufs built
the way Triton reports them (batched ensembles report a leading -1)."""

from __future__ import annotations

import pytest
from tritonclient.grpc.service_pb2 import ModelMetadataResponse

from aisle.client.contract import CONTRACT_ENSEMBLES, ServedEnsemble, verify_contract, wire_shape
from aisle.client.errors import SchemaMismatchError
from aisle.schema import (
    CANDIDATE_IDS,
    EMBED_QUERY,
    EMBEDDING,
    QUERY,
    RANK,
    RANK_COLD,
    Schema,
    ServingLimits,
    build_schema,
)

URL = "127.0.0.1:8001"


def served_as_declared(schema: Schema) -> dict[str, ServedEnsemble | None]:
    """What a server rendered from `schema` reports for each ensemble."""
    served: dict[str, ServedEnsemble | None] = {}
    for decl in schema.ensembles:
        metadata = ModelMetadataResponse(name=decl.name, versions=["1"], platform="ensemble")
        for tensor in decl.inputs:
            metadata.inputs.add(name=tensor.name, datatype=tensor.dtype.value, shape=wire_shape(decl, tensor))
        for tensor in decl.outputs:
            metadata.outputs.add(name=tensor.name, datatype=tensor.dtype.value, shape=wire_shape(decl, tensor))
        served[decl.name] = ServedEnsemble(metadata, decl.max_batch_size, dict(decl.parameters))
    return served


def tensor(served: dict[str, ServedEnsemble | None], ensemble: str, name: str) -> ModelMetadataResponse.TensorMetadata:
    entry = served[ensemble]
    assert entry is not None
    return next(t for t in [*entry.metadata.inputs, *entry.metadata.outputs] if t.name == name)


def test_a_matching_server_yields_the_schema_for_its_embedding_size() -> None:
    schema = verify_contract(URL, served_as_declared(build_schema(48)))
    assert schema.embedding_dim == 48
    assert schema == build_schema(48)


def test_the_contract_covers_every_declared_ensemble() -> None:
    assert set(CONTRACT_ENSEMBLES) == {decl.name for decl in build_schema().ensembles}


def test_a_renamed_tensor_is_reported_with_its_ensemble() -> None:
    served = served_as_declared(build_schema())
    tensor(served, RANK, CANDIDATE_IDS).name = "ITEM_IDS"
    with pytest.raises(SchemaMismatchError) as info:
        verify_contract(URL, served)
    assert "rank: no input CANDIDATE_IDS" in info.value.message
    assert "rank: unexpected input ITEM_IDS" in info.value.message
    assert URL in info.value.message


def test_wrong_dtype_dims_and_max_batch_are_all_reported_at_once() -> None:
    served = served_as_declared(build_schema())
    tensor(served, RANK, CANDIDATE_IDS).datatype = "INT32"
    del tensor(served, RANK_COLD, QUERY).shape[:]
    tensor(served, RANK_COLD, QUERY).shape.extend([-1])
    rank = served[RANK]
    assert rank is not None
    served[RANK] = ServedEnsemble(rank.metadata, 4)
    with pytest.raises(SchemaMismatchError) as info:
        verify_contract(URL, served)
    message = info.value.message
    assert "rank: input CANDIDATE_IDS is INT32, expected INT64" in message
    assert "rank_cold: input QUERY has dims [-1], expected [-1, 1]" in message
    assert "rank: max_batch_size 4, expected 8" in message


def test_a_missing_ensemble_is_named() -> None:
    served = served_as_declared(build_schema())
    served[RANK_COLD] = None
    with pytest.raises(SchemaMismatchError, match="no ensemble 'rank_cold'"):
        verify_contract(URL, served)


def test_an_unreadable_embedding_size_says_what_was_found() -> None:
    served = served_as_declared(build_schema())
    embedding = tensor(served, "embed_query", EMBEDDING)
    embedding.name = "VECTOR"
    with pytest.raises(SchemaMismatchError, match="cannot read the embedding size.*missing"):
        verify_contract(URL, served)


def test_the_client_takes_the_limits_the_server_declares() -> None:
    limits = ServingLimits(query_buckets=(4, 24), max_candidates=7, max_history=3, history_decay=0.5)
    schema = verify_contract(URL, served_as_declared(build_schema(48, limits)))
    assert schema.limits == limits


def test_a_server_without_declared_limits_is_a_mismatch_naming_the_parameter() -> None:
    served = served_as_declared(build_schema())
    entry = served[EMBED_QUERY]
    assert entry is not None
    served[EMBED_QUERY] = ServedEnsemble(entry.metadata, entry.max_batch_size, {})
    with pytest.raises(SchemaMismatchError, match="serving limits.*aisle.query_buckets"):
        verify_contract(URL, served)


def test_ensembles_declaring_different_limits_are_a_mismatch() -> None:
    served = served_as_declared(build_schema())
    entry = served[RANK]
    assert entry is not None
    changed = {**entry.parameters, "aisle.max_candidates": "5"}
    served[RANK] = ServedEnsemble(entry.metadata, entry.max_batch_size, changed)
    with pytest.raises(SchemaMismatchError, match="rank: parameter aisle.max_candidates='5', expected '1000'"):
        verify_contract(URL, served)
