"""Triton python model for catalog_search (logic: aisle.model_repository.catalog_search; on the
embedded target behind the query encoder folded into it, aisle.model_repository.text_encoder)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.batching import Logic
from aisle.model_repository.catalog_search import CatalogSearch
from aisle.model_repository.catalog_store import follows_served_catalog
from aisle.model_repository.context import ModelContext
from aisle.model_repository.text_encoder import EmbedsItsText


def build(context: ModelContext) -> Logic:
    return EmbedsItsText.wrap(context, follows_served_catalog(CatalogSearch.from_context)(context))


class TritonPythonModel(PythonModel):
    build = staticmethod(build)
