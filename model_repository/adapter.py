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
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput


def to_response(outcome: Outcome) -> Any:
    """Output tensors, or INVALID_ARGUMENT carrying the message that names tensor and value."""
    if isinstance(outcome, InvalidInput):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(outcome), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in outcome.items()]
    )


class PythonModel:
    """Base of the TritonPythonModel classes: build the logic once, then adapt every batch to it."""

    def build(self, context: ModelContext) -> Logic:
        raise NotImplementedError(f"{type(self).__name__} must say which logic it runs")

    def initialize(self, args: dict[str, Any]) -> None:
        context = ModelContext.from_triton_args(args)
        self.input_names = [tensor.name for tensor in context.decl.inputs]
        self.logic = self.build(context)
        # One thread for numpy's BLAS and faiss's OpenMP in this stub. Left at one per core, they
        # spread each small product over every core and busy-wait between calls, burning the CPU
        # that the other stubs on the same cores need: catalog_search at concurrency 16 spent
        # 4.6 ms of CPU per search that way, 2.3 ms on one thread. onnxruntime's threads are
        # set per model instead (ModelDecl.intra_op_threads). threadpoolctl limits the libraries
        # loaded so far, so this runs after the logic is built (and has imported what it uses).
        threadpool_limits(1)

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            for request in requests
        ]
        return [to_response(outcome) for outcome in self.logic(inputs)]
