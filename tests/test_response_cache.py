"""The response cache: only the query encoder enables it, the launcher sizes it, and a server with
a cache answers a repeated query from it with the same embedding."""

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from aisle.benchmarks.server_stats import cache_hits
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports
from aisle.schema import EMBED_QUERY, EMBEDDING, QUERY, QUERY_ENCODER, build_schema

pytestmark = pytest.mark.server


def embed(client: grpcclient.InferenceServerClient, text: str) -> np.ndarray:
    tensor = grpcclient.InferInput(QUERY, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    return client.infer(EMBED_QUERY, [tensor], client_timeout=120).as_numpy(EMBEDDING)


def test_only_the_query_encoder_asks_for_the_response_cache() -> None:
    assert [m.name for m in build_schema().models if m.response_cache] == [QUERY_ENCODER]


def test_the_launcher_passes_cache_flags_only_for_a_sized_cache(tmp_path: Path) -> None:
    assert not any(a.startswith("--cache") for a in TritonServer(ServerConfig(tmp_path)).command())
    command = TritonServer(ServerConfig(tmp_path, response_cache_mb=16)).command()
    assert f"--cache-config=local,size={16 * 2**20}" in command
    (directory,) = [a.split("=", 1)[1] for a in command if a.startswith("--cache-directory=")]
    assert (Path(directory) / "local" / "libtritoncache_local.so").is_file()
    with pytest.raises(ValueError, match="response_cache_mb=-1"):
        ServerConfig(tmp_path, response_cache_mb=-1)


def test_a_repeated_query_is_answered_from_the_cache_with_the_same_embedding(embedded_repo: Path) -> None:
    with TritonServer(ServerConfig(embedded_repo, *free_ports(3), response_cache_mb=16)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        first = embed(client, "running shoes")
        before = cache_hits(client, QUERY_ENCODER)
        repeats = [embed(client, "running shoes") for _ in range(3)]
        assert cache_hits(client, QUERY_ENCODER) - before == 3
        for again in repeats:
            np.testing.assert_array_equal(again, first)
        other = embed(client, "rain jacket")
        assert cache_hits(client, QUERY_ENCODER) - before == 3  # a new query is computed
        assert not np.allclose(other, first)


def test_a_server_without_a_cache_computes_every_query(triton_server) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    for _ in range(3):
        embed(client, "running shoes")
    assert cache_hits(client, QUERY_ENCODER) == 0
