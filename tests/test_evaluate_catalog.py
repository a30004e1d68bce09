"""`aisle evaluate` on the tiny shop: metrics structure, BM25, the reference ranking, bad arguments."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aisle.cli import main
from aisle.data.format import load_dataset, write_dataset
from aisle.data.generator import PRESETS, generate
from aisle.modeling.loading import load_checkpoint
from aisle.schema import ServingLimits
from aisle.training.catalog_eval import (
    BM25,
    FEED_SYSTEMS,
    GOALS,
    POPULARITY,
    SEARCH_SYSTEMS,
    CatalogEvalConfig,
    Prepared,
    evaluate_catalog,
    format_report,
    prepare,
    reference_ranking,
    rerank,
    retrieval_scores,
    top_rows,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tiny_data: Path, tiny_checkpoint: Path) -> Prepared:
    return prepare(tiny_data, tiny_checkpoint, CatalogEvalConfig())


def test_cli_writes_every_system_and_goal_with_finite_metrics(
    tiny_data: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "nested" / "catalog.json"
    assert main(["evaluate", "--data", str(tiny_data), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for kind, systems in (("search", SEARCH_SYSTEMS), ("feed", FEED_SYSTEMS)):
        assert set(results[kind]) == set(systems)
        counts = {results[kind][name]["n_sessions"] for name in systems}
        assert len(counts) == 1 and counts.pop() > 0, f"{kind}: every system must see the same sessions"
        for name in systems:
            for metric in ("ndcg@10", "recall@100"):
                value = results[kind][name][metric]
                assert math.isfinite(value) and 0.0 <= value <= 1.0, (kind, name, metric)
    assert [goal["name"] for goal in results["goals"]] == [goal.name for goal in GOALS]
    for goal in results["goals"]:
        assert goal["passed"] == (goal["margin"] >= goal["required"])
    served = load_checkpoint(tiny_checkpoint).manifest.limits
    assert (results["settings"]["search_depth"], results["settings"]["recommend_depth"]) == (
        served.search_depth,
        served.recommend_depth,
    )
    table = capsys.readouterr().out
    assert "search  bm25" in table and "feed    popularity" in table and "goal search_over_bm25" in table


def test_sessions_are_the_test_sessions_with_a_click(prepared: Prepared, tiny_data: Path) -> None:
    dataset = load_dataset(tiny_data)
    expected = [s for s in dataset.split("test") if any(i.clicked or i.purchased for i in s.impressions)]
    lists = prepared.sessions.lists
    assert len(lists) == len(expected)
    assert list(lists.is_search) == [bool(s.query.strip()) for s in expected]
    gains = prepared.sessions.gains(np.arange(len(lists)), prepared.corpus.num_items)
    clicked = {prepared.corpus.item_row[i.item_id] for i in expected[0].impressions if i.clicked or i.purchased}
    assert set(np.flatnonzero(gains[0])) == clicked


def test_bm25_ranks_an_item_whose_title_is_the_query_first(prepared: Prepared) -> None:
    items = prepared.corpus.dataset.items
    bm25 = BM25(prepared.corpus.item_texts)
    titles = [items[n].title for n in range(0, len(items), max(len(items) // 10, 1))]
    for title, scores in zip(titles, bm25.scores(titles)):
        assert scores.shape == (len(items),)
        best = int(np.argmax(scores))
        assert items[best].title == title, f"query {title!r}: BM25's first item is {items[best].title!r}"


def depths(n: int) -> ServingLimits:
    """Limits retrieving n candidates for searches and feeds alike."""
    return ServingLimits(search_depth=n, recommend_depth=n, max_results=min(n, ServingLimits().max_results))


def test_reference_searches_and_feeds_retrieve_their_own_depths(prepared: Prepared) -> None:
    """A batch mixing searches and feeds: each request gets its kind's depth, as served."""
    tuned, features = prepared.tuned, prepared.corpus.features
    searches = np.flatnonzero(prepared.sessions.lists.is_search)[:2]
    index = np.concatenate([searches, searches])
    queries, users = tuned.queries[index].copy(), prepared.sessions.users[index]
    queries[2:] = 0.0
    limits = ServingLimits(search_depth=20, recommend_depth=40, max_results=20)
    ranked = reference_ranking(prepared.head, queries, users, tuned.items, features, limits=limits, k=20)
    for i, n in ((0, 20), (1, 20), (2, 40), (3, 40)):
        alone = reference_ranking(
            prepared.head, queries[i : i + 1], users[i : i + 1], tuned.items, features, limits=depths(n), k=20
        )
        np.testing.assert_array_equal(ranked.rows[i], alone.rows[0])


