"""The served catalog as every python model reads it: one set of memory-mapped files.

item_store (rank), user_profile (rank_cold) and catalog_search (search) each run in their own stub
process. They all open the same catalog directory (repo_format.catalog_dir) with memory maps, so
the embeddings and features exist once in memory (the page cache's) however many stubs read them,
and a later catalog version is a new directory to open, not a copy to merge into.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aisle.export.repo_format import Catalog, catalog_dir
from aisle.model_repository.context import ModelContext
from aisle.model_repository.validation import CatalogIndex


@dataclass(frozen=True)
class CatalogStore:
    """Catalog rows (ids ascending, embeddings, raw features) and the id -> row lookup."""

    directory: Path
    catalog: Catalog
    rows: CatalogIndex

    @classmethod
    def open(cls, directory: Path) -> CatalogStore:
        catalog = Catalog.load(directory)
        return cls(Path(directory), catalog, CatalogIndex(catalog.item_ids))

    @classmethod
    def from_context(cls, context: ModelContext) -> CatalogStore:
        """The catalog of the repository a model was loaded from (its own version's)."""
        return cls.open(catalog_dir(context.repo, context.version_dir.name))
