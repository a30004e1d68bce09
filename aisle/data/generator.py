"""A synthetic shop: catalog, queries with ESCI judgments, users with hidden tastes, sessions.

Everything is drawn from one seeded numpy Generator in a fixed order, so a seed gives the same
bytes every time. The pieces, in the order they are drawn:

1. Catalog (aisle.data.vocabulary): items per leaf category, brands, model lines, attributes,
   titles like "Nike Pegasus 40 Men's Running Shoes, Black, Size 10", log-normal prices per
   leaf, a hidden quality that rating and popularity only partly reveal. About 5% of the items
   are cold-start: they never reach a training session, neither shown nor in a history.
2. Queries built from items at three specificities (broad "running shoes", medium "nike running
   shoes", specific "nike pegasus 40 black men"), spelled with the leaf's synonyms, ~10% with a
   typo, never a title. Each query keeps hidden constraints (leaf, brand, model line,
   attributes) that grade items: E meets them all, S is the same leaf with one differing, C is a
   complementary leaf, I is anything else. Judgments are a popularity-weighted sample per query
   (up to `judged` per label); unjudged pairs are unknown, not irrelevant.
3. Users with hidden favourite leaves and brands, gender, colour and price sensitivity (never
   written out), and a short pre-existing history drawn from those tastes.
4. Sessions in time order (session ids ascend with time): ~70% searches (a query mostly from the
   user's favourite leaves), ~30% feeds (query ""). A non-personalised legacy system picks ~20
   impressions (for a search, its judged items ranked by grade, popularity and its own errors;
   for a feed, items from the user's leaves plus popular items). Clicks come from a hidden
   utility: relevance + brand affinity + price sensitivity + gender/colour fit + leaf affinity +
   quality + position bias + Gumbel noise; purchases are a subset of clicks. The base text model
   can know none of the personal terms: only histories reveal them. A session's history is the
   user's clicks before it (oldest first, at most MAX_HISTORY), cold-start clicks withheld.

Sessions split train/valid/test ~80/10/10 by a hash of the session id (split_of).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from aisle.data.format import Dataset, DatasetManifest, Impression, Item, Judgment, Query, Session
from aisle.data.vocabulary import ATTRIBUTE_KINDS, COLOR, GENDER, LEAVES, LINE_NAMES, AttributeKind, Leaf
from aisle.errors import DataError
from aisle.schema import MAX_HISTORY

LABELS = ("E", "S", "C", "I")
EXACT, SUBSTITUTE, COMPLEMENT, IRRELEVANT = range(4)


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and rates of a generated shop.

    judged: per-query cap of judged items per ESCI label (E, S, C, I). Larger caps give the towers
        more positives and hard negatives and the legacy system a wider pool, at file size cost.
    impressions_per_session: what the legacy system shows; fewer for queries with a small pool.
    """

    num_items: int
    num_queries: int
    num_users: int
    num_sessions: int
    impressions_per_session: int = 20
    cold_start_fraction: float = 0.05
    search_fraction: float = 0.7
    typo_fraction: float = 0.1
    judged: tuple[int, int, int, int] = (50, 30, 10, 10)

    def __post_init__(self) -> None:
        minimum = 4 * len(LEAVES)
        if self.num_items < minimum:
            raise DataError(f"num_items={self.num_items} is below the minimum {minimum} (4 per leaf category)")
        for name in ("num_queries", "num_users", "num_sessions", "impressions_per_session"):
            if getattr(self, name) < 1:
                raise DataError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("cold_start_fraction", "search_fraction", "typo_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"{name}={getattr(self, name)} must lie in [0, 1]")


PRESETS: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(num_items=300, num_queries=120, num_users=80, num_sessions=400),
    "small": GeneratorConfig(num_items=5_000, num_queries=1_500, num_users=2_000, num_sessions=20_000),
    "full": GeneratorConfig(num_items=50_000, num_queries=8_000, num_users=20_000, num_sessions=200_000),
}


