"""The on-disk format of a rendered model repository, beyond Triton's own config.pbtxt files.

    REPO/aisle_repo.json            RepoManifest: target, the schema's sizes, the checkpoint's
                                    manifest and the data fingerprint it was rendered from
    REPO/item_store/1/catalog/      Catalog: item ids, item-tower embeddings, raw features (one
                                    .npy file each), the retired items of a live catalog version
                                    (RetiredItems), plus what retrieval reads beside them (item
                                    attributes, the ANN index when there is one)
    REPO/<tokenizer>/1/tokenizer.json   the tower's fast tokenizer (truncating, never padding)
    REPO/item_store/1/catalog_versions/<n>/   later catalog versions (n >= 2) written by `aisle
                                    catalog`, each a complete catalog directory like item_store/1/catalog/
    REPO/item_store/1/catalog_versions/served.json   ServedCatalog: the version every catalog reader
                                    serves (absent: version 1, the rendered catalog) and the previous ones

numpy and the standard library only: the python-backend models inside tritonserver read these
files with the same code that writes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aisle.errors import ExportError
from aisle.manifests import load_manifest, save_manifest
from aisle.schema import ITEM_STORE, Schema, ServingLimits, build_schema

REPO_MANIFEST = "aisle_repo.json"
#: The catalog's arrays, each a .npy file of the catalog directory.
CATALOG_ARRAYS = ("item_ids", "embeddings", "features")
#: A catalog version's retired items (RetiredItems), .npy files beside the catalog's arrays; absent
#: when the version has none (every rendered catalog).
RETIRED_ARRAYS = ("retired_ids", "retired_embeddings")
#: The catalog's directory in the item store's version directory. Every model that reads the
#: catalog memory-maps the same files, so the server holds one physical copy (the page cache's)
#: however many python-backend processes read it.
CATALOG_DIR = "catalog"
TOKENIZER_FILE = "tokenizer.json"
#: A graph model's files in its version directory: the ONNX graph, and on the tensorrt target the
#: plan built from it at container start.
GRAPH_FILE = "model.onnx"
PLAN_FILE = "model.plan"
#: Version directory every rendered model uses.
MODEL_VERSION = "1"
#: The repository layout this aisle renders and serves. 2: on the embedded target the query encoder
#: tokenizes its own texts (no query_tokenizer model); a version-1 repository must be re-rendered.
FORMAT_VERSION = 2


class RepositoryError(ExportError):
    """A rendered repository is missing a piece or a file disagrees with the manifest."""


@dataclass
class RepoManifest:
    """What a rendered repository serves and what it was rendered from.

    limits: what the served models enforce; the checkpoint's, with any buckets `aisle export repo`
        was told to override (the same values every ensemble's config carries as parameters).
    index: the retrieval index's parameters (aisle.retrieval.IndexParams as a dict; {} = exact).
    """

    target: str
    embedding_dim: int
    limits: ServingLimits = field(default_factory=ServingLimits)
    catalog_items: int = 0
    index: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def schema(self) -> Schema:
        """The served models and ensembles; the same calls the renderer made, so configs and models agree."""
        from aisle.export.targets import target_class

        return target_class(self.target).served_schema(build_schema(self.embedding_dim, self.limits))

    def save(self, repo: Path) -> None:
        save_manifest(self, Path(repo) / REPO_MANIFEST)

    @classmethod
    def load(cls, repo: Path) -> RepoManifest:
        manifest = load_manifest(
            cls,
            Path(repo) / REPO_MANIFEST,
            required=("target", "embedding_dim"),
            format_version=FORMAT_VERSION,
            error=RepositoryError,
            absent=f"{repo}: not a rendered aisle repository (missing {REPO_MANIFEST})",
        )
        misplaced = Path(repo) / CATALOG_VERSIONS_DIR
        if misplaced.is_dir():  # where aisle kept them before: served from there, tritonserver won't start
            raise RepositoryError(
                f"{misplaced}: live catalog versions at the repository's top level, where tritonserver takes "
                f"every directory for a model and refuses to start; move it to {catalog_versions_dir(repo)}"
            )
        return manifest


#: Catalog versions a live catalog keeps on disk: the served one and KEEP_VERSIONS - 1 previous ones
#: to roll back to (export/live_catalog.py).
KEEP_VERSIONS = 3


def catalog_dir(repo: Path, version: str = MODEL_VERSION) -> Path:
    """Where a rendered repository keeps its catalog (the item store's version directory)."""
    return Path(repo) / ITEM_STORE / version / CATALOG_DIR


#: Where catalog versions after the rendered one live (beside the rendered catalog, see
#: catalog_versions_dir), and the file naming the served version.
CATALOG_VERSIONS_DIR = "catalog_versions"
SERVED_FILE = "served.json"
#: The rendered catalog's version number (item_store/1/catalog/).
BASE_CATALOG_VERSION = 1


@dataclass(frozen=True)
class ServedCatalog:
    """Which catalog version the server reads, and the versions served before it (newest first).

    One small JSON file, replaced atomically (written beside, then os.replace): a reader sees the
    old state or the new one, never half of either. Readers need only `version`; `previous` is the
    rollback stack `aisle catalog` keeps.
    """

    version: int = BASE_CATALOG_VERSION
    previous: tuple[int, ...] = ()

    @classmethod
    def read(cls, repo: Path) -> ServedCatalog:
        path = served_file(repo)
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls(int(raw["version"]), tuple(int(v) for v in raw.get("previous", ())))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise RepositoryError(f"{path}: unreadable served-catalog state ({e}); restore it or delete it") from e

    def write(self, repo: Path) -> None:
        """Atomically: the new file is complete on disk before it replaces the old one."""
        path = served_file(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with staging.open("w") as handle:
            json.dump({"version": self.version, "previous": list(self.previous)}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)


def catalog_versions_dir(repo: Path) -> Path:
    """The live catalog's directory: inside the item store's version directory, beside the rendered
    catalog. Not at the repository's top level, where tritonserver takes every directory for a model
    (a server started on the repository after a catalog change would refuse to start)."""
    return catalog_dir(repo).parent / CATALOG_VERSIONS_DIR


def served_file(repo: Path) -> Path:
    return catalog_versions_dir(repo) / SERVED_FILE


def served_state_key(repo: Path) -> tuple[int, int] | None:
    """A cheap fingerprint of the served-catalog state (one stat): changes whenever it is replaced."""
    try:
        stat = os.stat(served_file(repo))
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns)


def version_catalog_dir(repo: Path, version: int) -> Path:
    """The directory of catalog `version`: the rendered one for version 1, catalog_versions/<n> after."""
    if version == BASE_CATALOG_VERSION:
        return catalog_dir(repo)
    return catalog_versions_dir(repo) / str(version)


def served_catalog_dir(repo: Path) -> Path:
    """The catalog directory every catalog-reading model serves now."""
    return version_catalog_dir(repo, ServedCatalog.read(repo).version)


def graph_file(repo: Path, model: str, version: str = MODEL_VERSION) -> Path:
    """The exported ONNX graph a rendered repository keeps for `model` (on every target)."""
    return Path(repo) / model / version / GRAPH_FILE


def _array_file(directory: Path, name: str) -> Path:
    path = Path(directory) / f"{name}.npy"
    if not path.is_file():
        raise RepositoryError(f"{directory}: catalog lacks {path.name}")
    return path


def read_item_ids(directory: Path) -> np.ndarray:
    """Only the item ids of a catalog (memory-mapped): what validators need."""
    return np.load(_array_file(directory, "item_ids"), mmap_mode="r", allow_pickle=False)


def read_retired_ids(directory: Path) -> np.ndarray:
    """Only the retired item ids of a catalog (memory-mapped; empty when it has none)."""
    path = Path(directory) / f"{RETIRED_ARRAYS[0]}.npy"
    return np.load(path, mmap_mode="r", allow_pickle=False) if path.is_file() else np.zeros(0, np.int64)


@dataclass(frozen=True)
class RetiredItems:
    """Items deleted from a live catalog whose item-tower embeddings are kept for user histories.

    Why keep them: a history is what a shopper did in the past, and shops discontinue items every
    day, so the histories an application sends keep naming deleted items for months. Refusing those
    requests would break search and recommendations for exactly the loyal shoppers; dropping the
    ids would silently change their user vectors. A retired item still counts in a history, with
    the embedding it had when deleted, and is never a candidate or a result. `aisle catalog delete
    --forget` removes ids for good (a history naming one is then refused like any unknown id).
    """

    item_ids: np.ndarray  # int64 [R], strictly ascending, none of them an item of the catalog
    embeddings: np.ndarray  # float32 [R, D]

    def __post_init__(self) -> None:
        if self.item_ids.ndim != 1 or self.embeddings.ndim != 2 or len(self.embeddings) != len(self.item_ids):
            raise RepositoryError(
                f"catalog: expected retired_ids [R] and retired_embeddings [R, D]; got shapes "
                f"{self.item_ids.shape}, {self.embeddings.shape}"
            )
        if len(self.item_ids) > 1 and not (np.diff(self.item_ids) > 0).all():
            raise RepositoryError("catalog: retired_ids must be strictly ascending (sorted, no duplicates)")

    @classmethod
    def build(cls, item_ids: np.ndarray, embeddings: np.ndarray) -> RetiredItems:
        order = np.argsort(item_ids, kind="stable")
        return cls(
            np.ascontiguousarray(np.asarray(item_ids)[order], dtype=np.int64),
            np.ascontiguousarray(np.asarray(embeddings)[order], dtype=np.float32),
        )

    @classmethod
    def none(cls, dim: int) -> RetiredItems:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))

    def without(self, item_ids: np.ndarray) -> RetiredItems:
        """These retired items less `item_ids` (upserted again, or forgotten)."""
        keep = ~np.isin(self.item_ids, item_ids)
        return RetiredItems(np.asarray(self.item_ids)[keep], np.asarray(self.embeddings)[keep])

    def plus(self, item_ids: np.ndarray, embeddings: np.ndarray) -> RetiredItems:
        """These retired items and the given ones (just deleted, so none of them retired already)."""
        return RetiredItems.build(
            np.concatenate([self.item_ids, item_ids]), np.concatenate([self.embeddings, embeddings])
        )

    def save(self, directory: Path) -> None:
        """Written only when there are retired items; absent files load as none (`load`)."""
        if len(self.item_ids):
            for name, array in zip(RETIRED_ARRAYS, (self.item_ids, self.embeddings)):
                np.save(Path(directory) / f"{name}.npy", array, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> RetiredItems | None:
        """Memory-mapped; None where the catalog directory has no retired items."""
        if not (Path(directory) / f"{RETIRED_ARRAYS[0]}.npy").is_file():
            return None
        ids, embeddings = (
            np.load(_array_file(directory, name), mmap_mode="r", allow_pickle=False) for name in RETIRED_ARRAYS
        )
        return cls(ids, embeddings)


@dataclass(frozen=True)
class Catalog:
    """The served catalog, row-aligned: ascending item ids, their embeddings and raw features;
    beside it the retired items, whose embeddings only user histories read.

    Row numbers: 0..N-1 are the catalog's rows; N + r is retired item r, a row only a history can
    name (CatalogIndex.history_rows), which `history_embeddings` resolves.
    """

    item_ids: np.ndarray  # int64 [N], strictly ascending
    embeddings: np.ndarray  # float32 [N, D]
    features: np.ndarray  # float32 [N, F], schema.ITEM_FEATURES order, NaN = unknown
    retired: RetiredItems | None = None  # None: no retired items

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.item_ids.ndim != 1 or self.embeddings.ndim != 2 or self.features.ndim != 2:
            raise RepositoryError(
                f"catalog: expected item_ids [N], embeddings [N, D], features [N, F]; got shapes "
                f"{self.item_ids.shape}, {self.embeddings.shape}, {self.features.shape}"
            )
        if len(self.embeddings) != n or len(self.features) != n:
            raise RepositoryError(
                f"catalog: {n} item_ids but {len(self.embeddings)} embeddings and {len(self.features)} feature rows"
            )
        if n > 1 and not (np.diff(self.item_ids) > 0).all():
            raise RepositoryError("catalog: item_ids must be strictly ascending (sorted, no duplicates)")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def retired_items(self) -> RetiredItems:
        return self.retired if self.retired is not None else RetiredItems.none(self.dim)

    @classmethod
    def build(
        cls, item_ids: np.ndarray, embeddings: np.ndarray, features: np.ndarray, retired: RetiredItems | None = None
    ) -> Catalog:
        """Sort rows by item id (any input order), with the dtypes the wire uses."""
        order = np.argsort(item_ids, kind="stable")
        return cls(
            np.ascontiguousarray(item_ids[order], dtype=np.int64),
            np.ascontiguousarray(embeddings[order], dtype=np.float32),
            np.ascontiguousarray(features[order], dtype=np.float32),
            retired if retired is not None and len(retired.item_ids) else None,
        )

    def history_embeddings(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings of history rows (any shape; N + r is retired item r) -> [*rows.shape, D]."""
        n = len(self.item_ids)
        if self.retired is None or not (rows >= n).any():
            return self.embeddings[rows]
        out = np.empty((*rows.shape, self.dim), np.float32)
        served = rows < n
        out[served] = self.embeddings[rows[served]]
        out[~served] = self.retired.embeddings[rows[~served] - n]
        return out

    def save(self, directory: Path) -> None:
        """One .npy per array (memory-mappable, unlike an .npz); the directory is created."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in CATALOG_ARRAYS:
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)
        self.retired_items.save(directory)

    @classmethod
    def load(cls, directory: Path) -> Catalog:
        """Memory-mapped, read-only: processes that load one catalog share its pages."""
        directory = Path(directory)
        if not directory.is_dir():
            raise RepositoryError(f"{directory}: catalog directory not found")
        arrays = {
            name: np.load(_array_file(directory, name), mmap_mode="r", allow_pickle=False) for name in CATALOG_ARRAYS
        }
        return cls(**arrays, retired=RetiredItems.load(directory))
