"""Errors of the serving layer: the root, and the leaves the python-backend models map to wire codes.

`InvalidInput` is the one error a model returns for a bad request; `model_repository.adapter`
maps it, in one place, to Triton's INVALID_ARGUMENT. Its message names the tensor, the offending
value and the limit, so a client sees exactly what to fix.
"""

from __future__ import annotations

from aisle.errors import AisleError


class ServingError(AisleError):
    """Anything the repository renderer or the server launcher reports to a user."""


class ServerStartError(ServingError):
    """tritonserver could not start (ports taken, early exit, not ready in time); carries its log tail."""


class InvalidInput(ServingError):
    """A request tensor is malformed or out of range; becomes INVALID_ARGUMENT on the wire."""

    def __init__(self, tensor: str, message: str) -> None:
        super().__init__(f"{tensor}: {message}")
        self.tensor = tensor