def split_of(session_id: int) -> str:
    """train / valid / test (~80/10/10) from a hash of the id: stable whatever else changes."""
    digest = hashlib.blake2b(str(session_id).encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 100
    return "train" if bucket < 80 else "valid" if bucket < 90 else "test"


# --- catalog -------------------------------------------------------------------------------------

#: Global value ids per attribute kind, and brand ids: unions over leaves, in first-seen order.
_VALUES: dict[str, list[str]] = {
    kind.key: list(dict.fromkeys(v for leaf in LEAVES for k, values in leaf.attributes if k is kind for v in values))
    for kind in ATTRIBUTE_KINDS
}
_VALUE_ID = {key: {value: i for i, value in enumerate(values)} for key, values in _VALUES.items()}
_KIND_INDEX = {kind.key: k for k, kind in enumerate(ATTRIBUTE_KINDS)}
_BRANDS: list[str] = list(dict.fromkeys(brand for leaf in LEAVES for brand in leaf.brands))
_BRAND_ID = {brand: i for i, brand in enumerate(_BRANDS)}
_LEAF_INDEX = {leaf.name: index for index, leaf in enumerate(LEAVES)}


@dataclass
class _Catalog:
    """Items as parallel arrays (for vectorised labelling and utilities) plus the Item rows."""

    leaf: np.ndarray  # [N] leaf index into LEAVES
    brand: np.ndarray  # [N] index into _BRANDS
    line: np.ndarray  # [N] index into line_names
    attrs: np.ndarray  # [N, len(ATTRIBUTE_KINDS)] global value id, -1 where the leaf lacks the kind
    log_price_rel: np.ndarray  # [N] log(price / leaf median)
    popularity: np.ndarray
    quality: np.ndarray  # hidden: rating and popularity are noisy views of it
    cold: np.ndarray  # [N] bool
    line_names: list[str]
    items: list[Item] = field(default_factory=list)
    by_leaf: list[np.ndarray] = field(default_factory=list)  # item ids per leaf, ascending

    def __post_init__(self) -> None:
        self.by_leaf = [np.flatnonzero(self.leaf == index) for index in range(len(LEAVES))]


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _shop_price(value: float) -> float:
    """Shop-style prices: $109.99 rather than $110.37 above $20."""
    return round(max(1.0, round(value)) - 0.01, 2) if value >= 20 else round(max(value, 0.99), 2)


def _leaf_counts(rng: np.random.Generator, num_items: int) -> np.ndarray:
    base = 4
    weights = rng.lognormal(0.0, 0.4, size=len(LEAVES))
    return base + rng.multinomial(num_items - base * len(LEAVES), weights / weights.sum())


@dataclass
class _Listings:
    """What a seller writes: per item its leaf, brand, model line, attribute values, title."""

    leaf: list[int] = field(default_factory=list)
    brand: list[int] = field(default_factory=list)
    line: list[int] = field(default_factory=list)
    attrs: list[np.ndarray] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)
    line_names: list[str] = field(default_factory=list)


def _draw_listings(rng: np.random.Generator, counts: np.ndarray) -> _Listings:
    listings = _Listings()
    line_index: dict[str, int] = {}
    for leaf_id, (leaf, count) in enumerate(zip(LEAVES, counts.tolist())):
        share = rng.permutation(_zipf_weights(len(leaf.brands), 0.8))  # a few brands lead each leaf
        lines = {brand: _model_lines(rng) for brand in leaf.brands}
        brands = rng.choice(len(leaf.brands), size=count, p=share).tolist()
        drawn = [rng.choice(len(vals), size=count, p=_zipf_weights(len(vals), 0.5)) for _, vals in leaf.attributes]
        for row_index, brand in enumerate(leaf.brands[b] for b in brands):
            line = lines[brand][int(rng.integers(len(lines[brand])))]
            key = f"{brand}|{line}"
            if key not in line_index:
                line_index[key] = len(listings.line_names)
                listings.line_names.append(line)
            values = [(kind, vals[d[row_index]]) for (kind, vals), d in zip(leaf.attributes, drawn)]
            row = np.full(len(ATTRIBUTE_KINDS), -1)
            for kind, value in values:
                row[_KIND_INDEX[kind.key]] = _VALUE_ID[kind.key][value]
            listings.leaf.append(leaf_id)
            listings.brand.append(_BRAND_ID[brand])
            listings.line.append(line_index[key])
            listings.attrs.append(row)
            listings.titles.append(_title(brand, line, leaf, values))
            listings.attributes.append({"model": line.lower(), **{k.key: v.lower() for k, v in values}})
    return listings


