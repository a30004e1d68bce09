"""The one table from gRPC status codes to client errors, applied to tritonclient's real exception."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from aisle.client.errors import (
    STATUS_ERRORS,
    AisleClientError,
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    UnavailableError,
    from_triton,
)
from aisle.errors import AisleError


def triton_error(status: str | None, message: str = "something happened") -> InferenceServerException:
    """What tritonclient raises: the status as str(grpc.StatusCode.X), as in its raise_error_grpc."""
    return InferenceServerException(msg=message, status=None if status is None else str(grpc.StatusCode[status]))


@pytest.mark.parametrize("status", sorted(STATUS_ERRORS))
def test_each_listed_status_maps_to_its_error_class(status: str) -> None:
    error = from_triton(triton_error(status), request_id="abc", what="rank")
    assert type(error) is STATUS_ERRORS[status]
    assert error.status == status


def test_the_table_sends_the_statuses_callers_act_on_to_distinct_classes() -> None:
    assert STATUS_ERRORS["INVALID_ARGUMENT"] is InvalidInputError
    assert STATUS_ERRORS["UNAVAILABLE"] is UnavailableError
    assert STATUS_ERRORS["DEADLINE_EXCEEDED"] is DeadlineExceededError


@pytest.mark.parametrize("status", ["INTERNAL", "UNKNOWN", "UNIMPLEMENTED", None])
def test_unlisted_statuses_and_client_side_failures_become_server_errors(status: str | None) -> None:
    error = from_triton(triton_error(status), request_id=None, what="embed_query")
    assert type(error) is ServerError
    assert error.status == status


def test_errors_keep_the_server_message_the_call_and_the_request_id() -> None:
    server_message = "in ensemble 'rank', CANDIDATE_IDS: unknown item id 123456 (catalog has 200 items)"
    error = from_triton(triton_error("INVALID_ARGUMENT", server_message), request_id="req-42", what="rank")
    assert error.message == f"rank: {server_message}"
    assert error.request_id == "req-42"
    assert str(error) == f"rank: {server_message} (status INVALID_ARGUMENT, request id req-42)"


def test_every_client_error_is_an_aisle_error() -> None:
    for cls in {*STATUS_ERRORS.values(), ServerError}:
        assert issubclass(cls, AisleClientError) and issubclass(cls, AisleError)


def test_a_model_with_no_loaded_version_is_unavailable_while_an_unknown_one_is_not_found() -> None:
    draining = triton_error("NOT_FOUND", "Request for unknown model: 'rank' has no available versions")
    unknown = triton_error("NOT_FOUND", "Request for unknown model: 'rank' is not found")
    assert type(from_triton(draining, request_id=None, what="rank")) is UnavailableError
    assert type(from_triton(unknown, request_id=None, what="rank")) is NotFoundError


def test_a_missing_restricted_protocol_header_is_permission_denied_not_a_retried_outage() -> None:
    message = "This protocol is restricted, expecting header 'triton-grpc-protocol-aisle-key'"
    error = from_triton(triton_error("UNAVAILABLE", message), request_id=None, what="rank")
    assert type(error) is PermissionDeniedError and error.status == "UNAVAILABLE"
