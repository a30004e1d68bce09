"""Triton python model for query_tokenizer and item_tokenizer (logic: aisle.model_repository.tokenizer_logic)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.tokenizer_logic import BatchTokenizer


class TritonPythonModel(PythonModel):
    build = staticmethod(BatchTokenizer.from_context)
