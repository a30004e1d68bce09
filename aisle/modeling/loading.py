"""Save and load whole checkpoints as PyTorch modules (export and training use these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aisle.errors import CheckpointError
from aisle.modeling.checkpoint import (
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    ITEM_ENCODER_DIR,
    QUERY_ENCODER_DIR,
    Manifest,
    require_pieces,
)
from aisle.modeling.fusion import FusionHead, FusionHeadConfig
from aisle.modeling.towers import TextTower


@dataclass
class Checkpoint:
    """The three trained modules and their manifest, in eval mode."""

    path: Path
    manifest: Manifest
    query_tower: TextTower
    item_tower: TextTower
    head: FusionHead

    @property
    def query_dir(self) -> Path:
        return self.path / QUERY_ENCODER_DIR

    @property
    def item_dir(self) -> Path:
        return self.path / ITEM_ENCODER_DIR


def save_checkpoint(
    ckpt: Path, manifest: Manifest, query_tower: TextTower, item_tower: TextTower, head: FusionHead, tokenizer
) -> None:
    """Write a checkpoint; `tokenizer` is a transformers tokenizer saved beside each tower."""
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    for name, tower in ((QUERY_ENCODER_DIR, query_tower), (ITEM_ENCODER_DIR, item_tower)):
        tower.encoder.save_pretrained(ckpt / name)
        tokenizer.save_pretrained(ckpt / name)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(ckpt / HEAD_WEIGHTS))
    (ckpt / HEAD_CONFIG).write_text(head.config.to_json() + "\n")
    manifest.save(ckpt)


def load_checkpoint(ckpt: str | Path) -> Checkpoint:
    """Load and cross-check a checkpoint: the manifest must agree with the weights it describes."""
    ckpt = Path(ckpt)
    require_pieces(ckpt)
    manifest = Manifest.load(ckpt)
    towers = [TextTower.from_pretrained(ckpt / name).eval() for name in (QUERY_ENCODER_DIR, ITEM_ENCODER_DIR)]
    for name, tower in zip((QUERY_ENCODER_DIR, ITEM_ENCODER_DIR), towers):
        if tower.embedding_dim != manifest.embedding_dim:
            raise CheckpointError(
                f"{ckpt}: manifest embedding_dim={manifest.embedding_dim} but {name} has "
                f"hidden_size={tower.embedding_dim}"
            )
    config = FusionHeadConfig.load(ckpt / HEAD_CONFIG)
    if config.embedding_dim != manifest.embedding_dim:
        raise CheckpointError(
            f"{ckpt / HEAD_CONFIG}: embedding_dim={config.embedding_dim} disagrees with the manifest's "
            f"{manifest.embedding_dim}"
        )
    head = FusionHead(config)
    try:
        head.load_state_dict(load_file(str(ckpt / HEAD_WEIGHTS)))
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"{ckpt / HEAD_WEIGHTS}: does not match {HEAD_CONFIG}: {e}") from e
    return Checkpoint(ckpt, manifest, towers[0], towers[1], head.eval())


def embed_texts(tower: TextTower, tokenizer, texts: list[str], bucketing, batch_size: int = 64) -> torch.Tensor:
    """Embed texts with the serving tokenization (aisle.tokenization), in batches, without grad."""
    from aisle.tokenization import encode_batch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            ids, mask = encode_batch(tokenizer, texts[start : start + batch_size], bucketing)
            outputs.append(tower(torch.from_numpy(ids), torch.from_numpy(mask)))
    return torch.cat(outputs) if outputs else torch.zeros(0, tower.embedding_dim)


def init_checkpoint(
    base_model_dir: str | Path, out: str | Path, manifest: Manifest, head_config: FusionHeadConfig
) -> None:
    """Write a checkpoint whose towers are the base model and whose head is freshly initialised.

    Training starts from this; export and serving tests use it when the weights' quality is moot.
    """
    from transformers import AutoTokenizer

    tower = TextTower.from_pretrained(base_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    save_checkpoint(Path(out), manifest, tower, tower, FusionHead(head_config), tokenizer)
