"""Triton python model for an encoder that tokenizes its own texts on the embedded target
(logic: aisle.model_repository.text_encoder)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.text_encoder import TextEncoder


class TritonPythonModel(PythonModel):
    build = staticmethod(TextEncoder.from_context)
