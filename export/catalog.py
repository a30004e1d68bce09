"""The served catalog: every item text embedded with the exported item graph, as serving would.

`aisle export catalog` (and `aisle export repo` without --catalog) runs the item encoder's ONNX
graph through onnxruntime (model_repository/ort_runner.py, the session the embedded target serves
with) on texts tokenised by the serving code (aisle.tokenization: the same ids, truncated at the item
tokenizer model's largest bucket), so a catalog id scores as its text does through embed_item, and
no PyTorch is loaded. Texts of the same token length run together in large batches, unpadded: the
towers mask padding out, so only its cost differs, and on the small shop bucket padding would
add 54% (mean 38.7 tokens, mean bucket 59.7). The served text encoder likewise cuts each run to
its longest text (aisle.tokenization.longest_width); blank texts (all-zero mask) give the zero
vector, as served.
The result is a Catalog directory (export/repo_format.py) the item store serves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from aisle.errors import ExportError
from aisle.export.repo_format import Catalog
from aisle.schema import ATTENTION_MASK, EMBEDDING, INPUT_IDS, ITEM_ENCODER, Schema

#: Texts per onnxruntime run. Large same-length batches keep the matrix multiplications efficient;
#: 256 texts of 128 tokens hold ~0.4 GB of activations in a MiniLM-sized tower.
CATALOG_BATCH = 256
#: Texts tokenised at a time: bounds the token arrays of a large catalog (2 KB per text at 128 tokens).
TOKENIZE_CHUNK = 16384


def same_length_batches(widths: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(width, row indices) of batches of at most `batch_size` rows sharing one width."""
    for width in np.unique(widths):
        rows = np.flatnonzero(widths == width)
        for start in range(0, len(rows), batch_size):
            yield int(width), rows[start : start + batch_size]


def embed_item_texts(
    schema: Schema, checkpoint: Path, graph: Path, texts: Sequence[str], *, batch_size: int, progress: bool
) -> np.ndarray:
    """float32 [len(texts), dim]: each text through the item graph, tokenised as the item tokenizer model does."""
    from aisle.modeling.checkpoint import ITEM_ENCODER_DIR

    return embed_texts_with(
        schema, Path(checkpoint) / ITEM_ENCODER_DIR, graph, texts, batch_size=batch_size, progress=progress
    )


def embed_texts_with(
    schema: Schema, tokenizer_dir: Path, graph: Path, texts: Sequence[str], *, batch_size: int, progress: bool
) -> np.ndarray:
    """embed_item_texts with the tokenizer directory given: a checkpoint's item tower, or a rendered
    repository's item_tokenizer/1/ (what `aisle catalog upsert` embeds with, needing no checkpoint)."""
    from tqdm import tqdm

    from aisle.model_repository.ort_runner import OrtGraph
    from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

    if batch_size < 1:
        raise ExportError(f"catalog batch size must be >= 1, got {batch_size}")
    if not Path(graph).is_file():
        raise ExportError(f"{graph}: item encoder graph not found; export it with `aisle export onnx`")
    buckets = schema.encoder_buckets(ITEM_ENCODER)
    bucketing = Bucketing(buckets)
    tokenizer = load_tokenizer(Path(tokenizer_dir), max_length=bucketing.max_length)
    session = OrtGraph(Path(graph))
    embeddings = np.zeros((len(texts), schema.embedding_dim), np.float32)
    with tqdm(total=len(texts), desc="embedding catalog", unit="item", disable=not progress) as bar:
        for chunk in range(0, len(texts), TOKENIZE_CHUNK):
            ids, mask = encode_batch(tokenizer, list(texts[chunk : chunk + TOKENIZE_CHUNK]), bucketing)
            widths = np.maximum(mask.sum(axis=1), 1)
            for width, rows in same_length_batches(widths, batch_size):
                outputs = session.run({INPUT_IDS: ids[rows, :width], ATTENTION_MASK: mask[rows, :width]})
                embeddings[chunk + rows] = outputs[EMBEDDING]
                bar.update(len(rows))
    return embeddings


def compute_catalog(
    schema: Schema, checkpoint: Path, graph: Path, items: list, *, batch_size: int = CATALOG_BATCH, progress: bool
) -> Catalog:
    """The catalog of `items` (aisle.data.format.Item): ids, item-graph embeddings, raw features."""
    embeddings = embed_item_texts(
        schema, checkpoint, graph, [item.text() for item in items], batch_size=batch_size, progress=progress
    )
    return Catalog.build(_item_ids(items), embeddings, _features(items))


def load_catalog(path: Path, schema: Schema, items: list) -> Catalog:
    """A precomputed catalog, refused unless it holds exactly `items` with their features at the schema's dim."""
    catalog = Catalog.load(path)
    ids = _item_ids(items)
    order = np.argsort(ids, kind="stable")
    expected = ids[order]
    if not np.array_equal(catalog.item_ids, expected):
        missing = np.setdiff1d(expected, catalog.item_ids)
        extra = np.setdiff1d(catalog.item_ids, expected)
        raise ExportError(
            f"{path}: catalog item ids do not match the dataset's items ({len(catalog.item_ids)} ids vs "
            f"{len(expected)} items; {len(missing)} dataset items missing, e.g. {missing[:3].tolist()}; "
            f"{len(extra)} ids not in the dataset, e.g. {extra[:3].tolist()}); recompute it with "
            "`aisle export catalog` on this --data"
        )
    if catalog.dim != schema.embedding_dim:
        raise ExportError(
            f"{path}: catalog embedding dim {catalog.dim} != the checkpoint's embedding_dim {schema.embedding_dim}"
        )
    if not np.array_equal(catalog.features, _features(items)[order], equal_nan=True):
        raise ExportError(f"{path}: catalog features differ from the dataset's items; recompute it on this --data")
    return catalog


def _item_ids(items: list) -> np.ndarray:
    return np.array([item.item_id for item in items], np.int64)


def _features(items: list) -> np.ndarray:
    return np.array([item.features() for item in items], np.float32).reshape(len(items), -1)
