"""Live catalog: upsert, delete and roll back the catalog a running tritonserver serves.

Every change writes a complete new catalog version (ids, item-tower embeddings, raw features,
filter attributes, text digests, the retrieval index, the retired items that user histories may
still name) into REPO/item_store/1/catalog_versions/<n>/
and only then replaces catalog_versions/served.json there, the one file naming the served version.
The served python models check that file before each batch and switch by themselves
(model_repository/catalog_store.py), so nothing here talks to the server's control API: the
control path is write access to the repository directory, which the inference ports never give.

Why an export-side module: this is the render's catalog step run again on a delta (same item
graph, same tokenisation, same files); the serving side only reads. Embedding is injected
(`ItemEmbedder`): `local_embedder` runs the repository's own exported item graph through
onnxruntime; the CLI passes the running server's `embed_item` instead when given --url.

Failure safety: the items file is checked completely before anything is embedded or written; a
version is written into a `.partial` directory that is renamed into place only when complete, and
served.json is replaced atomically after that, so a failure anywhere (disk full, server gone
during embedding) leaves the served version untouched. One writer at a time (a lock file).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aisle.data.format import Item
from aisle.errors import ExportError
from aisle.export.repo_format import (
    GRAPH_FILE,
    KEEP_VERSIONS,
    MODEL_VERSION,
    TOKENIZER_FILE,
    Catalog,
    RepoManifest,
    RetiredItems,
    ServedCatalog,
    catalog_versions_dir,
    version_catalog_dir,
)
from aisle.export.search_index import TEXT_DIGESTS_FILE, text_digest, write_index
from aisle.retrieval import ATTRIBUTES_FILE, INDEX_FILE, FaissIndex, IndexParams, ItemAttributes, load_index
from aisle.retrieval.attributes import category_path
from aisle.retrieval.index import IVF
from aisle.schema import ITEM_ENCODER, ITEM_TOKENIZER

#: Texts per embed_item call when embedding through a server.
REMOTE_BATCH = 64
LOCK_FILE = ".lock"
#: Catalog rows compared at a time when finding the rows an update carries over unchanged.
COMPARE_CHUNK = 65_536


class CatalogUpdateError(ExportError):
    """A catalog change was refused (bad items file, unknown ids, nothing to roll back to)."""


class ItemEmbedder(Protocol):
    """Item texts -> float32 [len(texts), dim] item-tower embeddings (L2-normalised)."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class UpdateReport:
    """What one catalog change did, with its timings (seconds, measured here)."""

    version: int
    previous: int
    items: int
    added: int = 0
    changed: int = 0
    embedded: int = 0
    deleted: int = 0
    retired: int = 0  # deleted items the version keeps for user histories (RetiredItems)
    forgotten: int = 0
    embed_s: float = 0.0
    write_s: float = 0.0

    def summary(self) -> str:
        return (
            f"served catalog version {self.previous} -> {self.version}: {self.items} items "
            f"(+{self.added} new, {self.changed} updated, {self.embedded} embedded, -{self.deleted} deleted"
            + (f", {self.forgotten} forgotten" if self.forgotten else "")
            + f"; {self.retired} deleted items kept for user histories); "
            f"embedding {self.embed_s:.2f} s, writing {self.write_s:.2f} s"
        )


