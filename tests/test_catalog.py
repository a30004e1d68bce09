"""The catalog step: the exported item graph embeds items as the PyTorch tower does, and rendering with
graphs given never loads PyTorch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aisle.cli import main
from aisle.data.format import load_dataset
from aisle.export.catalog import compute_catalog
from aisle.export.graphs import graph_file
from aisle.export.repo_format import Catalog, catalog_dir
from aisle.modeling.checkpoint import Manifest
from aisle.schema import ITEM_ENCODER


def test_onnx_catalog_equals_the_pytorch_item_tower_within_1e_5(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path
) -> None:
    from aisle.modeling.loading import embed_texts, load_checkpoint
    from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

    schema = Manifest.load(serving_checkpoint).schema()
    items = load_dataset(tiny_data).items
    graph = onnx_dir / graph_file(ITEM_ENCODER)
    # A batch of 5 splits the commoner lengths into several runs; the texts must span several lengths.
    catalog = compute_catalog(schema, serving_checkpoint, graph, items, batch_size=5, progress=False)
    checkpoint = load_checkpoint(serving_checkpoint)
    tokenizer = load_tokenizer(checkpoint.item_dir, schema.limits.item_buckets[-1])
    bucketing = Bucketing(schema.limits.item_buckets)
    texts = [item.text() for item in items]
    assert len(np.unique(encode_batch(tokenizer, texts, bucketing)[1].sum(axis=1))) > 5
    # The PyTorch reference pads each batch of 64 to a bucket: padding must not matter.
    torch_embeddings = embed_texts(checkpoint.item_tower, tokenizer, texts, bucketing).numpy()
    order = np.argsort([item.item_id for item in items])
    assert catalog.item_ids.tolist() == sorted(item.item_id for item in items)
    assert np.abs(catalog.embeddings - torch_embeddings[order]).max() <= 1e-5
    np.testing.assert_array_equal(catalog.features, np.array([item.features() for item in items], np.float32)[order])


def test_blank_short_and_truncated_texts_embed_as_the_pytorch_tower_does(
    serving_checkpoint: Path, onnx_dir: Path
) -> None:
    from aisle.export.catalog import embed_item_texts
    from aisle.modeling.loading import embed_texts, load_checkpoint
    from aisle.tokenization import Bucketing, load_tokenizer

    schema = Manifest.load(serving_checkpoint).schema()
    texts = ["", "   ", "x", "trail shoe", "waterproof hiking boot " * 80]  # blank, short, cut at max length
    graph = onnx_dir / graph_file(ITEM_ENCODER)
    onnx = embed_item_texts(schema, serving_checkpoint, graph, texts, batch_size=2, progress=False)
    checkpoint = load_checkpoint(serving_checkpoint)
    tokenizer = load_tokenizer(checkpoint.item_dir, schema.limits.item_buckets[-1])
    reference = embed_texts(checkpoint.item_tower, tokenizer, texts, Bucketing(schema.limits.item_buckets)).numpy()
    assert not onnx[:2].any(), "blank texts embed to the zero vector"
    assert np.abs(onnx - reference).max() <= 1e-5


def _catalog_argv(checkpoint: Path, data: Path, onnx_dir: Path, out: Path) -> list[str]:
    paths = ["--checkpoint", str(checkpoint), "--data", str(data), "--onnx-dir", str(onnx_dir)]
    return ["export", "catalog", *paths, "--out", str(out)]


def _repo_argv(checkpoint: Path, data: Path, onnx_dir: Path, out: Path, target: str, *extra: str) -> list[str]:
    paths = ["--checkpoint", str(checkpoint), "--data", str(data), "--onnx-dir", str(onnx_dir), "--out", str(out)]
    return ["export", "repo", *paths, "--target", target, *extra]


def test_export_catalog_writes_the_catalog_that_export_repo_serves_with_catalog(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    catalog_file = tmp_path / "catalog"
    assert main(_catalog_argv(serving_checkpoint, tiny_data, onnx_dir, catalog_file)) == 0
    assert "items/s" in capsys.readouterr().out
    repo = tmp_path / "repo"
    argv = _repo_argv(serving_checkpoint, tiny_data, onnx_dir, repo, "embedded", "--catalog", str(catalog_file))
    assert main(argv) == 0
    served = Catalog.load(catalog_dir(repo))
    written = Catalog.load(catalog_file)
    np.testing.assert_array_equal(served.item_ids, written.item_ids)
    np.testing.assert_array_equal(served.embeddings, written.embeddings)


def test_export_repo_refuses_a_catalog_of_other_items(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    items = load_dataset(tiny_data).items
    rng = np.random.default_rng(0)
    ids = np.array([item.item_id for item in items[1:]] + [10**9])
    other = Catalog.build(ids, rng.standard_normal((len(ids), 384)), np.zeros((len(ids), 4)))
    other.save(tmp_path / "other")
    argv = _repo_argv(serving_checkpoint, tiny_data, onnx_dir, tmp_path / "repo", "embedded", "--catalog")
    assert main([*argv, str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err
    assert "catalog item ids do not match the dataset's items" in error
    assert f"1 dataset items missing, e.g. [{items[0].item_id}]" in error and "e.g. [1000000000]" in error
    assert not (tmp_path / "repo").exists()


#: Run in a fresh interpreter: the catalog step and rendering with graphs given, then the heavy modules loaded.
NO_TORCH_PROBE = """
import json, sys
from aisle.cli import main
for argv in json.loads(sys.argv[1]):
    assert main(argv) == 0, argv
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers"})))
"""


def test_catalog_and_rendering_with_onnx_dir_never_import_torch(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    catalog_file = tmp_path / "catalog"
    ckpt, data = serving_checkpoint, tiny_data
    runs = [
        _catalog_argv(ckpt, data, onnx_dir, catalog_file),
        _repo_argv(ckpt, data, onnx_dir, tmp_path / "trt", "tensorrt"),  # computes the catalog itself
        _repo_argv(ckpt, data, onnx_dir, tmp_path / "emb", "embedded", "--catalog", str(catalog_file)),
    ]
    probe = subprocess.run(
        [sys.executable, "-c", NO_TORCH_PROBE, json.dumps(runs)], capture_output=True, text=True, timeout=600
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout.splitlines()[-1]) == []
    assert (tmp_path / "trt" / "start_tritonserver.sh").is_file()
    computed = Catalog.load(catalog_dir(tmp_path / "trt"))
    np.testing.assert_array_equal(computed.embeddings, Catalog.load(catalog_file).embeddings)
