"""Triton python model for item_store (logic: aisle.model_repository.item_store)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.catalog_store import follows_served_catalog
from aisle.model_repository.item_store import ItemStore


class TritonPythonModel(PythonModel):
    build = staticmethod(follows_served_catalog(ItemStore.from_context))
