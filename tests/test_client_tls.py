"""TLS and restricted protocols against a server started with a self-signed certificate.

One extra server serves both concerns: gRPC over TLS (--grpc-use-ssl) with inference restricted to
calls carrying a header (--grpc-restricted-protocol), as a deployment exposed beyond loopback would
be. Expected values come from plain tritonclient calls over the same TLS channel.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from aisle.client import (
    AisleClient,
    ClientConfig,
    PermissionDeniedError,
    RetryConfig,
    TlsConfig,
    UnavailableError,
)
from aisle.data.format import ITEMS, read_items
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports
from aisle.schema import CANDIDATE_IDS, QUERY, RANK, SCORES, USER_HISTORY_IDS

pytestmark = [pytest.mark.server, pytest.mark.slow]

#: gRPC clients send a restricted protocol's key as the header "triton-grpc-protocol-<key>".
PROTOCOL_KEY, PROTOCOL_VALUE = "aisle-key", "s3cret"
HEADERS = {f"triton-grpc-protocol-{PROTOCOL_KEY}": PROTOCOL_VALUE}
#: Refusals are final: retrying a failed handshake only slows the test down.
NO_RETRY = RetryConfig(max_attempts=1)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for localhost / 127.0.0.1, made with the openssl command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(embedded_repo: Path, certificate: tuple[Path, Path]) -> Iterator[TritonServer]:
    cert, key = certificate
    extra_args = (
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={cert}",
        f"--grpc-server-key={key}",
        f"--grpc-restricted-protocol=inference:{PROTOCOL_KEY}={PROTOCOL_VALUE}",
    )
    server = TritonServer(ServerConfig(embedded_repo, *free_ports(3), extra_args=extra_args))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ids(tiny_data: Path) -> np.ndarray:
    return np.array([item.item_id for item in read_items(tiny_data / ITEMS)][:15], dtype=np.int64)


def tls_config(server: TritonServer, cert: Path | None, **options: object) -> ClientConfig:
    return ClientConfig(url=server.grpc_url, tls=TlsConfig(root_certificates=cert), retry=NO_RETRY, **options)  # type: ignore[arg-type]


def raw_tls_rank(server: TritonServer, cert: Path, query: str, candidates: np.ndarray) -> np.ndarray:
    arrays = {
        QUERY: np.array([[query]], dtype=object),
        CANDIDATE_IDS: candidates[None],
        USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
    }
    inputs = []
    for name, array in arrays.items():
        infer_input = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64")
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    with grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(cert)) as raw:
        return raw.infer(RANK, inputs, headers=HEADERS).as_numpy(SCORES)[0]


def test_a_client_trusting_the_certificate_and_sending_the_header_gets_the_raw_results(
    tls_server: TritonServer, certificate: tuple[Path, Path], ids: np.ndarray
) -> None:
    cert, _ = certificate
    with AisleClient(config=tls_config(tls_server, cert, headers=HEADERS)) as client:
        assert client.is_ready()
        result = client.rank("tent", ids)
        assert client.embed_queries(["tent"]).shape == (1, client.schema.embedding_dim)
    np.testing.assert_allclose(result.raw_scores, raw_tls_rank(tls_server, cert, "tent", ids), rtol=0, atol=1e-5)


def test_a_call_without_the_restricted_protocol_header_is_permission_denied(
    tls_server: TritonServer, certificate: tuple[Path, Path], ids: np.ndarray
) -> None:
    cert, _ = certificate
    with AisleClient(config=tls_config(tls_server, cert)) as client:
        with pytest.raises(PermissionDeniedError, match=f"triton-grpc-protocol-{PROTOCOL_KEY}"):
            client.rank("tent", ids)


def test_a_client_that_does_not_trust_the_certificate_is_refused_at_the_handshake(
    tls_server: TritonServer, ids: np.ndarray
) -> None:
    with AisleClient(config=tls_config(tls_server, None, headers=HEADERS)) as client:
        assert not client.is_ready()
        with pytest.raises(UnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            client.rank("tent", ids)


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_server: TritonServer, ids: np.ndarray) -> None:
    with AisleClient(config=ClientConfig(url=tls_server.grpc_url, retry=NO_RETRY, headers=HEADERS)) as client:
        assert not client.is_ready()
        with pytest.raises(UnavailableError):
            client.rank("tent", ids)
