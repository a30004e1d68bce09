"""Triton python model for rank_cold_validator, the first step of rank_cold
(logic: aisle.model_repository.validation)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.catalog_store import follows_served_catalog
from aisle.model_repository.validation import RequestValidator


class TritonPythonModel(PythonModel):
    build = staticmethod(follows_served_catalog(RequestValidator.from_context))
