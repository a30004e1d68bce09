"""Triton python model for rank_cold_validator, the first step of rank_cold
(logic: aisle.model_repository.validation)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.validation import RequestValidator


class TritonPythonModel(PythonModel):
    build = staticmethod(RequestValidator.from_context)
