"""`aisle train` on the tiny shop: checkpoint, metrics.json, training data rules, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aisle.cli import main
from aisle.data.format import ITEMS, load_dataset
from aisle.modeling.checkpoint import HEAD_CONFIG, ITEM_ENCODER_DIR, METRICS, QUERY_ENCODER_DIR, Manifest
from aisle.modeling.fusion import FusionHeadConfig
from aisle.modeling.loading import load_checkpoint
from aisle.schema import ITEM_FEATURES
from aisle.training.corpus import Corpus, RankingLists
from aisle.training.evaluate import METHODS
from aisle.training.head import feature_stats
from aisle.training.towers import PairSet

pytestmark = pytest.mark.slow


def test_metrics_json_has_the_exact_structure_with_finite_values(tiny_checkpoint: Path) -> None:
    metrics = json.loads((tiny_checkpoint / METRICS).read_text())
    assert set(metrics) == {"test", "cold_start"}
    for split in ("test", "cold_start"):
        assert set(metrics[split]) == set(METHODS)
        for method in METHODS:
            block = metrics[split][method]
            assert block["n_sessions"] > 0
            for name in ("ndcg@10", "recall@100"):
                assert math.isfinite(block[name]) and 0.0 <= block[name] <= 1.0, (split, method, name)


def test_checkpoint_towers_load_with_plain_transformers(tiny_checkpoint: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    ckpt = load_checkpoint(tiny_checkpoint)
    for name, tower in ((QUERY_ENCODER_DIR, ckpt.query_tower), (ITEM_ENCODER_DIR, ckpt.item_tower)):
        model = AutoModel.from_pretrained(str(tiny_checkpoint / name)).eval()
        tokens = AutoTokenizer.from_pretrained(str(tiny_checkpoint / name))(["running shoes"], return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**tokens).last_hidden_state[0]
            reference = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
            got = tower(tokens["input_ids"], tokens["attention_mask"])[0]
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


def test_training_changes_only_the_top_layers_of_each_tower(tiny_checkpoint: Path, base_model_dir: Path) -> None:
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(base_model_dir)).state_dict()
    top = "encoder.layer.5.output.dense.weight"
    for name in (QUERY_ENCODER_DIR, ITEM_ENCODER_DIR):
        trained = AutoModel.from_pretrained(str(tiny_checkpoint / name)).state_dict()
        assert not torch.equal(trained[top], base[top]), f"{name}: top layer did not train"
        assert torch.equal(trained["encoder.layer.0.output.dense.weight"], base["encoder.layer.0.output.dense.weight"])
        assert torch.equal(trained["embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])


def test_manifest_and_head_record_data_fingerprint_and_catalog_feature_stats(
    tiny_checkpoint: Path, tiny_data: Path
) -> None:
    dataset = load_dataset(tiny_data)
    manifest = Manifest.load(tiny_checkpoint)
    assert manifest.data_fingerprint == dataset.manifest.fingerprint
    assert not manifest.tied_towers
    warm = np.array([item.features() for item in dataset.items if not item.cold_start])
    mean, std = feature_stats(warm, ITEM_FEATURES)
    config = FusionHeadConfig.load(tiny_checkpoint / HEAD_CONFIG)
    # The head config stores float32.
    np.testing.assert_allclose(config.feature_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(config.feature_std, std, rtol=1e-6)
    # log1p(price) has a mean near log of a typical shop price, not the raw price.
    assert 1.0 < config.feature_mean[ITEM_FEATURES.index("price")] < 8.0


def test_tower_pairs_keep_cold_items_out_and_never_use_a_positive_as_negative(tiny_data: Path) -> None:
    corpus = Corpus.from_dataset(load_dataset(tiny_data))
    pairs = PairSet.mine(corpus)
    assert len(pairs) > 0
    assert not corpus.cold[pairs.items].any()
    assert not corpus.cold[pairs.pools[0]].any()
    for pair in np.flatnonzero(pairs.pool_of):
        pool = pairs.pools[pairs.pool_of[pair]]
        assert len(pool) and not corpus.cold[pool].any()
        assert not set(pool.tolist()) & pairs.positives[int(pairs.queries[pair])], f"pair {pair}"
    assert pairs.from_clicks.any() and not pairs.from_clicks.all()
    assert all(corpus.query_texts[q].strip() for q in pairs.queries)
    queries, items, false_negatives = pairs.sample(np.random.default_rng(0), 8, click_share=0.5)
    assert items.shape == (16,) and false_negatives.shape == (8, 16)
    assert not false_negatives[np.arange(8), np.arange(8) + 8].any()
    assert not false_negatives.diagonal().any()


def test_evaluation_pool_is_impressions_plus_distinct_sampled_items_with_graded_gains(tiny_data: Path) -> None:
    corpus = Corpus.from_dataset(load_dataset(tiny_data))
    sessions = corpus.sessions_with_clicks("test")
    lists = RankingLists.build(
        corpus,
        sessions,
        extra=50,
        pool=np.arange(corpus.num_items),
        rng=np.random.default_rng(0),
        max_history=5,
        shuffle=True,
    )
    for n, session in enumerate(sessions):
        rows = lists.candidates[n][lists.valid[n]]
        assert len(rows) == len(session.impressions) + 50 == len(set(rows.tolist()))
        gains = dict(zip(rows.tolist(), lists.gains[n][lists.valid[n]].tolist()))
        for imp in session.impressions:
            expected = 2.0 if imp.purchased else 1.0 if imp.clicked else 0.0
            assert gains.pop(corpus.item_row[imp.item_id]) == expected
        assert set(gains.values()) <= {0.0}
        assert len(lists.histories[n]) == min(len(session.history), 5)
    assert (lists.query_rows == -1).tolist() == [not s.query for s in sessions]


@pytest.fixture
def broken_data(tiny_data: Path, tmp_path: Path) -> Path:
    """The tiny shop with line 3 of items.jsonl missing its title."""
    out = tmp_path / "data"
    out.mkdir()
    for path in tiny_data.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    lines = (out / ITEMS).read_text().splitlines()
    record = json.loads(lines[2])
    del record["title"]
    lines[2] = json.dumps(record)
    (out / ITEMS).write_text("\n".join(lines) + "\n")
    return out


def _fails_cleanly(argv: list[str], capsys: pytest.CaptureFixture, *expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


def test_train_reports_a_malformed_data_file_with_file_line_and_field(
    broken_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _fails_cleanly(
        ["train", "--data", str(broken_data), "--out", str(tmp_path / "ckpt")], capsys, "items.jsonl:3", "title"
    )


def test_train_reports_a_missing_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    _fails_cleanly(["train", "--data", str(missing), "--out", str(tmp_path / "ckpt")], capsys, str(missing))


def test_train_refuses_a_base_model_that_is_not_a_bert_encoder(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "ckpt"), "--base-model", str(gpt)]
    _fails_cleanly(argv, capsys, "config.json", "model_type='gpt2'")


def test_train_refuses_an_out_path_that_is_a_file(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "ckpt"
    out.write_text("not a directory")
    _fails_cleanly(["train", "--data", str(tiny_data), "--out", str(out)], capsys, str(out), "not a directory")