def _build_catalog(rng: np.random.Generator, config: GeneratorConfig) -> _Catalog:
    """Listings, then prices (leaf median x brand premium x model tier x noise), hidden quality,
    rating and popularity as noisy views of it, cold-start flags; finally shuffled item ids."""
    listings = _draw_listings(rng, _leaf_counts(rng, config.num_items))
    n = len(listings.titles)
    leaf = np.asarray(listings.leaf)
    brand = np.asarray(listings.brand)
    line = np.asarray(listings.line)
    brand_premium = rng.normal(0.0, 0.25, size=len(_BRANDS))
    brand_strength = rng.normal(0.0, 0.5, size=len(_BRANDS))
    line_tier = rng.normal(0.0, 0.15, size=len(listings.line_names))
    medians = np.array([spec.price_median for spec in LEAVES])
    sigmas = np.array([spec.price_sigma for spec in LEAVES])
    log_rel = brand_premium[brand] + line_tier[line] + sigmas[leaf] * rng.normal(0.0, 0.8, size=n)
    prices = np.array([_shop_price(p) for p in medians[leaf] * np.exp(log_rel)])
    quality = rng.normal(0.0, 1.0, size=n)
    rating = np.clip(4.2 + 0.35 * quality + rng.normal(0.0, 0.3, size=n), 1.0, 5.0).round(1)
    popularity = np.exp(1.5 + 0.6 * quality + 0.8 * brand_strength[brand] + rng.normal(0.0, 0.9, size=n))
    cold = _pick_cold(rng, leaf, config.cold_start_fraction)
    popularity = np.where(cold, popularity * 0.5, popularity).round(2)  # new listings: less traffic so far
    reviews = (popularity * np.exp(rng.normal(1.0, 0.8, size=n)) * np.where(cold, 0.1, 1.0)).astype(np.int64)
    order = rng.permutation(n)  # item ids must not follow the taxonomy
    catalog = _Catalog(
        leaf=leaf[order],
        brand=brand[order],
        line=line[order],
        attrs=np.asarray(listings.attrs)[order],
        log_price_rel=np.log(prices / medians[leaf])[order],
        popularity=popularity[order],
        quality=quality[order],
        cold=cold[order],
        line_names=listings.line_names,
    )
    catalog.items = [
        Item(
            item_id=new_id,
            title=listings.titles[old],
            brand=_BRANDS[brand[old]],
            category=LEAVES[leaf[old]].path,
            attributes=listings.attributes[old],
            price=float(prices[old]),
            rating=float(rating[old]),
            review_count=int(reviews[old]),
            popularity=float(popularity[old]),
            cold_start=bool(cold[old]),
        )
        for new_id, old in enumerate(order.tolist())
    ]
    return catalog


def _model_lines(rng: np.random.Generator) -> list[str]:
    """A brand's model lines in one leaf: 2-3 names, each sold in 1-3 consecutive versions."""
    names = rng.choice(LINE_NAMES, size=int(rng.integers(2, 4)), replace=False).tolist()
    starts = rng.integers(1, 30, size=len(names)).tolist()
    spans = rng.integers(1, 4, size=len(names)).tolist()
    return [f"{name} {start + v}" for name, start, span in zip(names, starts, spans) for v in range(span)]


def _title(brand: str, line: str, leaf: Leaf, values: list[tuple[AttributeKind, str]]) -> str:
    prefix = " ".join(kind.title(v) for kind, v in values if kind.prefix)
    suffix = ", ".join(kind.title(v) for kind, v in values if not kind.prefix)
    head = " ".join(part for part in (brand, line, prefix, leaf.noun) if part)
    return f"{head}, {suffix}" if suffix else head


def _pick_cold(rng: np.random.Generator, leaf: np.ndarray, fraction: float) -> np.ndarray:
    """Cold-start items, never the first two of a leaf (in a random order): every leaf keeps warm items."""
    rank = np.empty(len(leaf), dtype=np.int64)
    for index in range(len(LEAVES)):
        members = np.flatnonzero(leaf == index)
        rank[members] = rng.permutation(len(members))
    eligible = np.flatnonzero(rank >= 2)
    count = min(len(eligible), round(fraction * len(leaf)))
    cold = np.zeros(len(leaf), dtype=bool)
    cold[rng.choice(eligible, size=count, replace=False)] = True
    return cold


# --- queries and judgments -----------------------------------------------------------------------

SPECIFICITY = ("broad", "medium", "specific")
_SPECIFICITY_P = (0.3, 0.4, 0.3)
#: How often shoppers issue each specificity: broad queries are the head of the query log.
_SPECIFICITY_TRAFFIC = {"broad": 3.0, "medium": 1.5, "specific": 1.0}
_GENDER_WORDS = {"men": ("men", "mens", "men's"), "women": ("women", "womens", "women's")}


