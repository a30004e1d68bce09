"""Checkpoint round trip and the manifest cross-checks."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from aisle.errors import CheckpointError
from aisle.modeling.checkpoint import HEAD_WEIGHTS, MANIFEST
from aisle.modeling.loading import load_checkpoint


def test_checkpoint_round_trips_towers_and_head(untrained_checkpoint: Path) -> None:
    ckpt = load_checkpoint(untrained_checkpoint)
    assert ckpt.manifest.embedding_dim == 384
    ids = torch.tensor([[101, 2770, 6007, 102]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        embedding = ckpt.query_tower(ids, mask)
    assert embedding.shape == (1, 384)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert not ckpt.head.training and not ckpt.query_tower.training


def test_checkpoint_missing_piece_is_named(untrained_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(untrained_checkpoint, broken)
    (broken / HEAD_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=HEAD_WEIGHTS):
        load_checkpoint(broken)


def test_checkpoint_manifest_disagreeing_with_weights_is_refused(untrained_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(untrained_checkpoint, broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["embedding_dim"] = 768
    (broken / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="embedding_dim=768"):
        load_checkpoint(broken)
