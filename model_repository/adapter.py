"""Glue between Triton's python backend and the logic modules. Imported only inside tritonserver.

Every model.py subclasses PythonModel and names its logic; this module turns Triton requests into
numpy dicts, the logic's outcomes into responses, and InvalidInput into INVALID_ARGUMENT: the one
place where aisle errors meet wire codes on the server side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from threadpoolctl import threadpool_limits

from aisle.model_repository.batching import Logic, Outcome
from aisle.model_repository.catalog_store import (
    CATALOG_OPEN_SECONDS_METRIC,
    CATALOG_SWITCH_FAILED_METRIC,
    CATALOG_VERSION_METRIC,
    FollowsServedCatalog,
    ReaderState,
)
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput


def to_response(outcome: Outcome) -> Any:
    """Output tensors, or INVALID_ARGUMENT carrying the message that names tensor and value."""
    if isinstance(outcome, InvalidInput):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(outcome), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in outcome.items()]
    )


class CatalogGauges:
    """A catalog reader's state as gauges on Triton's /metrics, so a scrape of every replica shows
    which catalog version each one answers from, which could not open the served one, and how long
    each took to open its version."""

    def __init__(self, labels: dict[str, str]) -> None:
        gauge = pb_utils.MetricFamily.GAUGE
        self.families = [
            pb_utils.MetricFamily(
                name=CATALOG_VERSION_METRIC, description="catalog version this reader answers from", kind=gauge
            ),
            pb_utils.MetricFamily(
                name=CATALOG_SWITCH_FAILED_METRIC,
                description="1 while the served catalog version failed to open here (answers from an older one)",
                kind=gauge,
            ),
            pb_utils.MetricFamily(
                name=CATALOG_OPEN_SECONDS_METRIC,
                description="seconds this reader took to open the version it answers from (the batch that "
                "switched to it waited as long)",
                kind=gauge,
            ),
        ]
        self.metrics = [family.Metric(labels=labels) for family in self.families]

    def __call__(self, state: ReaderState) -> None:
        version, failed, open_s = self.metrics
        version.set(float(state.version))
        failed.set(float(state.switch_failed))
        open_s.set(state.open_s)

    def close(self) -> None:
        """Metrics before their families, as the python backend requires."""
        self.metrics.clear()
        self.families.clear()


def catalog_reader(logic: Logic) -> FollowsServedCatalog | None:
    """The catalog follower of a model's logic, also behind wrappers (text_encoder.EmbedsItsText
    keeps the logic it wraps as `.logic`); None for models that do not read the catalog."""
    while not isinstance(logic, FollowsServedCatalog):
        logic = getattr(logic, "logic", None)
        if logic is None:
            return None
    return logic


class PythonModel:
    """Base of the TritonPythonModel classes: build the logic once, then adapt every batch to it."""

    def build(self, context: ModelContext) -> Logic:
        raise NotImplementedError(f"{type(self).__name__} must say which logic it runs")

    def initialize(self, args: dict[str, Any]) -> None:
        context = ModelContext.from_triton_args(args)
        self.input_names = [tensor.name for tensor in context.decl.inputs]
        self.logic = self.build(context)
        self.gauges: CatalogGauges | None = None
        reader = catalog_reader(self.logic)
        if reader is not None:
            self.gauges = CatalogGauges({"model": context.decl.name, "instance": args["model_instance_name"]})
            reader.observe(self.gauges)
        # One thread for numpy's BLAS and faiss's OpenMP in this stub. Left at one per core, they
        # spread each small product over every core and busy-wait between calls, burning the CPU
        # that the other stubs on the same cores need: catalog_search at concurrency 16 spent
        # 4.6 ms of CPU per search that way, 2.3 ms on one thread. onnxruntime's threads are
        # set per model instead (ModelDecl.intra_op_threads). threadpoolctl limits the libraries
        # loaded so far, so this runs after the logic is built (and has imported what it uses).
        threadpool_limits(1)

    def finalize(self) -> None:
        gauges = getattr(self, "gauges", None)  # absent when initialize failed before it
        if gauges is not None:
            gauges.close()

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            for request in requests
        ]
        return [to_response(outcome) for outcome in self.logic(inputs)]
