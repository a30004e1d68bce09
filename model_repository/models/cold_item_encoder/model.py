"""Triton python model for cold_item_encoder: candidate texts embedded through the embed_item
ensemble by BLS (logic: aisle.model_repository.cold_items)."""

from aisle.model_repository.adapter import PythonModel, embed_item_via_bls
from aisle.model_repository.cold_items import ColdItemEncoder
from aisle.model_repository.context import ModelContext


class TritonPythonModel(PythonModel):
    def build(self, context: ModelContext) -> ColdItemEncoder:
        return ColdItemEncoder.for_schema(context.schema, embed_item_via_bls(context.schema))