# --- the items file --------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: items.jsonl fields: (check, what the check wants). Every field but `attributes` and `cold_start` is required.
ITEM_FIELDS: dict[str, tuple[Any, str]] = {
    "item_id": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "title": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "brand": (lambda v: isinstance(v, str), "a string"),
    "category": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
    "price": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "rating": (lambda v: _is_number(v) and 0 <= v <= 5, "a number in 0..5"),
    "review_count": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "popularity": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
}
OPTIONAL_FIELDS: dict[str, tuple[Any, str]] = {
    "attributes": (
        lambda v: isinstance(v, dict) and all(isinstance(x, (str, int, float)) for x in v.values()),
        "an object of string or number values",
    ),
    "cold_start": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_record(record: Any, where: str) -> Item:
    if not isinstance(record, dict):
        raise CatalogUpdateError(f"{where}: expected a JSON object (one item), got {type(record).__name__}")
    for name, (valid, wanted) in ITEM_FIELDS.items():
        if name not in record:
            raise CatalogUpdateError(f"{where}: field {name!r} is missing; every item needs {sorted(ITEM_FIELDS)}")
        if not valid(record[name]):
            raise CatalogUpdateError(f"{where}: field {name!r} must be {wanted}, got {json.dumps(record[name])}")
    for name, (valid, wanted) in OPTIONAL_FIELDS.items():
        if name in record and not valid(record[name]):
            raise CatalogUpdateError(f"{where}: field {name!r} must be {wanted}, got {json.dumps(record[name])}")
    return Item(
        item_id=int(record["item_id"]),
        title=record["title"],
        brand=record["brand"],
        category=tuple(record["category"]),
        attributes={str(k): str(v) for k, v in (record.get("attributes") or {}).items()},
        price=float(record["price"]),
        rating=float(record["rating"]),
        review_count=int(record["review_count"]),
        popularity=float(record["popularity"]),
        cold_start=bool(record.get("cold_start", False)),
    )


def read_item_updates(path: Path) -> list[Item]:
    """Every item of an items.jsonl file, checked completely before anything is written.

    Errors name the file, the line and the field: a missing field, a wrong type or range, invalid
    JSON, an id given twice (with both lines), an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogUpdateError(f"{path}: items file not found")
    items: list[Item] = []
    first_line: dict[int, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CatalogUpdateError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
            item = _check_record(record, where)
            if item.item_id in first_line:
                raise CatalogUpdateError(
                    f"{where}: field 'item_id' = {item.item_id} is a duplicate (first on line "
                    f"{first_line[item.item_id]}); give each item once"
                )
            first_line[item.item_id] = number
            items.append(item)
    if not items:
        raise CatalogUpdateError(f"{path}: the items file is empty; an upsert needs at least one item")
    return items


# --- embedding ---------------------------------------------------------------------------------------


def local_embedder(repo: Path, *, batch_size: int = 256, progress: bool = False) -> ItemEmbedder:
    """The repository's own exported item graph (item_encoder/1/model.onnx) through onnxruntime,
    tokenised by its item tokenizer (item_tokenizer/1/tokenizer.json): exactly what embed_item serves."""
    from aisle.export.catalog import embed_texts_with

    repo = Path(repo)
    schema = RepoManifest.load(repo).schema()
    tokenizer_dir = repo / ITEM_TOKENIZER / MODEL_VERSION
    graph = repo / ITEM_ENCODER / MODEL_VERSION / GRAPH_FILE
    if not (tokenizer_dir / TOKENIZER_FILE).is_file():
        raise CatalogUpdateError(f"{tokenizer_dir / TOKENIZER_FILE}: the repository's item tokenizer is missing")

    def embed(texts: Sequence[str]) -> np.ndarray:
        return embed_texts_with(schema, tokenizer_dir, graph, texts, batch_size=batch_size, progress=progress)

    return embed


# --- catalog versions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogVersion:
    """One catalog version opened for an update: its rows, their attributes and text digests."""

    version: int
    catalog: Catalog
    attributes: ItemAttributes
    digests: np.ndarray  # uint64 [N]; 0 = unknown (re-embed on upsert)

    @classmethod
    def open(cls, repo: Path, version: int) -> CatalogVersion:
        directory = version_catalog_dir(repo, version)
        catalog = Catalog.load(directory)
        attributes = ItemAttributes.load(directory / ATTRIBUTES_FILE)
        digest_file = directory / TEXT_DIGESTS_FILE
        digests = (
            np.load(digest_file, allow_pickle=False)
            if digest_file.is_file()
            else np.zeros(len(catalog.item_ids), np.uint64)
        )
        return cls(version, catalog, attributes, digests)

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalog row of each id, -1 where the catalog does not hold it."""
        known = self.catalog.item_ids
        rows = np.searchsorted(known, item_ids).clip(max=max(len(known) - 1, 0))
        return np.where(known[rows] == item_ids, rows, -1) if len(known) else np.full(len(item_ids), -1)


@dataclass(frozen=True)
class Rows:
    """Catalog rows in any order, with everything a version stores per row."""

    item_ids: np.ndarray
    embeddings: np.ndarray
    features: np.ndarray
    digests: np.ndarray
    brands: np.ndarray  # str [N]
    categories: np.ndarray  # str [N], canonical paths
    prices: np.ndarray

    @classmethod
    def of_version(cls, base: CatalogVersion, keep: np.ndarray) -> Rows:
        a, c = base.attributes, base.catalog
        return cls(
            np.asarray(c.item_ids)[keep],
            np.asarray(c.embeddings)[keep],
            np.asarray(c.features)[keep],
            np.asarray(base.digests)[keep],
            np.asarray(a.brands, dtype=np.str_)[a.brand_codes[keep]] if len(a.brands) else np.zeros(0, np.str_),
            np.asarray(a.categories, dtype=np.str_)[a.category_codes[keep]]
            if len(a.categories)
            else np.zeros(0, np.str_),
            np.asarray(a.prices)[keep],
        )

    @classmethod
    def of_items(cls, items: Sequence[Item], embeddings: np.ndarray) -> Rows:
        return cls(
            np.asarray([i.item_id for i in items], np.int64),
            np.asarray(embeddings, np.float32),
            np.asarray([i.features() for i in items], np.float32).reshape(len(items), -1),
            np.asarray([text_digest(i.text()) for i in items], np.uint64),
            np.asarray([i.brand for i in items], dtype=np.str_),
            np.asarray([category_path(i.category) for i in items], dtype=np.str_),
            np.asarray([i.features()[0] for i in items], np.float32),
        )

    def __add__(self, other: Rows) -> Rows:
        return Rows(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in Rows.__dataclass_fields__))

    def sorted(self, retired: RetiredItems) -> tuple[Catalog, ItemAttributes, np.ndarray]:
        """The version's files' contents, in catalog row order (ids ascending)."""
        order = np.argsort(self.item_ids, kind="stable")
        brands, brand_codes = np.unique(self.brands[order], return_inverse=True)
        categories, category_codes = np.unique(self.categories[order], return_inverse=True)
        catalog = Catalog.build(self.item_ids, self.embeddings, self.features, retired)
        attributes = ItemAttributes(
            item_ids=catalog.item_ids,
            brand_codes=brand_codes.astype(np.int32),
            brands=tuple(str(b) for b in brands),
            category_codes=category_codes.astype(np.int32),
            categories=tuple(str(c) for c in categories),
            prices=self.prices[order].astype(np.float32),
        )
        return catalog, attributes, self.digests[order]


