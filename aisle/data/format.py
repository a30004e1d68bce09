"""aisle's on-disk dataset format: JSON Lines files in one directory. Bring your own data in it.

    DIR/items.jsonl       one Item per line (the catalog)
    DIR/queries.jsonl     one Query per line
    DIR/judgments.jsonl   one Judgment per line: graded (query, item) relevance, ESCI labels
    DIR/sessions.jsonl    one Session per line: a search (query) or a feed (empty query) shown to a user
    DIR/manifest.json     DatasetManifest

Every reader error names the file, the line and the field. Only numpy and the standard library
are used so the Triton item store can read the catalog too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from aisle.errors import DataError

ITEMS = "items.jsonl"
QUERIES = "queries.jsonl"
JUDGMENTS = "judgments.jsonl"
SESSIONS = "sessions.jsonl"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

#: ESCI labels (Amazon Shopping Queries): Exact, Substitute, Complement, Irrelevant, with gains.
ESCI_GAIN: dict[str, float] = {"E": 3.0, "S": 1.0, "C": 0.5, "I": 0.0}
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Item:
    item_id: int
    title: str
    brand: str
    category: tuple[str, ...]  # taxonomy path, root first: ("Shoes", "Running Shoes")
    attributes: dict[str, str]  # e.g. {"color": "black", "size": "10"}
    price: float
    rating: float  # 0..5
    review_count: int
    popularity: float  # non-negative, e.g. trailing 30-day interactions
    cold_start: bool = False  # never shown in training sessions

    def text(self) -> str:
        """The text the item tower embeds: title, brand, category path, key attributes."""
        attributes = ", ".join(f"{k}: {v}" for k, v in self.attributes.items())
        parts = [self.title, self.brand, " > ".join(self.category), attributes]
        return " | ".join(p for p in parts if p)

    def features(self) -> tuple[float, float, float, float]:
        """Raw features in aisle.schema.ITEM_FEATURES order."""
        return (self.price, self.rating, float(self.review_count), self.popularity)


@dataclass(frozen=True)
class Query:
    query_id: int
    text: str
    specificity: str = ""  # "broad" | "specific" | ... (informational)


@dataclass(frozen=True)
class Judgment:
    query_id: int
    item_id: int
    label: str  # one of ESCI_GAIN


@dataclass(frozen=True)
class Impression:
    item_id: int
    clicked: bool = False
    purchased: bool = False


@dataclass(frozen=True)
class Session:
    session_id: int
    user_id: int
    split: str  # one of SPLITS
    query: str  # "" for a recommendation (feed) session
    query_id: int | None
    history: tuple[int, ...]  # the user's interacted items before this session, oldest first
    impressions: tuple[Impression, ...]


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    seed: int | None
    preset: str
    counts: dict[str, int]
    fingerprint: str = ""  # sha256 over the data files, set by write_dataset
    format_version: int = FORMAT_VERSION


@dataclass
class Dataset:
    items: list[Item]
    queries: list[Query]
    judgments: list[Judgment]
    sessions: list[Session]
    manifest: DatasetManifest
    _by_id: dict[int, Item] = field(default_factory=dict, repr=False)

    def item(self, item_id: int) -> Item:
        if not self._by_id:
            self._by_id = {item.item_id: item for item in self.items}
        return self._by_id[item_id]

    def split(self, name: str) -> list[Session]:
        return [s for s in self.sessions if s.split == name]


# --- reading -------------------------------------------------------------------------------------

T = TypeVar("T")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: invalid JSON: {e.msg}") from e
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield number, record


def _build(cls: type[T], record: dict[str, Any], where: str, convert: Callable[[dict], dict] | None = None) -> T:
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - record.keys())
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r}")
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in record.items() if k in known}
    try:
        return cls(**(convert(values) if convert else values))
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(f"{where}: bad value: {e}") from e


def _item(values: dict) -> dict:
    values["category"] = tuple(values["category"])
    values["attributes"] = {str(k): str(v) for k, v in dict(values.get("attributes") or {}).items()}
    for key in ("price", "rating", "popularity"):
        values[key] = float(values[key])
    values["item_id"] = int(values["item_id"])
    values["review_count"] = int(values["review_count"])
    return values


def _session(values: dict) -> dict:
    if values["split"] not in SPLITS:
        raise ValueError(f"split={values['split']!r} is not one of {SPLITS}")
    values["history"] = tuple(int(i) for i in values["history"])
    values["impressions"] = tuple(Impression(**imp) for imp in values["impressions"])
    return values


def _judgment(values: dict) -> dict:
    if values["label"] not in ESCI_GAIN:
        raise ValueError(f"label={values['label']!r} is not one of {sorted(ESCI_GAIN)}")
    return values


def read_jsonl(path: Path, cls: type[T], convert: Callable[[dict], dict] | None = None) -> list[T]:
    return [_build(cls, record, f"{path}:{n}", convert) for n, record in _records(path)]


def read_items(path: Path) -> list[Item]:
    items = read_jsonl(path, Item, _item)
    if not items:
        raise DataError(f"{path}: the catalog is empty")
    return items


def load_dataset(directory: str | Path) -> Dataset:
    """Read a dataset directory, checking every reference (unknown item ids name their file)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: dataset directory not found")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: file not found")
    try:
        manifest = _build(DatasetManifest, json.loads(manifest_path.read_text()), str(manifest_path))
    except json.JSONDecodeError as e:
        raise DataError(f"{manifest_path}: invalid JSON: {e.msg}") from e
    items = read_items(directory / ITEMS)
    queries = read_jsonl(directory / QUERIES, Query)
    judgments = read_jsonl(directory / JUDGMENTS, Judgment, _judgment)
    sessions = read_jsonl(directory / SESSIONS, Session, _session)
    known = {item.item_id for item in items}
    for session in sessions:
        for item_id in session.history + tuple(i.item_id for i in session.impressions):
            if item_id not in known:
                raise DataError(
                    f"{directory / SESSIONS}: session {session.session_id} references unknown item_id {item_id}"
                )
    return Dataset(items, queries, judgments, sessions, manifest)


# --- writing -------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def write_jsonl(path: Path, rows: list[Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(_jsonable(row), ensure_ascii=False, sort_keys=True) + "\n")


def fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in (ITEMS, QUERIES, JUDGMENTS, SESSIONS):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def write_dataset(directory: str | Path, dataset: Dataset) -> DatasetManifest:
    """Write all files deterministically (sorted keys, given row order) and the manifest last."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory}: exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / ITEMS, dataset.items)
    write_jsonl(directory / QUERIES, dataset.queries)
    write_jsonl(directory / JUDGMENTS, dataset.judgments)
    write_jsonl(directory / SESSIONS, dataset.sessions)
    counts = {
        "items": len(dataset.items),
        "queries": len(dataset.queries),
        "judgments": len(dataset.judgments),
        "sessions": len(dataset.sessions),
    }
    manifest = DatasetManifest(
        name=dataset.manifest.name,
        seed=dataset.manifest.seed,
        preset=dataset.manifest.preset,
        counts=counts,
        fingerprint=fingerprint(directory),
    )
    (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    return manifest
