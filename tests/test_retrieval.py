"""aisle.retrieval's attributes, filters and query vectors, on a generated shop's catalog."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aisle.data.format import Item
from aisle.data.generator import PRESETS, generate
from aisle.retrieval import (
    USER_WEIGHT,
    FilterError,
    Filters,
    ItemAttributes,
    Popularity,
    RetrievalError,
    filter_mask,
    retrieval_vectors,
)
from aisle.retrieval.attributes import CATEGORY_SEPARATOR
from aisle.schema import ITEM_FEATURES

MAX_EXCLUDE = 20


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return generate(PRESETS["tiny"], 0, preset="tiny").items


@pytest.fixture(scope="module")
def attributes(items: list[Item]) -> ItemAttributes:
    return ItemAttributes.from_items(items)


def allowed_reference(items: list[Item], filters: Filters) -> set[int]:
    """Item ids every filter allows, item by item: the plain reading of the filter policy."""
    keep = set()
    for item in items:
        path = item.category
        if filters.category is not None:
            wanted = tuple(filters.category.split(CATEGORY_SEPARATOR))
            if path[: len(wanted)] != wanted:
                continue
        if filters.brands and item.brand not in filters.brands:
            continue
        if item.brand in filters.exclude_brands:
            continue
        if filters.min_price is not None and not item.price >= filters.min_price:
            continue
        if filters.max_price is not None and not item.price <= filters.max_price:
            continue
        if item.item_id in filters.exclude_ids:
            continue
        keep.add(item.item_id)
    return keep


@st.composite
def shop_filters(draw: st.DrawFn, items: list[Item], attributes: ItemAttributes) -> Filters:
    prices = sorted(item.price for item in items)
    bound = st.none() | st.floats(0.0, prices[-1] * 1.1, allow_nan=False)
    low, high = draw(bound), draw(bound)
    if low is not None and high is not None and low > high:
        low, high = high, low
    ids = [int(i) for i in attributes.item_ids]
    return Filters(
        category=draw(st.none() | st.sampled_from(sorted(attributes.prefixes))),
        brands=tuple(draw(st.lists(st.sampled_from(attributes.brands), max_size=4, unique=True))),
        exclude_brands=tuple(draw(st.lists(st.sampled_from(attributes.brands), max_size=3, unique=True))),
        min_price=low,
        max_price=high,
        # Ids past the catalog's last one are not in it: they must be ignored.
        exclude_ids=tuple(draw(st.lists(st.sampled_from(ids + [ids[-1] + 1, ids[-1] + 7]), max_size=MAX_EXCLUDE))),
    )


def test_attributes_rows_follow_ascending_item_ids(items: list[Item]) -> None:
    shuffled = list(items)
    random.Random(0).shuffle(shuffled)
    attributes = ItemAttributes.from_items(shuffled)
    by_id = {item.item_id: item for item in items}
    assert (np.diff(attributes.item_ids) > 0).all()
    for row, item_id in enumerate(attributes.item_ids):
        item = by_id[int(item_id)]
        assert attributes.brands[attributes.brand_codes[row]] == item.brand
        assert attributes.categories[attributes.category_codes[row]] == CATEGORY_SEPARATOR.join(item.category)
        assert attributes.prices[row] == np.float32(item.features()[ITEM_FEATURES.index("price")])


def test_attributes_round_trip_through_npz(attributes: ItemAttributes, tmp_path) -> None:
    path = tmp_path / "attributes.npz"
    attributes.save(path)
    loaded = ItemAttributes.load(path)
    assert loaded.brands == attributes.brands and loaded.categories == attributes.categories
    for name in ("item_ids", "brand_codes", "category_codes", "prices"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(attributes, name))
    assert loaded.prefixes.keys() == attributes.prefixes.keys()


def test_attributes_load_names_a_missing_file(tmp_path) -> None:
    with pytest.raises(RetrievalError, match="not found"):
        ItemAttributes.load(tmp_path / "nope.npz")


def test_every_path_prefix_is_a_category_filter(attributes: ItemAttributes) -> None:
    for path in attributes.categories:
        segments = path.split(CATEGORY_SEPARATOR)
        for depth in range(1, len(segments) + 1):
            prefix = CATEGORY_SEPARATOR.join(segments[:depth])
            code = attributes.categories.index(path)
            assert code in attributes.prefixes[prefix]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_filter_mask_equals_the_item_by_item_reading(items, attributes, data) -> None:
    filters = data.draw(shop_filters(items, attributes))
    mask = filter_mask(filters, attributes, max_exclude_ids=MAX_EXCLUDE)
    expected = allowed_reference(items, filters)
    got = set(attributes.item_ids.tolist()) if mask is None else set(attributes.item_ids[mask].tolist())
    assert got == expected


def test_no_filters_give_no_mask(attributes: ItemAttributes) -> None:
    assert filter_mask(Filters(), attributes, max_exclude_ids=MAX_EXCLUDE) is None
    assert filter_mask(Filters(category=""), attributes, max_exclude_ids=MAX_EXCLUDE) is None


def test_category_whitespace_is_normalised(attributes: ItemAttributes) -> None:
    path = next(p for p in attributes.categories if CATEGORY_SEPARATOR in p)
    typed = path.replace(CATEGORY_SEPARATOR, ">") + "  "
    a = filter_mask(Filters(category=typed), attributes, max_exclude_ids=MAX_EXCLUDE)
    b = filter_mask(Filters(category=path), attributes, max_exclude_ids=MAX_EXCLUDE)
    np.testing.assert_array_equal(a, b)
    assert a.any()


def test_a_valid_filter_that_matches_nothing_is_an_empty_mask(attributes: ItemAttributes) -> None:
    brand = attributes.brands[0]
    mask = filter_mask(Filters(brands=(brand,), exclude_brands=(brand,)), attributes, max_exclude_ids=MAX_EXCLUDE)
    assert mask is not None and not mask.any()


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"min_price": 10.0, "max_price": 5.0}, "min_price", "10.0"),
        ({"min_price": math.nan}, "min_price", "nan"),
        ({"max_price": math.inf}, "max_price", "inf"),
        ({"max_price": -1.0}, "max_price", "-1.0"),
        ({"min_price": True}, "min_price", "True"),
        ({"min_price": "5"}, "min_price", "'5'"),
        ({"exclude_ids": (3, -4)}, "exclude_ids", "-4"),
        ({"exclude_ids": (1.5,)}, "exclude_ids", "1.5"),
        ({"brands": "Nike"}, "brands", "'Nike'"),
        ({"exclude_brands": (3,)}, "exclude_brands", "3"),
    ],
)
def test_invalid_filters_name_the_field_and_value(kwargs: dict, field: str, value: str) -> None:
    with pytest.raises(FilterError, match=f"filter {field}=") as error:
        Filters(**kwargs)
    assert error.value.field == field
    assert value in str(error.value)


def test_unknown_brand_suggests_the_closest_names(attributes: ItemAttributes) -> None:
    brand = max(attributes.brands, key=len)
    typo = brand[:-2] + brand[-1] + brand[-2]
    for field, filters in (("brands", Filters(brands=(typo,))), ("exclude_brands", Filters(exclude_brands=(typo,)))):
        with pytest.raises(FilterError) as error:
            filter_mask(filters, attributes, max_exclude_ids=MAX_EXCLUDE)
        assert error.value.field == field and error.value.value == typo
        assert f"did you mean {brand!r}" in str(error.value)


def test_unknown_category_suggests_the_closest_paths(attributes: ItemAttributes) -> None:
    path = next(p for p in attributes.categories if CATEGORY_SEPARATOR in p)
    typo = path[:-1]
    with pytest.raises(FilterError, match=r"filter category=.*did you mean") as error:
        filter_mask(Filters(category=typo), attributes, max_exclude_ids=MAX_EXCLUDE)
    assert repr(path) in str(error.value)


def test_too_many_excluded_ids_name_the_limit(attributes: ItemAttributes) -> None:
    ids = tuple(int(i) for i in attributes.item_ids[:5])
    with pytest.raises(FilterError, match="filter exclude_ids='5 ids': at most 4"):
        filter_mask(Filters(exclude_ids=ids), attributes, max_exclude_ids=4)


def test_retrieval_vectors_blend_query_and_user_and_flag_neither() -> None:
    rng = np.random.default_rng(0)
    q, u = rng.standard_normal((2, 8)).astype(np.float32) * 3
    zero = np.zeros(8, dtype=np.float32)
    vectors, has = retrieval_vectors(np.stack([q, zero, q, zero]), np.stack([zero, u, u, zero]))
    np.testing.assert_allclose(vectors[0], q / np.linalg.norm(q), rtol=1e-6)
    np.testing.assert_allclose(vectors[1], u / np.linalg.norm(u), rtol=1e-6)
    blend = q / np.linalg.norm(q) + USER_WEIGHT * u / np.linalg.norm(u)
    np.testing.assert_allclose(vectors[2], blend / np.linalg.norm(blend), rtol=1e-5)
    assert has.tolist() == [True, True, True, False]
    assert not vectors[3].any()


def test_popularity_fallback_orders_allowed_rows_by_popularity() -> None:
    features = np.zeros((6, len(ITEM_FEATURES)), dtype=np.float32)
    features[:, ITEM_FEATURES.index("popularity")] = [3.0, np.nan, 9.0, 1.0, 9.0, 5.0]
    popularity = Popularity(features)
    rows, scores = popularity.top(4)
    assert rows.tolist() == [2, 4, 5, 0]
    assert scores.tolist() == [9.0, 9.0, 5.0, 3.0]
    mask = np.array([False, True, False, True, False, False])
    rows, _ = popularity.top(3, mask)
    assert rows.tolist() == [3, 1, -1]  # NaN popularity ranks last; padding after the allowed rows
