"""The retrieval layer's errors: one root under AisleError, a leaf per kind of bad input."""

from __future__ import annotations

from aisle.errors import AisleError


class RetrievalError(AisleError):
    """Retrieval could not run: a missing or inconsistent index or attributes file, a bad argument."""


class FilterError(RetrievalError, ValueError):
    """A filter value is invalid. `field` and `value` name it, so a server can map it to its tensor."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        super().__init__(f"filter {field}={value!r}: {problem}")
        self.field = field
        self.value = value