@contextmanager
def _writer_lock(repo: Path) -> Iterator[None]:
    """One catalog writer per repository at a time (an advisory lock, released if the process dies)."""
    root = catalog_versions_dir(repo)
    root.mkdir(exist_ok=True)
    with (root / LOCK_FILE).open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _versions_on_disk(repo: Path) -> list[int]:
    root = catalog_versions_dir(repo)
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def _fsync_tree(directory: Path) -> None:
    for path in [*directory.iterdir(), directory]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_version(
    repo: Path,
    base: CatalogVersion,
    version: int,
    rows: Rows,
    retired: RetiredItems,
    *,
    retrain_index: bool,
    progress: bool,
) -> None:
    """Write a complete version directory derived from `base`, or nothing (a failure removes the
    partial one)."""
    repo = Path(repo)
    manifest = RepoManifest.load(repo)
    params = IndexParams.from_dict(manifest.index) if manifest.index else IndexParams()
    catalog, attributes, digests = rows.sorted(retired)
    if catalog.dim != manifest.embedding_dim:
        raise CatalogUpdateError(f"embeddings of dim {catalog.dim}; the repository serves {manifest.embedding_dim}")
    final = version_catalog_dir(repo, version)
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        catalog.save(staging)
        attributes.save(staging / ATTRIBUTES_FILE)
        np.save(staging / TEXT_DIGESTS_FILE, digests, allow_pickle=False)
        previous = None if retrain_index else _previous_index(repo, base, catalog, params)
        write_index(staging, catalog, params, progress=progress, previous=previous)
        _fsync_tree(staging)
        _check_opens(staging, params)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _previous_index(
    repo: Path, base: CatalogVersion, catalog: Catalog, params: IndexParams
) -> tuple[FaissIndex, np.ndarray] | None:
    """`base`'s IVF index and, per row of the new catalog, the row of it that holds the same item
    with the same embedding (-1: new or changed), for an index that keeps base's centroids and
    lists; None where base has no IVF index to keep."""
    path = version_catalog_dir(repo, base.version) / INDEX_FILE
    if params.kind != IVF or not path.is_file():
        return None
    index = FaissIndex.load(path, base.catalog.embeddings, params)
    rows = base.rows_of(np.asarray(catalog.item_ids))
    old, new = np.asarray(base.catalog.embeddings), np.asarray(catalog.embeddings)
    for start in range(0, len(rows), COMPARE_CHUNK):  # in chunks: a 1M-row catalog is 1.5 GB
        part = slice(start, start + COMPARE_CHUNK)
        known = rows[part] >= 0
        same = np.zeros_like(known)
        same[known] = (old[rows[part][known]] == new[part][known]).all(axis=1)
        rows[part][~same] = -1
    return index, rows


