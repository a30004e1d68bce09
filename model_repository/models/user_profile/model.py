"""Triton python model for user_profile (logic: aisle.model_repository.user_profile)."""

from aisle.model_repository.adapter import PythonModel
from aisle.model_repository.catalog_store import follows_served_catalog
from aisle.model_repository.user_profile import UserProfile


class TritonPythonModel(PythonModel):
    build = staticmethod(follows_served_catalog(UserProfile.from_context))
