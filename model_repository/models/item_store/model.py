"""Triton python model for item_store (logic: aisle.model_repository.item_store)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.item_store import ItemStore


class TritonPythonModel(PythonModel):
    build = staticmethod(ItemStore.from_context)