@dataclass(frozen=True)
class _QuerySpec:
    """A query's text and the hidden constraints that grade items against it (-1: unconstrained)."""

    text: str
    specificity: str
    leaf: int
    brand: int = -1
    line: int = -1
    attrs: tuple[tuple[int, int], ...] = ()  # (kind index, global value id)


def _labels(catalog: _Catalog, spec: _QuerySpec, items: np.ndarray) -> np.ndarray:
    """ESCI label index per item: E meets every constraint, S same leaf otherwise, C complement, I rest."""
    same_leaf = catalog.leaf[items] == spec.leaf
    exact = same_leaf.copy()
    if spec.brand >= 0:
        exact &= catalog.brand[items] == spec.brand
    if spec.line >= 0:
        exact &= catalog.line[items] == spec.line
    for kind, value in spec.attrs:
        exact &= catalog.attrs[items, kind] == value
    complements = [_LEAF_INDEX[name] for name in LEAVES[spec.leaf].complements]
    complement = np.isin(catalog.leaf[items], complements)
    return np.select([exact, same_leaf, complement], [EXACT, SUBSTITUTE, COMPLEMENT], default=IRRELEVANT)


def _query_spec(rng: np.random.Generator, catalog: _Catalog, item: int, specificity: str) -> _QuerySpec:
    """Constraints and text for a query a shopper looking for `item` might type."""
    leaf_id = int(catalog.leaf[item])
    leaf = LEAVES[leaf_id]
    noun = leaf.query_nouns[int(rng.integers(len(leaf.query_nouns)))]
    present = [(kind, int(catalog.attrs[item, _KIND_INDEX[kind.key]])) for kind, _ in leaf.attributes]
    brand = _BRANDS[int(catalog.brand[item])].lower()

    def words(kind: AttributeKind, value: int) -> str:
        text = _VALUES[kind.key][value]
        if kind is GENDER:
            options = _GENDER_WORDS[text.lower()]
            return options[int(rng.integers(len(options)))]
        return kind.query(text)

    if specificity == "broad":
        gender = [(k, v) for k, v in present if k is GENDER and rng.random() < 0.4]
        attrs = tuple((_KIND_INDEX[k.key], v) for k, v in gender)
        text = f"{words(*gender[0])} {noun}" if gender else noun
        return _QuerySpec(text, specificity, leaf_id, attrs=attrs)
    if specificity == "medium":
        if rng.random() < 0.6 or not present:
            return _QuerySpec(f"{brand} {noun}", specificity, leaf_id, brand=int(catalog.brand[item]))
        kind, value = present[int(rng.integers(len(present)))]
        said = words(kind, value)
        text = f"{said} {noun}" if kind.prefix or kind is COLOR or rng.random() < 0.5 else f"{noun} {said}"
        return _QuerySpec(text, specificity, leaf_id, attrs=((_KIND_INDEX[kind.key], value),))
    chosen = [present[i] for i in sorted(rng.permutation(len(present))[: int(rng.integers(1, 3))])] if present else []
    model = catalog.line_names[int(catalog.line[item])].lower()
    parts = [brand, model, *(words(k, v) for k, v in chosen)]
    if rng.random() < 0.5:
        parts.insert(len(parts) - len(chosen) if rng.random() < 0.5 else len(parts), noun)
    attrs = tuple((_KIND_INDEX[k.key], v) for k, v in chosen)
    return _QuerySpec(" ".join(parts), specificity, leaf_id, int(catalog.brand[item]), int(catalog.line[item]), attrs)


def _typo(rng: np.random.Generator, text: str) -> str:
    """One slip of the finger in a word of 4+ letters: swap, drop or double a character."""
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long_words:
        return text
    index = long_words[int(rng.integers(len(long_words)))]
    word = words[index]
    at = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0 and word[at - 1] != word[at]:  # swapping equal letters would change nothing
        word = word[: at - 1] + word[at] + word[at - 1] + word[at + 1 :]
    elif kind != 2:
        word = word[:at] + word[at + 1 :]
    else:
        word = word[:at] + word[at] + word[at:]
    words[index] = word
    return " ".join(words)


