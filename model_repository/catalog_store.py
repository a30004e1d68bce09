"""The served catalog as every python model reads it: one set of memory-mapped files, one version.

item_store (rank), user_profile (rank_cold) and catalog_search (search) each run in their own stub
process. They all open the same catalog directory with memory maps, so the embeddings and features
exist once in memory (the page cache's) however many stubs read them.

Live catalog (`aisle catalog upsert|delete|rollback`): a new catalog version is a new directory
and REPO/item_store/1/catalog_versions/served.json names the served one (export/repo_format.py).
Every catalog-reading model runs its logic through `FollowsServedCatalog`, which checks that file's
fingerprint (one stat) before each dynamic batch and, when it changed, opens the new version and
swaps its logic object in one assignment. A python stub executes one batch at a time, so a batch
(and every request in it) runs entirely on one version; the old version's arrays and index are
released with the old logic object (its memory maps close, so its pages leave the stub's RSS).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aisle.export.repo_format import Catalog, served_catalog_dir, served_state_key
from aisle.model_repository.batching import Logic, Outcome, Tensors
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
        return cls(Path(directory), catalog, CatalogIndex.of(catalog))

    @classmethod
    def from_context(cls, context: ModelContext) -> CatalogStore:
        """The catalog version the repository serves now (served.json; the rendered one without it)."""
        return cls.open(served_catalog_dir(context.repo))


class FollowsServedCatalog:
    """A catalog reader's logic, rebuilt on the served catalog version whenever that changes.

    Why per batch and in the model rather than a new Triton model version: switching is one stat
    per batch plus opening memory maps once per version (no stub restart, no second copy of the
    model's other state, no ensemble reload), and "after `aisle catalog upsert` returns, the next
    request sees the new version" holds without any signal to the server.
    """

    #: After a version fails to open, seconds before a batch tries it again (unless served.json
    #: changes meanwhile). Opening a large version (a 1M-item IVF index) takes seconds; retrying it
    #: at every batch would stall every request behind a version that cannot open.
    RETRY_S = 10.0

    def __init__(self, context: ModelContext, build: Callable[[ModelContext], Logic]) -> None:
        self.context = context
        self.build = build
        self.key = served_state_key(context.repo)
        self.logic = build(context)
        self.failed: tuple[object, float] | None = None  # (served state, when) of the last failed switch

    def current(self) -> Logic:
        """The logic of the served version, opened now if the served state changed since last batch."""
        key = served_state_key(self.context.repo)
        if key == self.key:
            return self.logic
        now = time.monotonic()
        if self.failed is not None and self.failed[0] == key and now - self.failed[1] < self.RETRY_S:
            return self.logic
        try:
            logic = self.build(self.context)
        except Exception as e:  # noqa: BLE001 - keep serving the open version; retried after RETRY_S
            self.failed = (key, now)
            print(
                f"aisle: catalog switch failed, still serving the open version (retry in {self.RETRY_S:.0f} s): {e!r}",
                file=sys.stderr,
                flush=True,
            )
            return self.logic
        # Built first, then swapped: no batch ever sees a half-opened version.
        self.logic, self.key, self.failed = logic, key, None
        return self.logic

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        return self.current()(requests)


def follows_served_catalog(build: Callable[[ModelContext], Logic]) -> Callable[[ModelContext], Logic]:
    """`build` wrapped so its logic follows the served catalog version (for model.py's `build`)."""
    return lambda context: FollowsServedCatalog(context, build)
