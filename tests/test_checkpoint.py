"""Checkpoint round trip and the manifest cross-checks."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aisle.errors import CheckpointError
from aisle.modeling.checkpoint import HEAD_WEIGHTS, MANIFEST
from aisle.modeling.loading import load_checkpoint, save_checkpoint
from aisle.schema import ServingLimits


def test_checkpoint_round_trips_towers_head_and_manifest(untrained_checkpoint: Path, tmp_path: Path) -> None:
    """Weights moved away from the base model survive save -> load exactly (a loader that read the
    base weights, dropped a tensor or mixed up the towers would fail), and so does the manifest."""
    from transformers import AutoTokenizer

    original = load_checkpoint(untrained_checkpoint)
    torch.manual_seed(1)
    with torch.no_grad():
        for module in (original.query_tower, original.head):
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.01)
    manifest = replace(original.manifest, limits=ServingLimits(query_buckets=(4, 16), max_history=9))
    tokenizer = AutoTokenizer.from_pretrained(str(original.query_dir))
    save_checkpoint(tmp_path / "ckpt", manifest, original.query_tower, original.item_tower, original.head, tokenizer)
    loaded = load_checkpoint(tmp_path / "ckpt")

    assert loaded.manifest == manifest
    ids = torch.tensor([[101, 2770, 6007, 102], [101, 2417, 102, 0]])
    mask = (ids > 0).long()
    d = manifest.embedding_dim
    head_inputs = (torch.randn(2, d), torch.randn(2, d), torch.randn(2, 5, d), torch.rand(2, 5, 4) * 10)
    with torch.inference_mode():
        for before, after in ((original.query_tower, loaded.query_tower), (original.item_tower, loaded.item_tower)):
            torch.testing.assert_close(after(ids, mask), before(ids, mask), rtol=0, atol=0)
        torch.testing.assert_close(loaded.head(*head_inputs), original.head(*head_inputs), rtol=0, atol=0)
        assert not torch.allclose(loaded.query_tower(ids, mask), loaded.item_tower(ids, mask))
    assert not loaded.head.training and not loaded.query_tower.training


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
