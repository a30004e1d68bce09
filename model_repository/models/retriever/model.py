"""Triton python model for retriever (logic: aisle.model_repository.retriever)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.retriever import Retriever


class TritonPythonModel(PythonModel):
    build = staticmethod(Retriever.from_context)