def test_reference_with_n_equal_to_the_catalog_is_the_head_over_every_item(prepared: Prepared) -> None:
    tuned, features = prepared.tuned, prepared.corpus.features
    index = np.arange(min(len(prepared.sessions.lists), 8))
    queries, users = tuned.queries[index], prepared.sessions.users[index]
    num_items, k = len(features), 20
    ranked = reference_ranking(prepared.head, queries, users, tuned.items, features, limits=depths(num_items), k=k)
    with torch.inference_mode():
        brute = prepared.head(
            torch.from_numpy(queries),
            torch.from_numpy(users),
            torch.from_numpy(np.broadcast_to(tuned.items, (len(index), *tuned.items.shape)).copy()),
            torch.from_numpy(np.broadcast_to(features, (len(index), *features.shape)).copy()),
        ).numpy()
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(ranked.rows, expected)
    np.testing.assert_allclose(ranked.scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5, rtol=0)


def test_reference_ranks_only_the_retrieved_candidates_best_first(prepared: Prepared) -> None:
    tuned, features = prepared.tuned, prepared.corpus.features
    index = np.arange(min(len(prepared.sessions.lists), 8))
    queries, users = tuned.queries[index], prepared.sessions.users[index]
    ranked = reference_ranking(prepared.head, queries, users, tuned.items, features, limits=depths(50), k=10)
    retrieved = top_rows(retrieval_scores(queries, users, tuned.items, features), 50)
    assert ranked.rows.shape == ranked.scores.shape == (len(index), 10)
    assert np.all(np.diff(ranked.scores, axis=1) <= 0)
    for rows, candidates in zip(ranked.rows, retrieved):
        assert set(rows) <= set(candidates)


def test_reference_without_query_or_history_retrieves_the_most_popular(prepared: Prepared) -> None:
    tuned, features = prepared.tuned, prepared.corpus.features
    zero = np.zeros((1, tuned.items.shape[1]), dtype=np.float32)
    ranked = reference_ranking(prepared.head, zero, zero, tuned.items, features, limits=depths(30), k=30)
    popular = np.argsort(-features[:, POPULARITY], kind="stable")[:30]
    assert set(ranked.rows[0]) == set(popular)


def test_top_rows_equals_a_full_stable_sort_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(6, 200)).astype(np.float32)  # many ties, also at the cut
    for n in (1, 37, 199, 200, 500):
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        np.testing.assert_array_equal(top_rows(scores, n), expected)


def test_the_bm25_engine_with_a_re_ranker_orders_its_matches_by_the_re_ranker_and_returns_nothing_else() -> None:
    lexical = np.array([[0.0, 3.0, 1.0, 2.0, 0.0, 5.0]], np.float32)
    semantic = np.array([[0.9, 0.1, 0.8, 0.3, 0.7, 0.2]], np.float32)
    scores = rerank(lexical, semantic, depth=3)  # BM25's top 3: rows 5, 1, 3; row 2 matched but too deep
    np.testing.assert_array_equal(np.argsort(-scores[0], kind="stable")[:3], [3, 5, 1])
    assert np.isneginf(scores[0, [0, 2, 4]]).all()
    few = rerank(lexical, semantic, depth=6)  # only four items match: rows 0 and 4 are never returned
    np.testing.assert_array_equal(np.argsort(-few[0], kind="stable")[:4], [2, 3, 5, 1])
    assert np.isneginf(few[0, [0, 4]]).all()


def test_report_names_each_system_and_goal_verdict(prepared: Prepared) -> None:
    config = CatalogEvalConfig(max_sessions=None)
    results = evaluate_catalog(prepared, config)
    report = format_report(results, config)
    for name in (*SEARCH_SYSTEMS, *FEED_SYSTEMS):
        assert name in report
    assert report.count("goal ") == len(GOALS)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--search-depth", "50"], "--search-depth=50 must be >= 100"),
        (["--recommend-depth", "99"], "--recommend-depth=99 must be >= 100"),
        (["--max-sessions", "0"], "--max-sessions=0 must be >= 1"),
    ],
)
def test_cli_rejects_bad_numbers_with_exit_2(
    extra: list[str], message: str, tiny_data: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["evaluate", "--data", str(tiny_data), "--checkpoint", str(tiny_checkpoint), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_a_non_integer_count_with_exit_2(tiny_data: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--data", str(tiny_data), "--checkpoint", str(tiny_checkpoint), "--search-depth", "many"])
    assert e.value.code == 2


def test_cli_rejects_a_missing_checkpoint_and_an_out_directory(
    tiny_data: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["evaluate", "--data", str(tiny_data), "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "checkpoint directory does not exist" in capsys.readouterr().err
    argv = ["evaluate", "--data", str(tiny_data), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "is a directory" in capsys.readouterr().err


def test_cli_rejects_data_the_checkpoint_was_not_trained_on(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "other_shop"
    write_dataset(other, generate(PRESETS["tiny"], 1, preset="tiny"))
    assert load_checkpoint(tiny_checkpoint).manifest.data_fingerprint != load_dataset(other).manifest.fingerprint
    assert main(["evaluate", "--data", str(other), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "differs from the data" in capsys.readouterr().err