def _check_opens(directory: Path, params: IndexParams) -> None:
    """Open a written version as the catalog readers will (arrays, attributes, index), from disk,
    before it can be served: a version that cannot open would leave every replica on the old one."""
    catalog = Catalog.load(directory)
    attributes = ItemAttributes.load(directory / ATTRIBUTES_FILE)
    if not np.array_equal(attributes.item_ids, catalog.item_ids):
        raise CatalogUpdateError(f"{directory}: the attributes' rows differ from the catalog's item ids")
    load_index(directory / INDEX_FILE, catalog.embeddings, params)


def _check_keep(keep: int) -> None:
    if keep < 1:
        raise CatalogUpdateError(f"keep={keep} must be >= 1 (the served version itself)")


def _serve(repo: Path, state: ServedCatalog, version: int, keep: int) -> ServedCatalog:
    """Make `version` the served one (atomic), then remove versions beyond the `keep` newest served."""
    new = ServedCatalog(version, (state.version, *state.previous)[: keep - 1])
    new.write(repo)
    _prune(repo, new)
    return new


def _prune(repo: Path, state: ServedCatalog) -> None:
    """Remove version directories neither served nor kept for rollback (stubs still reading one keep
    its pages until their next batch: an unlinked file lives while it is mapped)."""
    wanted = {state.version, *state.previous}
    root = catalog_versions_dir(repo)
    for version in _versions_on_disk(repo):
        if version not in wanted:
            shutil.rmtree(root / str(version), ignore_errors=True)


def _next_version(repo: Path, state: ServedCatalog) -> int:
    return max([state.version, *state.previous, *_versions_on_disk(repo)]) + 1


@dataclass(frozen=True)
class CatalogStatus:
    """What a repository serves, from its files alone: the served version, the rollback stack and
    what each kept version holds (what `aisle catalog status` prints)."""

    served: int
    previous: tuple[int, ...]
    versions: dict[int, dict[str, Any]]  # version -> items, retired items, bytes on disk

    @classmethod
    def read(cls, repo: Path) -> CatalogStatus:
        state = ServedCatalog.read(repo)
        versions = {}
        for version in (state.version, *state.previous):
            directory = version_catalog_dir(repo, version)
            catalog = Catalog.load(directory)
            versions[version] = {
                "items": len(catalog.item_ids),
                "retired": len(catalog.retired_items.item_ids),
                "bytes": sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()),
            }
        return cls(state.version, state.previous, versions)

    def summary(self) -> str:
        lines = []
        for version, info in self.versions.items():
            role = "served" if version == self.served else "kept for rollback"
            lines.append(
                f"version {version} ({role}): {info['items']} items, {info['retired']} deleted items kept for "
                f"user histories, {info['bytes'] / 2**20:.1f} MiB"
            )
        return "\n".join(lines)


# --- the three operations -------------------------------------------------------------------------------


def upsert(
    repo: Path,
    items: Sequence[Item],
    *,
    embed: ItemEmbedder | None = None,
    keep: int = KEEP_VERSIONS,
    retrain_index: bool = False,
    progress: bool = False,
) -> UpdateReport:
    """Add new items and replace existing ones (by item_id) in a new served catalog version.

    Only new items and items whose text changed are embedded (`embed`, default: `local_embedder`);
    an item whose price, rating, reviews or popularity alone changed keeps its embedding. A retired
    item (deleted earlier) given again is back in the catalog and no longer retired. An IVF index
    keeps the served version's centroids (FaissIndex.updated); retrain_index trains them anew on
    the new catalog. Returns once served.json names the new version: the next batch of every
    catalog reader serves it.
    """
    repo = Path(repo)
    _check_keep(keep)
    if not items:
        raise CatalogUpdateError("upsert: no items given")
    ids = np.asarray([i.item_id for i in items], np.int64)
    if len(np.unique(ids)) != len(ids):
        raise CatalogUpdateError("upsert: an item_id is given twice; give each item once")
    with _writer_lock(repo):
        state = ServedCatalog.read(repo)
        base = CatalogVersion.open(repo, state.version)
        rows = base.rows_of(ids)
        digests = np.asarray([text_digest(i.text()) for i in items], np.uint64)
        existing = rows >= 0
        same_text = existing & (np.asarray(base.digests)[np.maximum(rows, 0)] == digests)
        embeddings = np.zeros((len(items), base.catalog.dim), np.float32)
        embeddings[same_text] = np.asarray(base.catalog.embeddings)[rows[same_text]]
        todo = np.flatnonzero(~same_text)
        started = time.perf_counter()
        if len(todo):
            embedder = embed or local_embedder(repo, progress=progress)
            fresh = np.asarray(embedder([items[i].text() for i in todo]), np.float32)
            if fresh.shape != (len(todo), base.catalog.dim):
                raise CatalogUpdateError(
                    f"the item embedder returned shape {fresh.shape}; expected ({len(todo)}, {base.catalog.dim})"
                )
            embeddings[todo] = fresh
        embed_s = time.perf_counter() - started
        kept = np.ones(len(base.catalog.item_ids), bool)
        kept[rows[existing]] = False
        merged = Rows.of_version(base, kept) + Rows.of_items(items, embeddings)
        retired = base.catalog.retired_items.without(ids)
        started = time.perf_counter()
        version = _next_version(repo, state)
        _write_version(repo, base, version, merged, retired, retrain_index=retrain_index, progress=progress)
        _serve(repo, state, version, keep)
        return UpdateReport(
            version=version,
            previous=state.version,
            items=len(merged.item_ids),
            added=int((~existing).sum()),
            changed=int(existing.sum()),
            embedded=len(todo),
            retired=len(retired.item_ids),
            embed_s=embed_s,
            write_s=time.perf_counter() - started,
        )