def _build_queries(rng: np.random.Generator, catalog: _Catalog, config: GeneratorConfig) -> list[_QuerySpec]:
    """Distinct queries seeded by popular items; stops early when the catalog runs out of new ones."""
    weights = catalog.popularity / catalog.popularity.sum()
    titles = {item.title.lower() for item in catalog.items}
    seen: set[str] = set()
    specs: list[_QuerySpec] = []
    for _ in range(20):
        seeds = rng.choice(len(weights), size=config.num_queries, p=weights)
        levels = rng.choice(len(SPECIFICITY), size=config.num_queries, p=_SPECIFICITY_P)
        typos = rng.random(size=config.num_queries) < config.typo_fraction
        for item, level, typo in zip(seeds.tolist(), levels.tolist(), typos.tolist()):
            spec = _query_spec(rng, catalog, item, SPECIFICITY[level])
            if typo:
                spec = _QuerySpec(_typo(rng, spec.text), spec.specificity, spec.leaf, spec.brand, spec.line, spec.attrs)
            if spec.text in seen or spec.text in titles:
                continue
            seen.add(spec.text)
            specs.append(spec)
            if len(specs) == config.num_queries:
                return specs
    return specs


@dataclass(frozen=True)
class _Pool:
    """A query's judged items: the legacy search system's candidates, with its fixed scores."""

    items: np.ndarray
    labels: np.ndarray
    legacy: np.ndarray


#: The legacy ranker's score per label. Its per-item error (N(0, 1), fixed per query and item) puts
#: some complements and irrelevant items among the shown ~20: about 15% on the small preset.
_LEGACY_GRADE = np.array([1.5, 0.8, 0.6, 0.3])


def _sample_by_popularity(rng: np.random.Generator, catalog: _Catalog, items: np.ndarray, k: int) -> np.ndarray:
    """Up to k items without replacement, proportional to popularity (Gumbel top-k)."""
    if len(items) <= k:
        return items
    keys = np.log(catalog.popularity[items] + 1e-3) + rng.gumbel(size=len(items))
    return items[np.argpartition(-keys, k)[:k]]


@dataclass(frozen=True)
class _Group:
    """Items and their cumulative popularity, for cheap repeated draws from a large fixed set."""

    items: np.ndarray
    cum: np.ndarray

    @classmethod
    def of(cls, catalog: _Catalog, leaves: list[int]) -> _Group:
        items = np.concatenate([catalog.by_leaf[leaf] for leaf in leaves]) if leaves else np.zeros(0, np.int64)
        return cls(items, _cumulative(catalog.popularity[items]) if len(items) else items.astype(np.float64))

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """About k distinct items, popular ones more likely (a few fewer when draws repeat)."""
        if len(self.items) <= k:
            return self.items
        return np.unique(self.items[np.searchsorted(self.cum, rng.random(size=k))])


@dataclass(frozen=True)
class _Neighbours:
    """Per leaf: its complement leaves' items, and the other leaves of its top category (hard I)."""

    complements: _Group
    near: _Group

    @classmethod
    def of(cls, catalog: _Catalog, leaf: int) -> _Neighbours:
        complements = [_LEAF_INDEX[name] for name in LEAVES[leaf].complements]
        top = LEAVES[leaf].path[0]
        near = [i for i, other in enumerate(LEAVES) if other.path[0] == top and i != leaf and i not in complements]
        return cls(_Group.of(catalog, complements), _Group.of(catalog, near))


