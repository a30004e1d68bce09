"""The synthetic shop: determinism, referential integrity, cold start, judgments, sessions, CLI errors."""

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from aisle.cli import main
from aisle.data.format import ITEMS, JUDGMENTS, MANIFEST, QUERIES, SESSIONS, Dataset, load_dataset
from aisle.data.generator import PRESETS, GeneratorConfig, _typo, split_of
from aisle.errors import DataError
from aisle.schema import MAX_HISTORY

FILES = (ITEMS, QUERIES, JUDGMENTS, SESSIONS, MANIFEST)


@pytest.fixture(scope="module")
def shop(tiny_data: Path) -> Dataset:
    return load_dataset(tiny_data)


def test_same_seed_writes_identical_bytes_in_another_process(tiny_data: Path, tmp_path: Path) -> None:
    """A fresh interpreter with another string-hash seed: no set or dict order leaks into the bytes."""
    command = [sys.executable, "-m", "aisle.cli", "data", "--out", str(tmp_path), "--preset", "tiny", "--seed", "0"]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (tiny_data / name).read_bytes(), name


def test_another_seed_gives_another_shop(tiny_data: Path, tmp_path: Path) -> None:
    assert main(["data", "--out", str(tmp_path), "--preset", "tiny", "--seed", "1"]) == 0
    for name in (ITEMS, QUERIES, SESSIONS):
        assert (tmp_path / name).read_bytes() != (tiny_data / name).read_bytes(), name


def test_every_referenced_id_exists(shop: Dataset) -> None:
    item_ids = {item.item_id for item in shop.items}
    query_text = {query.query_id: query.text for query in shop.queries}
    assert sorted(item_ids) == list(range(len(shop.items)))
    assert all(j.item_id in item_ids and j.query_id in query_text for j in shop.judgments)
    for session in shop.sessions:
        assert set(session.history) | {i.item_id for i in session.impressions} <= item_ids
        if session.query:
            assert query_text[session.query_id] == session.query
        else:
            assert session.query_id is None


def test_cold_start_items_never_reach_training_but_appear_in_evaluation(shop: Dataset) -> None:
    cold = {item.item_id for item in shop.items if item.cold_start}
    assert 0.03 < len(cold) / len(shop.items) < 0.07
    for session in shop.split("train"):
        assert not cold & (set(session.history) | {i.item_id for i in session.impressions})
    held_out = [i for s in shop.sessions if s.split != "train" for i in s.impressions if i.item_id in cold]
    assert held_out and any(i.clicked for i in held_out)


def test_sessions_split_by_session_id_hash(shop: Dataset) -> None:
    assert {s.split for s in shop.sessions} == {"train", "valid", "test"}
    assert all(s.split == split_of(s.session_id) for s in shop.sessions)
    shares = np.bincount([("train", "valid", "test").index(split_of(i)) for i in range(10_000)]) / 10_000
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.02)


def test_queries_are_distinct_and_never_titles(shop: Dataset) -> None:
    titles = {item.title.lower() for item in shop.items}
    texts = [q.text for q in shop.queries]
    assert len(set(texts)) == len(texts) == PRESETS["tiny"].num_queries
    assert not set(texts) & titles
    assert {q.specificity for q in shop.queries} == {"broad", "medium", "specific"}


def test_exact_and_substitute_share_the_query_leaf_complements_and_irrelevant_do_not(shop: Dataset) -> None:
    by_query: dict[int, dict[str, set[tuple[str, ...]]]] = defaultdict(lambda: defaultdict(set))
    for j in shop.judgments:
        by_query[j.query_id][j.label].add(shop.item(j.item_id).category)
    for labels in by_query.values():
        leaf = labels["E"] | labels["S"]
        assert len(leaf) == 1, labels
        assert not (labels["C"] | labels["I"]) & leaf
    counts = {label: sum(bool(labels[label]) for labels in by_query.values()) for label in "ESCI"}
    assert all(counts.values()), counts


def test_every_session_shows_distinct_items_and_purchases_are_clicks(shop: Dataset) -> None:
    for session in shop.sessions:
        shown = [i.item_id for i in session.impressions]
        assert 1 <= len(shown) == len(set(shown)) <= PRESETS["tiny"].impressions_per_session
        assert all(i.clicked for i in session.impressions if i.purchased)
        assert len(session.history) <= MAX_HISTORY
    search_share = np.mean([bool(s.query) for s in shop.sessions])
    assert 0.6 < search_share < 0.8


def test_history_is_the_users_earlier_clicks_oldest_first(shop: Dataset) -> None:
    cold = {item.item_id for item in shop.items if item.cold_start}
    last: dict[int, tuple[int, ...]] = {}
    checked = 0
    for session in shop.sessions:  # written in time order
        if session.user_id in last:
            assert session.history == last[session.user_id][-MAX_HISTORY:]
            checked += 1
        clicked = tuple(i.item_id for i in session.impressions if i.clicked and i.item_id not in cold)
        last[session.user_id] = session.history + clicked
    assert checked > len(shop.sessions) / 2


def test_clicks_follow_relevance_and_hidden_tastes(shop: Dataset) -> None:
    """Exact matches draw more clicks than irrelevant items, and brands from the user's history
    draw more clicks than other brands: the personal signal is real and learnable from history."""
    label = {(j.query_id, j.item_id): j.label for j in shop.judgments}
    by_label: dict[str, list[bool]] = defaultdict(list)
    by_familiarity: dict[bool, list[bool]] = defaultdict(list)
    for session in shop.sessions:
        brands = {shop.item(i).brand for i in session.history}
        for imp in session.impressions:
            if session.query:
                by_label[label[session.query_id, imp.item_id]].append(imp.clicked)
            by_familiarity[shop.item(imp.item_id).brand in brands].append(imp.clicked)
    assert np.mean(by_label["E"]) > 2 * np.mean(by_label["I"])
    assert np.mean(by_familiarity[True]) > 1.5 * np.mean(by_familiarity[False])


def test_typo_is_one_small_edit_of_one_word() -> None:
    rng = np.random.default_rng(0)
    text = "running coffee kettle"  # doubled letters: a swap of equal letters must not pass for a typo
    for _ in range(200):
        typed = _typo(rng, text)
        assert abs(len(typed) - len(text)) <= 1
        assert sum(a != b for a, b in zip(typed.split(), text.split())) == 1, typed


def test_config_below_one_item_per_leaf_is_refused() -> None:
    with pytest.raises(DataError, match="num_items=10"):
        GeneratorConfig(num_items=10, num_queries=5, num_users=5, num_sessions=5)


def test_cli_refuses_an_output_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "not_a_dir"
    target.write_text("x")
    assert main(["data", "--out", str(target), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "Traceback" not in err
