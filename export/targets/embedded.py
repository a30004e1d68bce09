"""embedded: the tritonserver of nvidia-pytriton (`aisle serve`), which ships the python backend only.

The graphs run in python models through onnxruntime on the CPU (model_repository/ort_runner.py):
the same model.onnx the other targets serve, so the targets differ only in who runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aisle.export.targets import PYTHON, RenderTarget


@dataclass(frozen=True)
class EmbeddedTarget(RenderTarget):
    NAME = "embedded"
    HELP = "for `aisle serve` (nvidia-pytriton's tritonserver, python backend only, CPU)"
    GRAPH_RUNTIME = PYTHON
    SERVES_EMBEDDED = True


TARGET = EmbeddedTarget
