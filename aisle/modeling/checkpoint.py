"""The checkpoint format: two towers saved with save_pretrained, the fusion head, and a manifest.

CKPT/query_encoder/       model + tokenizer, loadable by plain transformers.AutoModel/AutoTokenizer
CKPT/item_encoder/        same (a copy of query_encoder when the towers are tied)
CKPT/fusion_head.safetensors, CKPT/fusion_head.json
CKPT/aisle.json           the manifest (Manifest below)
CKPT/metrics.json         evaluation written by `aisle train`
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from aisle.errors import CheckpointError
from aisle.schema import HISTORY_DECAY, ITEM_BUCKETS, MAX_HISTORY, QUERY_BUCKETS, Schema, build_schema

QUERY_ENCODER_DIR = "query_encoder"
ITEM_ENCODER_DIR = "item_encoder"
HEAD_WEIGHTS = "fusion_head.safetensors"
HEAD_CONFIG = "fusion_head.json"
MANIFEST = "aisle.json"
METRICS = "metrics.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a checkpoint is: everything export and serving need besides the weights."""

    base_model: str
    embedding_dim: int
    query_buckets: tuple[int, ...] = QUERY_BUCKETS
    item_buckets: tuple[int, ...] = ITEM_BUCKETS
    tied_towers: bool = False
    history_decay: float = HISTORY_DECAY
    max_history: int = MAX_HISTORY
    data_fingerprint: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def query_max_length(self) -> int:
        return self.query_buckets[-1]

    @property
    def item_max_length(self) -> int:
        return self.item_buckets[-1]

    def schema(self) -> Schema:
        """The served interface for this checkpoint."""
        return build_schema(
            self.embedding_dim,
            query_buckets=self.query_buckets,
            item_buckets=self.item_buckets,
            max_history=self.max_history,
            history_decay=self.history_decay,
        )

    def save(self, ckpt: Path) -> None:
        (ckpt / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, ckpt: Path) -> Manifest:
        path = Path(ckpt) / MANIFEST
        if not path.is_file():
            raise CheckpointError(f"{ckpt}: not an aisle checkpoint (missing {MANIFEST})")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: invalid JSON: {e}") from e
        known = {f.name for f in fields(cls)}
        missing = {"base_model", "embedding_dim"} - raw.keys()
        if missing:
            raise CheckpointError(f"{path}: missing field(s) {sorted(missing)}")
        if raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise CheckpointError(f"{path}: format_version={raw['format_version']}, this aisle reads {FORMAT_VERSION}")
        for key in ("query_buckets", "item_buckets"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**{k: v for k, v in raw.items() if k in known})


def require_pieces(ckpt: Path) -> None:
    """Fail with the name of the first missing piece instead of deep inside a loader."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: checkpoint directory does not exist")
    for piece in (MANIFEST, QUERY_ENCODER_DIR, ITEM_ENCODER_DIR, HEAD_WEIGHTS, HEAD_CONFIG):
        if not (ckpt / piece).exists():
            raise CheckpointError(f"{ckpt}: checkpoint is missing {piece}")
