"""Triton python model for cold_item_encoder: candidate texts embedded by the item tower in-process
(logic: aisle.model_repository.cold_items)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.cold_items import ColdItemEncoder


class TritonPythonModel(PythonModel):
    build = staticmethod(ColdItemEncoder.from_context)
