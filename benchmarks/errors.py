"""The benchmark layer's errors: one root under AisleError, narrow leaves per component."""

from aisle.errors import AisleError


class BenchmarkError(AisleError):
    """A benchmark could not run or produced unusable results (the message names what and why)."""


class PerfAnalyzerError(BenchmarkError):
    """perf_analyzer could not be located, installed, or ran and failed (stderr tail included)."""