def _judge_all(
    rng: np.random.Generator, catalog: _Catalog, specs: list[_QuerySpec], judged: tuple[int, ...]
) -> list[_Pool]:
    """Judge a popularity-weighted sample per label and query; the same items are the legacy pool."""
    neighbours = [_Neighbours.of(catalog, leaf) for leaf in range(len(LEAVES))]
    pools = []
    for spec in specs:
        leaf_items = catalog.by_leaf[spec.leaf]
        leaf_labels = _labels(catalog, spec, leaf_items)
        around = neighbours[spec.leaf]
        far = rng.choice(len(catalog.leaf), size=judged[IRRELEVANT], replace=False)
        picked = [
            _sample_by_popularity(rng, catalog, leaf_items[leaf_labels == EXACT], judged[EXACT]),
            _sample_by_popularity(rng, catalog, leaf_items[leaf_labels == SUBSTITUTE], judged[SUBSTITUTE]),
            around.complements.draw(rng, judged[COMPLEMENT]),
            around.near.draw(rng, judged[IRRELEVANT] // 2),  # hard irrelevant: same top category
        ]
        far = far[_labels(catalog, spec, far) == IRRELEVANT][: judged[IRRELEVANT] - len(picked[-1])]
        items = np.unique(np.concatenate([*picked, far]))
        labels = _labels(catalog, spec, items)
        noise = rng.normal(0.0, 1.0, size=len(items))
        pools.append(_Pool(items, labels, _LEGACY_GRADE[labels] + 0.3 * np.log1p(catalog.popularity[items]) + noise))
    return pools


# --- users ---------------------------------------------------------------------------------------


@dataclass
class _Users:
    """Hidden tastes: none of this is written to disk; only clicks and histories reveal it."""

    leaf_affinity: np.ndarray  # [U, L] ~1 for favourite leaves, 0 elsewhere
    brand_affinity: np.ndarray  # [U, B] + for favourites, - for a disliked brand
    price_sensitivity: np.ndarray  # [U] utility per unit of log(price / leaf median), negated
    gender: np.ndarray  # [U] global value id of GENDER
    color: np.ndarray  # [U] global value id of COLOR
    activity: np.ndarray  # [U] share of sessions


def _build_users(rng: np.random.Generator, config: GeneratorConfig) -> _Users:
    """Each user likes 1-3 leaves in 1-2 top categories (sometimes one more anywhere), 2-4 brands
    of those leaves, maybe avoids one, has a gender, a colour and a price sensitivity (some like
    premium: the sensitivity is negative for ~5%); activity is log-normal (a few heavy users)."""
    tops = list(dict.fromkeys(leaf.path[0] for leaf in LEAVES))
    leaves_of = {top: [i for i, leaf in enumerate(LEAVES) if leaf.path[0] == top] for top in tops}
    n = config.num_users
    leaf_affinity = np.zeros((n, len(LEAVES)))
    brand_affinity = np.zeros((n, len(_BRANDS)))
    top_weights = _zipf_weights(len(tops), 0.5)
    for user in range(n):
        favourite_tops = rng.choice(len(tops), size=int(rng.integers(1, 3)), replace=False, p=top_weights)
        for top in favourite_tops.tolist():
            members = leaves_of[tops[top]]
            chosen = rng.choice(members, size=min(len(members), int(rng.integers(1, 4))), replace=False)
            leaf_affinity[user, chosen] = np.exp(rng.normal(0.0, 0.3, size=len(chosen)))
        if rng.random() < 0.5:
            leaf_affinity[user, int(rng.integers(len(LEAVES)))] = np.exp(rng.normal(-0.5, 0.3))
        candidates = sorted({_BRAND_ID[b] for i in np.flatnonzero(leaf_affinity[user]) for b in LEAVES[i].brands})
        picked = rng.permutation(candidates)[: int(rng.integers(2, 5)) + 1]
        brand_affinity[user, picked[:-1]] = rng.uniform(0.6, 1.4, size=len(picked) - 1)
        if rng.random() < 0.5:  # one brand of their leaves they avoid
            brand_affinity[user, picked[-1]] = -1.0
    genders = [_VALUE_ID[GENDER.key][g] for g in ("Men", "Women")]
    return _Users(
        leaf_affinity=leaf_affinity,
        brand_affinity=brand_affinity,
        price_sensitivity=rng.normal(0.8, 0.5, size=n),
        gender=np.asarray(genders)[rng.integers(2, size=n)],
        color=rng.choice(len(_VALUES[COLOR.key]), size=n, p=_zipf_weights(len(_VALUES[COLOR.key]), 0.7)),
        activity=rng.lognormal(0.0, 1.0, size=n),
    )


# --- sessions ------------------------------------------------------------------------------------

#: Hidden utility of a shown item = relevance + _utility (taste, quality) + position bias + noise.
#: Relevance of a search result by ESCI label (E, S, C, I); a feed item's is its leaf affinity - 0.5.
_RELEVANCE = np.array([2.0, 0.6, -0.5, -2.0])
_GENDER_K = _KIND_INDEX[GENDER.key]
_COLOR_K = _KIND_INDEX[COLOR.key]
#: A click needs utility + position bias + Gumbel noise above the first (~11-13% of impressions);
#: a purchase needs a clicked item's utility + fresh noise above the second (~35-40% of clicks).
_CLICK_THRESHOLD = 3.0
_PURCHASE_THRESHOLD = 4.0
_FEED_POPULAR_SHARE = 0.4


def _utility(catalog: _Catalog, users: _Users, user: int, items: np.ndarray) -> np.ndarray:
    """The personal part of the utility (no relevance, position or noise): what text cannot know."""
    gender = catalog.attrs[items, _GENDER_K]
    gender_fit = np.where(gender < 0, 0.0, np.where(gender == users.gender[user], 0.3, -1.5))
    color_fit = np.where(catalog.attrs[items, _COLOR_K] == users.color[user], 0.4, 0.0)
    return (
        users.brand_affinity[user, catalog.brand[items]]
        - users.price_sensitivity[user] * catalog.log_price_rel[items]
        + gender_fit
        + color_fit
        + 0.5 * users.leaf_affinity[user, catalog.leaf[items]]
        + 0.5 * catalog.quality[items]
    )


class _Sampler:
    """Popularity-proportional draws within a leaf or over the catalog, warm items only or all."""

    def __init__(self, catalog: _Catalog, warm_only: bool) -> None:
        keep = ~catalog.cold if warm_only else np.ones(len(catalog.leaf), dtype=bool)
        self.by_leaf = [members[keep[members]] for members in catalog.by_leaf]
        self.leaf_cum = [_cumulative(catalog.popularity[members]) for members in self.by_leaf]
        self.everything = np.flatnonzero(keep)
        self.cum = _cumulative(catalog.popularity[self.everything])

    def in_leaves(self, leaves: np.ndarray, draws: np.ndarray) -> np.ndarray:
        return np.array(
            [self.by_leaf[leaf][np.searchsorted(self.leaf_cum[leaf], r)] for leaf, r in zip(leaves.tolist(), draws)],
            dtype=np.int64,
        )

    def anywhere(self, draws: np.ndarray) -> np.ndarray:
        return self.everything[np.searchsorted(self.cum, draws)]


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Normalised cumulative weights for searchsorted draws (last entry exactly 1)."""
    cum = np.cumsum(weights, dtype=np.float64)
    cum /= cum[-1]
    cum[-1] = 1.0
    return cum


def _initial_histories(rng: np.random.Generator, catalog: _Catalog, users: _Users) -> list[list[int]]:
    """What each user did before the logged period: ~6 warm items, each the user's favourite
    (by hidden utility plus noise) among 16 popular items of a leaf they like."""
    warm = _Sampler(catalog, warm_only=True)
    offered = 16
    histories: list[list[int]] = []
    for user in range(len(users.activity)):
        count = min(MAX_HISTORY, int(rng.poisson(6)))
        leaves = np.searchsorted(_cumulative(users.leaf_affinity[user] + 0.01), rng.random(size=count))
        candidates = warm.in_leaves(np.repeat(leaves, offered), rng.random(size=count * offered))
        taste = _utility(catalog, users, user, candidates) + rng.gumbel(size=len(candidates))
        best = taste.reshape(count, offered).argmax(axis=1)
        histories.append(candidates.reshape(count, offered)[np.arange(count), best].tolist())
    return histories


@dataclass
class _Simulator:
    """Runs sessions in time order; the legacy system picks impressions, the hidden utility clicks."""

    rng: np.random.Generator
    catalog: _Catalog
    specs: list[_QuerySpec]
    pools: list[_Pool]
    users: _Users
    config: GeneratorConfig

    def __post_init__(self) -> None:
        traffic = np.array([_SPECIFICITY_TRAFFIC[s.specificity] for s in self.specs])
        traffic *= self.rng.lognormal(0.0, 0.5, size=len(traffic))
        query_leaf = np.array([s.leaf for s in self.specs])
        self.queries_of_leaf = [np.flatnonzero(query_leaf == leaf) for leaf in range(len(LEAVES))]
        self.query_cum_of_leaf = [_cumulative(traffic[q]) if len(q) else q for q in self.queries_of_leaf]
        self.query_cum = _cumulative(traffic)
        # Searches stay within the user's favourite leaves 90% of the time.
        affinity = self.users.leaf_affinity / self.users.leaf_affinity.sum(axis=1, keepdims=True)
        self.search_leaf_cum = np.cumsum(0.9 * affinity + 0.1 / len(LEAVES), axis=1)
        self.feed_leaf_cum = np.cumsum(affinity, axis=1)
        self.warm = _Sampler(self.catalog, warm_only=True)
        self.every = _Sampler(self.catalog, warm_only=False)
        self.position_bias = -0.5 * np.log2(1.0 + np.arange(self.config.impressions_per_session))

    def search(self, user: int, train: bool) -> tuple[int, np.ndarray, np.ndarray]:
        """(query index, shown items, relevance) for a search by `user`."""
        rng = self.rng
        leaf = min(
            int(np.searchsorted(self.search_leaf_cum[user], rng.random() * self.search_leaf_cum[user][-1])),
            len(LEAVES) - 1,
        )
        candidates = self.queries_of_leaf[leaf]
        if len(candidates):
            query = int(candidates[np.searchsorted(self.query_cum_of_leaf[leaf], rng.random())])
        else:
            query = int(np.searchsorted(self.query_cum, rng.random()))
        pool = self.pools[query]
        scores = pool.legacy + rng.normal(0.0, 0.3, size=len(pool.items))
        if train:
            scores = np.where(self.catalog.cold[pool.items], -np.inf, scores)
        order = np.argsort(-scores, kind="stable")[: self.config.impressions_per_session]
        order = order[np.isfinite(scores[order])]
        return query, pool.items[order], _RELEVANCE[pool.labels[order]]

    def feed(self, user: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """(shown items, relevance) for a feed: items from the user's leaves plus popular ones."""
        rng = self.rng
        sampler = self.warm if train else self.every
        size = self.config.impressions_per_session
        popular = round(_FEED_POPULAR_SHARE * size)
        leaves = np.searchsorted(
            self.feed_leaf_cum[user], rng.random(size=size - popular) * self.feed_leaf_cum[user][-1]
        )
        leaves = np.minimum(leaves, len(LEAVES) - 1)
        drawn = np.concatenate(
            [sampler.in_leaves(leaves, rng.random(size=len(leaves))), sampler.anywhere(rng.random(size=popular))]
        )
        _, first = np.unique(drawn, return_index=True)
        items = drawn[np.sort(first)]
        legacy = 0.5 * np.log1p(self.catalog.popularity[items]) + rng.normal(0.0, 0.5, size=len(items))
        items = items[np.argsort(-legacy, kind="stable")]
        relevance = self.users.leaf_affinity[user, self.catalog.leaf[items]] - 0.5
        return items, relevance

    def run(self, histories: list[list[int]], progress: bool) -> list[Session]:
        from tqdm import tqdm

        rng = self.rng
        n = self.config.num_sessions
        activity = self.users.activity / self.users.activity.sum()
        user_of = rng.choice(len(activity), size=n, p=activity).tolist()
        is_search = (rng.random(size=n) < self.config.search_fraction).tolist()
        sessions = []
        for session_id in tqdm(range(n), desc="sessions", unit="session", disable=not progress):
            user = user_of[session_id]
            split = split_of(session_id)
            train = split == "train"
            if is_search[session_id]:
                query, items, relevance = self.search(user, train)
                text, query_id = self.specs[query].text, query
            else:
                items, relevance = self.feed(user, train)
                text, query_id = "", None
            utility = relevance + _utility(self.catalog, self.users, user, items)
            clicked = utility + self.position_bias[: len(items)] + rng.gumbel(size=len(items)) > _CLICK_THRESHOLD
            purchased = clicked & (utility + rng.gumbel(size=len(items)) > _PURCHASE_THRESHOLD)
            history = histories[user]
            sessions.append(
                Session(
                    session_id=session_id,
                    user_id=user,
                    split=split,
                    query=text,
                    query_id=query_id,
                    history=tuple(history[-MAX_HISTORY:]),
                    impressions=tuple(
                        Impression(item_id=i, clicked=c, purchased=p)
                        for i, c, p in zip(items.tolist(), clicked.tolist(), purchased.tolist())
                    ),
                )
            )
            # Clicks join the history; cold-start clicks are withheld so they never reach training.
            history.extend(i for i, c in zip(items.tolist(), clicked.tolist()) if c and not self.catalog.cold[i])
            del history[:-MAX_HISTORY]
        return sessions


# --- entry point ---------------------------------------------------------------------------------


def generate(config: GeneratorConfig, seed: int, *, preset: str = "custom", progress: bool = False) -> Dataset:
    """Generate a whole shop for `seed`; the same (config, seed) always gives the same dataset."""
    rng = np.random.default_rng(seed)
    catalog = _build_catalog(rng, config)
    specs = _build_queries(rng, catalog, config)
    pools = _judge_all(rng, catalog, specs, config.judged)
    users = _build_users(rng, config)
    histories = _initial_histories(rng, catalog, users)
    sessions = _Simulator(rng, catalog, specs, pools, users, config).run(histories, progress)
    queries = [Query(query_id=q, text=spec.text, specificity=spec.specificity) for q, spec in enumerate(specs)]
    judgments = [
        Judgment(query_id=q, item_id=item, label=LABELS[label])
        for q, pool in enumerate(pools)
        for item, label in zip(pool.items.tolist(), pool.labels.tolist())
    ]
    manifest = DatasetManifest(name="aisle-synthetic-shop", seed=seed, preset=preset, counts={})
    return Dataset(catalog.items, queries, judgments, sessions, manifest)
