"""Triton python model for select_results (logic: aisle.model_repository.select_results)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.select_results import SelectResults


class TritonPythonModel(PythonModel):
    build = staticmethod(SelectResults.from_context)
