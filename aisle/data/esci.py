"""Amazon Shopping Queries (ESCI) files -> aisle's dataset format.

Reads the public release's two tables, as .parquet (needs pyarrow, an optional dependency) or
.csv (standard library only):

    examples: query_id, query, product_id, esci_label  [required]
              product_locale, split                     [optional]
    products: product_id, product_title, product_brand  [required]
              product_color, product_locale             [optional]

What becomes what:
- items: the products that some kept example judges (the catalog is the judged products), ids
  0..N-1 in (product_locale, product_id) order; DIR/esci_item_ids.jsonl maps them back. ESCI has
  no price, rating, reviews or popularity: they are written as 0.0, 0.0, 0 and 0.0 (Item forbids
  NaN), so those features are constant and carry no signal. No category either: `category` is ().
  product_color becomes attributes["color"]. Products without a title are dropped with their
  examples.
- queries: query_id and text as given; judgments: one per example (labels E/S/C/I, or the long
  names exact/substitute/complement/irrelevant).
- sessions: one per query, an anonymous user (user_id = session_id) with no history; the
  impressions are the query's judged products in a fixed pseudo-random order (file order could
  leak the label); clicked = Exact. ESCI's split "test" stays test; "train" becomes train, or
  valid for the ~10% of sessions that split_of puts in valid. Without a split column, split_of.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aisle.data.format import (
    Dataset,
    DatasetManifest,
    Impression,
    Item,
    Judgment,
    Query,
    Session,
    write_dataset,
)
from aisle.data.generator import split_of
from aisle.errors import DataError

ESCI_ITEM_IDS = "esci_item_ids.jsonl"
EXAMPLE_COLUMNS = ("query_id", "query", "product_id", "esci_label")
EXAMPLE_OPTIONAL = ("product_locale", "split")
PRODUCT_COLUMNS = ("product_id", "product_title", "product_brand")
PRODUCT_OPTIONAL = ("product_color", "product_locale")
LABEL_NAMES = {"e": "E", "s": "S", "c": "C", "i": "I", "exact": "E", "substitute": "S", "complement": "C"}
LABEL_NAMES["irrelevant"] = "I"


@dataclass(frozen=True)
class EsciOptions:
    """What to keep.

    locale: product_locale to keep ("us", "es", "jp"); None keeps all. Ignored for a table
        without the column.
    max_queries: keep the first N queries by query_id (after the locale filter): a quick subset.
    """

    locale: str | None = "us"
    max_queries: int | None = None

    def __post_init__(self) -> None:
        if self.max_queries is not None and self.max_queries < 1:
            raise DataError(f"max_queries={self.max_queries} must be at least 1")


@dataclass(frozen=True, slots=True)
class _Example:
    query_id: int
    query: str
    key: tuple[str, str]  # (product_locale, product_id)
    label: str
    split: str


# --- reading tables ------------------------------------------------------------------------------


def _rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, {column: text}) for the required and present optional columns of a table."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, required, optional)
    if suffix == ".parquet":
        return _parquet_rows(path, required, optional)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}: expected .csv or .parquet")


def _check_columns(path: Path, present: list[str], required: tuple[str, ...], optional: tuple[str, ...]) -> list[str]:
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (found: {', '.join(present) or 'none'})")
    return [*required, *(c for c in optional if c in present)]


def _csv_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, [])
            wanted = _check_columns(path, header, required, optional)
            where = [header.index(c) for c in wanted]
            for row in reader:
                if len(row) != len(header):
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
                yield reader.line_num, {c: row[i] for c, i in zip(wanted, where)}
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}:{reader.line_num}: not readable as UTF-8 CSV: {e}") from e


def _parquet_rows(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading parquet needs pyarrow ({e}): pip install pyarrow, or pass the CSV") from e
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file: {e}") from e
    wanted = _check_columns(path, table.schema_arrow.names, required, optional)
    number = 0
    for batch in table.iter_batches(columns=wanted):
        columns = [batch.column(c).to_pylist() for c in wanted]
        for values in zip(*columns):
            number += 1
            yield number, {c: "" if v is None else str(v) for c, v in zip(wanted, values)}


# --- conversion ----------------------------------------------------------------------------------


def _read_examples(path: Path, options: EsciOptions) -> list[_Example]:
    """The examples of the wanted locale, checked row by row (label, query_id, split)."""
    examples = []
    for number, row in _rows(path, EXAMPLE_COLUMNS, EXAMPLE_OPTIONAL):
        locale = row.get("product_locale", "")
        if options.locale is not None and "product_locale" in row and locale != options.locale:
            continue
        label = LABEL_NAMES.get(row["esci_label"].strip().lower())
        if label is None:
            raise DataError(
                f"{path}:{number}: esci_label={row['esci_label']!r} is not one of E, S, C, I "
                "(or exact, substitute, complement, irrelevant)"
            )
        try:
            query_id = int(row["query_id"])
        except ValueError as e:
            raise DataError(f"{path}:{number}: query_id={row['query_id']!r} is not an integer") from e
        split = row.get("split", "")
        if split not in ("", "train", "test"):
            raise DataError(f"{path}:{number}: split={split!r} is not 'train' or 'test'")
        examples.append(_Example(query_id, row["query"], (locale, row["product_id"]), label, split))
    if options.max_queries is not None:
        keep = set(sorted({e.query_id for e in examples})[: options.max_queries])
        examples = [e for e in examples if e.query_id in keep]
    return examples


def _read_products(path: Path, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    """The wanted products that have a title. A key without a locale matches the id in any locale."""
    by_id: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(wanted):
        by_id.setdefault(key[1], []).append(key)
    found: dict[tuple[str, str], dict[str, str]] = {}
    for _, row in _rows(path, PRODUCT_COLUMNS, PRODUCT_OPTIONAL):
        if not row["product_title"].strip():
            continue
        for key in by_id.get(row["product_id"], []):
            if key[0] in ("", row.get("product_locale", key[0])):
                found.setdefault(key, row)
    return found


def _item(item_id: int, row: dict[str, str]) -> Item:
    color = row.get("product_color", "").strip()
    return Item(
        item_id=item_id,
        title=row["product_title"].strip(),
        brand=row["product_brand"].strip(),
        category=(),
        attributes={"color": color} if color else {},
        price=0.0,
        rating=0.0,
        review_count=0,
        popularity=0.0,
    )


def _shuffle_key(query_id: int, item_id: int) -> bytes:
    return hashlib.blake2b(f"{query_id}:{item_id}".encode(), digest_size=8).digest()


@dataclass
class EsciDataset:
    """A converted dataset, the (product_locale, product_id) of each item id, and what was dropped."""

    dataset: Dataset
    product_keys: list[tuple[str, str]]  # index = item_id
    dropped_examples: int  # examples whose product is missing from the products table or untitled


def load_esci(examples_path: str | Path, products_path: str | Path, options: EsciOptions | None = None) -> EsciDataset:
    """Read the two ESCI tables (see the module docstring for what becomes what)."""
    options = options or EsciOptions()
    examples_path, products_path = Path(examples_path), Path(products_path)
    examples = _read_examples(examples_path, options)
    if not examples:
        raise DataError(f"{examples_path}: no examples left (locale={options.locale!r})")
    products = _read_products(products_path, {e.key for e in examples})
    if not products:
        raise DataError(f"{products_path}: the catalog is empty: no titled product matches the examples")
    keys = sorted(products)
    item_of = {key: item_id for item_id, key in enumerate(keys)}
    items = [_item(item_of[key], products[key]) for key in keys]

    judged: dict[int, dict[int, str]] = {}
    texts: dict[int, str] = {}
    splits: dict[int, str] = {}
    kept = [e for e in examples if e.key in item_of]
    for example in kept:
        texts.setdefault(example.query_id, example.query)
        splits.setdefault(example.query_id, example.split)
        judged.setdefault(example.query_id, {})[item_of[example.key]] = example.label
    query_ids = sorted(judged)
    queries = [Query(query_id=q, text=texts[q]) for q in query_ids]
    judgments = [Judgment(q, item, label) for q in query_ids for item, label in sorted(judged[q].items())]
    sessions = []
    for session_id, q in enumerate(query_ids):
        order = sorted(judged[q], key=lambda item, q=q: _shuffle_key(q, item))
        hashed = split_of(session_id)
        split = {"": hashed, "test": "test"}.get(splits[q], "valid" if hashed == "valid" else "train")
        impressions = tuple(Impression(item_id=i, clicked=judged[q][i] == "E") for i in order)
        sessions.append(Session(session_id, session_id, split, texts[q], q, (), impressions))
    manifest = DatasetManifest(name=f"esci-{options.locale or 'all'}", seed=None, preset="esci", counts={})
    return EsciDataset(Dataset(items, queries, judgments, sessions, manifest), keys, len(examples) - len(kept))


def convert_esci(
    examples_path: str | Path, products_path: str | Path, out: str | Path, options: EsciOptions | None = None
) -> EsciDataset:
    """load_esci, then write the dataset and DIR/esci_item_ids.jsonl (item_id -> product_id, locale)."""
    converted = load_esci(examples_path, products_path, options)
    converted.dataset.manifest = write_dataset(out, converted.dataset)
    with (Path(out) / ESCI_ITEM_IDS).open("w", encoding="utf-8") as handle:
        for item_id, (locale, product_id) in enumerate(converted.product_keys):
            record = {"item_id": item_id, "product_id": product_id, "product_locale": locale}
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    return converted
