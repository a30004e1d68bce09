"""Triton python model for catalog_search (logic: aisle.model_repository.catalog_search)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.catalog_search import CatalogSearch


class TritonPythonModel(PythonModel):
    build = staticmethod(CatalogSearch.from_context)
