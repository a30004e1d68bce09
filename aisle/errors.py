"""The root of aisle's exceptions. Each layer adds narrow leaves; the CLI maps the root to exit 2."""


class AisleError(Exception):
    """Anything aisle reports to a user as a clear message rather than a traceback."""


class DataError(AisleError):
    """A data file is missing, malformed, or lacks a field (the message names file and field)."""


class CheckpointError(AisleError):
    """A checkpoint or base model directory is missing pieces or disagrees with its manifest."""


class ExportError(AisleError):
    """An export step could not produce a valid artifact."""


class ParityError(ExportError):
    """An exported graph's outputs differ from PyTorch beyond the declared tolerance."""
