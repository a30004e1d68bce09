"""Triton python model running an exported graph with onnxruntime: the embedded target's encoders
and fusion head (logic: aisle.model_repository.ort_runner)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.ort_runner import OrtGraph


class TritonPythonModel(PythonModel):
    build = staticmethod(OrtGraph.from_context)
