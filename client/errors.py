"""The client's exceptions and the one table that maps gRPC status codes to them.

Why a table: tritonclient raises a single `InferenceServerException` whose status is a string
such as "StatusCode.UNAVAILABLE". Callers need to tell "fix your input" from "try again later"
from "the server is not the one you think", so every status is translated here, once, into a
narrow class that keeps the server's own message and the request id the call was sent with.
"""

from __future__ import annotations

from typing import Protocol

from aisle.errors import AisleError


class AisleClientError(AisleError):
    """Root of the client's errors: what failed, the server's message, the call's request id.

    `status` is the gRPC status name ("UNAVAILABLE", ...) when the error came from the wire, or
    None when the client itself refused the call (bad argument, schema mismatch).
    """

    def __init__(self, message: str, *, request_id: str | None = None, status: str | None = None) -> None:
        self.message = message
        self.request_id = request_id
        self.status = status
        details = [f"status {status}"] if status else []
        details += [f"request id {request_id}"] if request_id else []
        super().__init__(f"{message} ({', '.join(details)})" if details else message)


class InvalidInputError(AisleClientError):
    """The request itself is wrong (an argument out of the schema's limits, an unknown item id).

    Never retried: sending the same input again gives the same answer.
    """


class UnavailableError(AisleClientError):
    """The server cannot be reached or is not serving (starting, stopping, restarting)."""


class ResourceExhaustedError(AisleClientError):
    """The server refused the request for lack of capacity (queue full, message too large)."""


class DeadlineExceededError(AisleClientError):
    """The call's deadline (`timeout_s`) passed before the server answered."""


class NotFoundError(AisleClientError):
    """The server does not know the model or resource named in the request."""


class PermissionDeniedError(AisleClientError):
    """The server requires credentials or headers the call did not carry (restricted protocols)."""


class CancelledError(AisleClientError):
    """The call was cancelled before it completed (the client closed, or the server cancelled it)."""


class ServerError(AisleClientError):
    """The server failed for a reason of its own (INTERNAL, UNKNOWN, ...): report it, with the request id."""


class ConfigError(AisleClientError):
    """A client option is out of range or points to a missing file (the message names the option)."""


class SchemaMismatchError(AisleClientError):
    """The server's ensembles differ from the schema this client was built for (wrong repository version)."""


#: The one translation of gRPC status names to client errors; anything absent is a ServerError.
STATUS_ERRORS: dict[str, type[AisleClientError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "OUT_OF_RANGE": InvalidInputError,
    "UNAVAILABLE": UnavailableError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "NOT_FOUND": NotFoundError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": PermissionDeniedError,
    "CANCELLED": CancelledError,
}


#: Answers whose status alone misleads, refined by the server's message:
#: - NOT_FOUND "... has no available versions": a model Triton knows but has not (or no longer)
#:   loaded, which every call sees while a server drains and unloads its models on shutdown. It is
#:   unavailable for now, not unknown: the retried UnavailableError.
#: - INTERNAL "Stub process '<model>_0_0' is not healthy": the model's python stub died; Triton
#:   keeps answering ready and fails every call to that model. The model is unavailable on that
#:   server (another replica, or the same one once its stub is restarted, can answer): retried.
#: - UNAVAILABLE "This protocol is restricted, expecting header ...": the call lacks the header of
#:   a server started with --grpc-restricted-protocol. Retrying cannot add it: PermissionDeniedError.
MESSAGE_ERRORS: tuple[tuple[str, str, type[AisleClientError]], ...] = (
    ("NOT_FOUND", "has no available versions", UnavailableError),
    ("INTERNAL", "is not healthy", UnavailableError),
    ("UNAVAILABLE", "This protocol is restricted", PermissionDeniedError),
)


class TritonException(Protocol):
    """The part of tritonclient's InferenceServerException the mapping reads (kept structural so
    this module imports nothing from tritonclient)."""

    def message(self) -> str | None: ...

    def status(self) -> str | None: ...


def status_name(error: TritonException) -> str | None:
    """ "StatusCode.UNAVAILABLE" -> "UNAVAILABLE"; None for errors raised inside tritonclient itself."""
    status = error.status()
    return status.rsplit(".", 1)[-1] if status else None


def from_triton(error: TritonException, *, request_id: str | None, what: str) -> AisleClientError:
    """Translate one tritonclient exception; `what` names the call ("rank", "server metadata")."""
    status = status_name(error)
    message = error.message() or "no message from the server"
    cls = next(
        (cls for code, fragment, cls in MESSAGE_ERRORS if code == status and fragment in message),
        STATUS_ERRORS.get(status or "", ServerError),
    )
    return cls(f"{what}: {message}", request_id=request_id, status=status)
