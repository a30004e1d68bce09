"""Run an exported graph (encoder or fusion head) with onnxruntime inside a python-backend model.

This is the embedded target's stand-in for Triton's onnxruntime and tensorrt backends, which the
nvidia-pytriton wheel does not ship. The graph is the same model.onnx file those targets serve, so
the three targets differ only in who runs it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aisle.export.repo_format import GRAPH_FILE
from aisle.model_repository.batching import Outcome, Tensors, run_stacked
from aisle.model_repository.context import ModelContext
from aisle.schema import INTRA_OP_THREADS_PARAMETER


@dataclass(frozen=True)
class OrtOptions:
    """onnxruntime session knobs.

    intra_op_threads: threads one execution uses (0 = onnxruntime's default, one per core).
    allow_spinning: idle threads busy-wait for the next run. Off by default: a server holds several
        sessions (two encoders, the head) on the same cores, and spinning ones steal from busy ones.
    """

    intra_op_threads: int = 0
    allow_spinning: bool = False

    @classmethod
    def from_context(cls, context: ModelContext) -> OrtOptions:
        """The thread count the schema declared for the model (rendered into its config); else the
        instances share the cores this process may run on (one instance: onnxruntime's default)."""
        declared = context.parameters.get(INTRA_OP_THREADS_PARAMETER)
        if declared is not None:
            return cls(intra_op_threads=int(declared))
        if context.instances <= 1:
            return cls()
        return cls(intra_op_threads=max(1, len(os.sched_getaffinity(0)) // context.instances))


class OrtGraph:
    """One onnxruntime CPU session over a graph whose tensor names are the schema's."""

    def __init__(self, path: Path, options: OrtOptions = OrtOptions()) -> None:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        session_options.add_session_config_entry("session.intra_op.allow_spinning", str(int(options.allow_spinning)))
        self.session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_context(cls, context: ModelContext) -> OrtGraph:
        return cls(context.version_dir / GRAPH_FILE, OrtOptions.from_context(context))

    def run(self, feeds: Tensors) -> Tensors:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        """One session run per group of same-shape requests (the batcher only merges those anyway)."""
        return list(run_stacked(requests, self.run))