def delete(
    repo: Path,
    item_ids: Sequence[int],
    *,
    forget: bool = False,
    keep: int = KEEP_VERSIONS,
    retrain_index: bool = False,
    progress: bool = False,
) -> UpdateReport:
    """Remove items by id in a new served catalog version; every id must be in the served catalog.

    A deleted item is retired (RetiredItems): never a candidate or a result again, but still
    counted in the user histories that name it. forget: remove the ids for good instead, served or
    retired ones (a history naming one is then refused like any unknown id). An IVF index keeps
    the served version's centroids unless retrain_index (see upsert).
    """
    repo = Path(repo)
    _check_keep(keep)
    ids = np.unique(np.asarray(list(item_ids), np.int64))
    if not len(ids):
        raise CatalogUpdateError("delete: no item ids given")
    with _writer_lock(repo):
        state = ServedCatalog.read(repo)
        base = CatalogVersion.open(repo, state.version)
        old_retired = base.catalog.retired_items
        rows = base.rows_of(ids)
        was_retired = np.isin(ids, old_retired.item_ids)
        unknown = ids[(rows < 0) & ~(forget & was_retired)]
        if len(unknown):
            where = "served catalog" if not forget else "served catalog or its retired items"
            retired_too = np.isin(unknown, old_retired.item_ids)
            hint = (
                f"; {retired_too.sum()} of them already deleted, e.g. {unknown[retired_too][:5].tolist()} "
                "(kept for user histories: --forget removes them for good)"
                if retired_too.any()
                else ""
            )
            raise CatalogUpdateError(
                f"delete: {len(unknown)} id(s) not in the {where} (version {state.version}), e.g. "
                f"{unknown[:5].tolist()}{hint}; nothing was deleted"
            )
        served = rows[rows >= 0]
        kept = np.ones(len(base.catalog.item_ids), bool)
        kept[served] = False
        if not kept.any():
            raise CatalogUpdateError("delete: that would leave the catalog empty; nothing was deleted")
        if forget:
            retired = old_retired.without(ids)
        else:
            retired = old_retired.plus(
                np.asarray(base.catalog.item_ids)[served], np.asarray(base.catalog.embeddings)[served]
            )
        started = time.perf_counter()
        version = _next_version(repo, state)
        _write_version(
            repo, base, version, Rows.of_version(base, kept), retired, retrain_index=retrain_index, progress=progress
        )
        _serve(repo, state, version, keep)
        return UpdateReport(
            version=version,
            previous=state.version,
            items=int(kept.sum()),
            deleted=len(served),
            retired=len(retired.item_ids),
            forgotten=len(ids) if forget else 0,
            write_s=time.perf_counter() - started,
        )


def rollback(repo: Path) -> UpdateReport:
    """Serve the previous catalog version again; the version rolled back from is removed."""
    repo = Path(repo)
    with _writer_lock(repo):
        state = ServedCatalog.read(repo)
        if not state.previous:
            raise CatalogUpdateError(
                f"rollback: catalog version {state.version} is served and no previous version is kept"
            )
        target = state.previous[0]
        catalog = Catalog.load(version_catalog_dir(repo, target))
        started = time.perf_counter()
        new = ServedCatalog(target, state.previous[1:])
        new.write(repo)
        _prune(repo, new)
        return UpdateReport(
            version=target,
            previous=state.version,
            items=len(catalog.item_ids),
            retired=len(catalog.retired_items.item_ids),
            write_s=time.perf_counter() - started,
        )
