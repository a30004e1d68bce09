"""The checkpoint format: two towers saved with save_pretrained, the fusion head, and a manifest.

CKPT/query_encoder/       model + tokenizer, loadable by plain transformers.AutoModel/AutoTokenizer
CKPT/item_encoder/        same (a copy of query_encoder when the towers are tied)
CKPT/fusion_head.safetensors, CKPT/fusion_head.json
CKPT/aisle.json           the manifest (Manifest below)
CKPT/metrics.json         evaluation written by `aisle train`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aisle.errors import CheckpointError
from aisle.manifests import load_manifest, save_manifest
from aisle.schema import Schema, ServingLimits, build_schema

QUERY_ENCODER_DIR = "query_encoder"
ITEM_ENCODER_DIR = "item_encoder"
HEAD_WEIGHTS = "fusion_head.safetensors"
HEAD_CONFIG = "fusion_head.json"
MANIFEST = "aisle.json"
METRICS = "metrics.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a checkpoint is: everything export and serving need besides the weights.

    limits: the serving limits the towers were trained with (length buckets, history length and
        decay); every repository rendered from this checkpoint starts from them.
    """

    base_model: str
    embedding_dim: int
    limits: ServingLimits = field(default_factory=ServingLimits)
    tied_towers: bool = False
    data_fingerprint: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def query_max_length(self) -> int:
        return self.limits.query_buckets[-1]

    @property
    def item_max_length(self) -> int:
        return self.limits.item_buckets[-1]

    def schema(self) -> Schema:
        """The served interface for this checkpoint."""
        return build_schema(self.embedding_dim, self.limits)

    def save(self, ckpt: Path) -> None:
        save_manifest(self, Path(ckpt) / MANIFEST)

    @classmethod
    def load(cls, ckpt: Path) -> Manifest:
        return load_manifest(
            cls,
            Path(ckpt) / MANIFEST,
            required=("base_model", "embedding_dim"),
            format_version=FORMAT_VERSION,
            error=CheckpointError,
            absent=f"{ckpt}: not an aisle checkpoint (missing {MANIFEST})",
        )


def require_pieces(ckpt: Path) -> None:
    """Fail with the name of the first missing piece instead of deep inside a loader."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: checkpoint directory does not exist")
    for piece in (MANIFEST, QUERY_ENCODER_DIR, ITEM_ENCODER_DIR, HEAD_WEIGHTS, HEAD_CONFIG):
        if not (ckpt / piece).exists():
            raise CheckpointError(f"{ckpt}: checkpoint is missing {piece}")
