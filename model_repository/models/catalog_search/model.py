"""Triton python model for catalog_search (logic: aisle.model_repository.catalog_search)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.catalog_search import CatalogSearch
from aisle.model_repository.catalog_store import follows_served_catalog


class TritonPythonModel(PythonModel):
    build = staticmethod(follows_served_catalog(CatalogSearch.from_context))
