"""aisle's performance goals, evaluated from a suite's results, each with a measured diagnosis.

A goal is reported, never asserted: {name, measured, goal, unit, pass} plus a note. The note of a
failed goal is built from the same run only: the target and query-encoder backend the server
reported ("unknown" where the run could not tell), per-step server time, mean batch sizes, token
counts, and the CPU use of load generator and server against the machine's usable cores. What the
run did not measure is left out of the note rather than assumed, and each fix it proposes follows
from a measured cause.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

from aisle.schema import CATALOG_SEARCH, FUSION_HEAD, ITEM_STORE, QUERY_ENCODER, QUERY_TOKENIZER

#: Cores used by other processes above which a measurement is flagged as distorted.
CONTENTION_CORES = 0.25
#: Share of the usable cores in use above which a point counts as CPU-bound.
SATURATED_SHARE = 0.8
#: A mean encoder batch below this share of what could have merged (concurrency, ORT's batch) is small.
SMALL_BATCH_SHARE = 0.5
#: Tokenizer time above this share of the encoder's makes tokenizing elsewhere worth proposing.
TOKENIZER_SHARE = 0.25
#: Share of executed encoder work spent on padding above which ragged batching is worth proposing.
PADDING_SHARE = 0.2
#: search p50 at concurrency 1 may be at most this multiple of embed_query's (retrieval + ranking
#: cost less than half of the query encoder), and search throughput at the throughput level at least
#: this share of embed_query's (issue 12's speed goals).
SEARCH_LATENCY_RATIO = 1.5
SEARCH_THROUGHPUT_SHARE = 0.6
#: The target or backend of a run that could not tell (a remote server known by its url alone).
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Goal:
    """One performance goal: `measured` against `threshold` with `comparator`, and why it missed."""

    name: str
    measured: float | None
    threshold: float
    unit: str
    comparator: str  # ">=" or "<="
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.measured is None or not math.isfinite(self.measured):
            return None
        return self.measured >= self.threshold if self.comparator == ">=" else self.measured <= self.threshold

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "measured": self.measured,
            "goal": self.threshold,
            "unit": self.unit,
            "comparator": self.comparator,
            "pass": self.passed,
            "note": self.note,
        }


@dataclass(frozen=True)
class RunFacts:
    """How the run was served and on what machine, as its environment recorded them."""

    target: str
    encoder_backend: str
    cores: int | None

    @classmethod
    def of(cls, results: dict) -> RunFacts:
        env = results.get("environment", {})
        return cls(env.get("target") or UNKNOWN, env.get("encoder_backend") or UNKNOWN, env.get("cpus_usable"))

    @property
    def python_encoder(self) -> bool:
        """The query encoder ran in a Python-backend stub: a process hop with shared-memory copies."""
        return self.encoder_backend == "python"

    def served(self) -> str:
        return f"the {self.target} target (query encoder on the {self.encoder_backend} backend)"


@dataclass(frozen=True)
class CpuUse:
    """Cores used during one point by the load generator, the server's process tree and the rest."""

    generator: float
    server: float | None  # None: the server's process was not found here (a remote server)
    other: float
    cores: int | None

    @classmethod
    def of(cls, point: dict, cores: int | None) -> CpuUse:
        other = point.get("other_cpu_cores") or 0.0
        return cls(point.get("client_cpu_cores") or 0.0, point.get("server_cpu_cores"), other, cores)

    @property
    def saturated(self) -> bool:
        if self.server is None or not self.cores:
            return False
        return self.generator + self.server + self.other >= SATURATED_SHARE * self.cores

    def describe(self, system: str) -> str:
        if self.server is None:
            return f"{system}: the server's CPU use was not measured (not a local process): contention unknown."
        total = self.generator + self.server + self.other
        state = (
            "CPU-bound, so the load generator's cycles came out of the server's"
            if self.saturated
            else "not CPU-bound, so the limit lies elsewhere (queues, batching)"
        )
        return (
            f"{system}: load generator {self.generator:.2f} + server {self.server:.2f} + rest {self.other:.2f} = "
            f"{total:.2f} of {self.cores or UNKNOWN} usable cores: {state}."
        )


def find_point(results: dict, workload: str, *, generator: str, level: float, system: str = "triton") -> dict | None:
    """The closed-loop point of `workload` at concurrency `level` from one generator and system."""
    for point in results["points"]:
        if (point["workload"], point["generator"], point["mode"], point["system"]) == (
            workload,
            generator,
            "concurrency",
            system,
        ) and point["level"] == level:
            return point
    return None


def find_ort(results: dict, padding_prefix: str, batch: int) -> dict | None:
    return next(
        (r for r in results["ort"] if r["padding"].startswith(padding_prefix) and r["batch_size"] == batch), None
    )


def profile(point: dict | None) -> str:
    """Where a request's time went (server steps) and who used the CPU during the point."""
    if point is None:
        return "point not measured"
    steps = ", ".join(
        f"{s['model']} {s['queue_ms']:.2f} ms queue + {s['compute_ms']:.2f} ms compute "
        f"(mean batch {s['mean_batch']:.1f})"
        for s in point.get("steps", [])
    )
    server = f"; server total {point['server_ms']:.2f} ms" if point.get("server_ms") is not None else ""
    cpu = f"; CPU cores used: load generator {point['client_cpu_cores']:.2f}"
    if point.get("server_cpu_cores") is not None:
        cpu += f", server {point['server_cpu_cores']:.2f}"
    cpu += f", rest of machine {point.get('other_cpu_cores') or 0.0:.2f}"
    latency = point["latency"]
    return (
        f"client p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms at "
        f"{point['throughput_rps']:.0f} req/s; per step: {steps or 'n/a'}{server}{cpu}"
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _thr(point: dict | None) -> float | None:
    return point["throughput_rps"] if point else None


def _p(point: dict | None, key: str) -> float | None:
    return point["latency"][key] if point else None


def _seqs(ort: dict | None) -> float | None:
    return ort["throughput_seqs"] if ort else None


def pair_ratio(pair: dict) -> float | None:
    """Search p50 / embed_query p50 of one latency pair (None where a point is missing)."""
    return _ratio(_p(pair.get("search"), "p50_ms"), _p(pair.get("embed_query"), "p50_ms"))


def search_latency_goal(
    results: dict, search_one: dict | None, query_one: dict | None, facts: RunFacts
) -> tuple[Goal, Callable[[], str], dict[str, dict | None]]:
    """Search p50 / embed_query p50 at concurrency 1: the median of the run's back-to-back latency
    pairs (aisle.benchmarks.suite.LATENCY_PAIR) where it measured some, since the machine's speed
    drifts between the sweep's two points minutes apart and this is a ratio of two small
    latencies; else those two points."""
    pairs = results.get("latency_pairs", [])
    ratios = [r for pair in pairs if (r := pair_ratio(pair))]
    sweep = _ratio(_p(search_one, "p50_ms"), _p(query_one, "p50_ms"))
    name = "search p50 / embed_query p50, concurrency 1 (perf_analyzer"
    goal = Goal(
        f"{name}, back-to-back pairs: median of {len(ratios)})" if ratios else f"{name})",
        statistics.median(ratios) if ratios else sweep,
        SEARCH_LATENCY_RATIO,
        "ratio",
        "<=",
    )
    measurements = {"search": search_one, "embed_query": query_one}
    for index, pair in enumerate(pairs, start=1):
        measurements |= {f"{workload} (pair {index})": point for workload, point in pair.items()}

    def note() -> str:
        if not ratios:
            return _search_note(search_one, query_one, facts)
        each = ", ".join(f"{r:.2f}" for r in ratios)
        apart = f"{sweep:.2f}" if sweep is not None else "not measured"
        return (
            f"Pairs (embed_query then search, back to back): {each}; the sweep's two points, minutes apart: "
            f"{apart}. {_search_note(search_one, query_one, facts)}"
        )

    return goal, note, measurements


def evaluate(results: dict, levels) -> list[Goal]:
    """Every goal of the suite (levels: aisle.benchmarks.suite.TargetLevels)."""
    c, lat = levels.throughput_concurrency, levels.latency_concurrency
    facts = RunFacts.of(results)
    pa_query = find_point(results, "embed_query", generator="perf_analyzer", level=c)
    sdk_query = find_point(results, "embed_query", generator="python", level=c)
    eager_query = find_point(results, "embed_query", generator="python", level=c, system="eager-http")
    ort_buckets = find_ort(results, "buckets", c)
    ort_max = find_ort(results, "max", c)
    rank_lat = find_point(results, "rank", generator="perf_analyzer", level=lat)
    rank_thr = find_point(results, "rank", generator="perf_analyzer", level=c)
    query_one = find_point(results, "embed_query", generator="perf_analyzer", level=1)
    search_one = find_point(results, "search", generator="perf_analyzer", level=1)
    search_thr = find_point(results, "search", generator="perf_analyzer", level=c)
    machine = results["machine"]
    gflops = pa_query["extra"].get("encoder_useful_gflops") if pa_query else None
    shares = results.get("query_tokens", {}).get("bucket_share", {})
    versus_eager = {"Triton": sdk_query, "eager": eager_query}

    def eager_note() -> str:
        return _eager_note(sdk_query, eager_query, shares, facts)

    def rank_note(point: dict | None) -> Callable[[], str]:
        return lambda: _rank_note(point, facts)

    def versus_ort(level: int) -> tuple[Goal, Callable[[], str], dict[str, dict | None]]:
        """Served embed_query at `level` against raw ORT on batches of `level` (the same work in-process)."""
        served = find_point(results, "embed_query", generator="perf_analyzer", level=level)
        ort = find_ort(results, "buckets", level)
        goal = Goal(
            f"embed_query throughput, Triton (perf_analyzer) / raw ORT (batch {level}), concurrency {level}",
            _ratio(_thr(served), _seqs(ort)),
            0.80,
            "ratio",
            ">=",
        )
        return goal, lambda: _ort_gap_note(served, ort, facts), {"Triton": served, "ORT": ort}

    # (goal, its diagnosis, the measurements it rests on), in report order.
    checks: list[tuple[Goal, Callable[[], str], dict[str, dict | None]]] = [
        *(versus_ort(level) for level in levels.query_levels if level > 1),
        (
            Goal(
                f"embed_query throughput, Triton / eager HF HTTP server (same Python load generator), concurrency {c}",
                _ratio(_thr(sdk_query), _thr(eager_query)),
                4.0,
                "x",
                ">=",
            ),
            eager_note,
            versus_eager,
        ),
        (
            Goal(
                f"embed_query p99, Triton / eager HF HTTP server, concurrency {c} (below 1 = Triton lower)",
                _ratio(_p(sdk_query, "p99_ms"), _p(eager_query, "p99_ms")),
                1.0,
                "ratio",
                "<=",
            ),
            eager_note,
            versus_eager,
        ),
        (
            Goal(
                f"length buckets vs pad-to-max, raw ORT throughput at batch {c}",
                _ratio(_seqs(ort_buckets), _seqs(ort_max)),
                10.0,
                "x",
                ">=",
            ),
            lambda: _bucket_note(ort_buckets, ort_max),
            {"buckets": ort_buckets, "padded": ort_max},
        ),
        *(
            (
                Goal(f"rank (100 candidates) {key[:3]}, concurrency {lat}", _p(rank_lat, key), goal, "ms", "<="),
                rank_note(rank_lat),
                {"rank": rank_lat},
            )
            for key, goal in (("p50_ms", 5.0), ("p99_ms", 15.0))
        ),
        (
            Goal(f"rank (100 candidates) throughput, concurrency {c}", _thr(rank_thr), 250.0, "req/s", ">="),
            rank_note(rank_thr),
            {"rank": rank_thr},
        ),
        search_latency_goal(results, search_one, query_one, facts),
        (
            Goal(
                f"search throughput / embed_query throughput, concurrency {c} (perf_analyzer)",
                _ratio(_thr(search_thr), _thr(pa_query)),
                SEARCH_THROUGHPUT_SHARE,
                "ratio",
                ">=",
            ),
            lambda: _search_note(search_thr, pa_query, facts),
            {"search": search_thr, "embed_query": pa_query},
        ),
        (
            Goal(
                f"query encoder GFLOP/s inside Triton (real tokens) / fp32 GEMM rate, concurrency {c}",
                _ratio(gflops, machine["gemm_gflops"]),
                0.60,
                "fraction",
                ">=",
            ),
            lambda: _gflops_note(pa_query, machine["gemm_gflops"], facts),
            {"Triton": pa_query, "GEMM": machine},
        ),
    ]
    return [with_note(goal, explain, measurements) for goal, explain, measurements in checks]


def with_note(goal: Goal, explain: Callable[[], str], measurements: dict[str, dict | None]) -> Goal:
    """Attach the diagnosis (failed goals) and a contention warning (any goal measured under load)."""
    if goal.passed is None:
        return replace(goal, note="not measured (see failures in results.json)")
    parts = [explain()] if goal.passed is False else []
    parts.append(_contention(measurements))
    return replace(goal, note=" ".join(p for p in parts if p))


def _contention(measurements: dict[str, dict | None]) -> str:
    """A warning when other processes took CPU while the goal's inputs were measured."""
    others = {name: m.get("other_cpu_cores") for name, m in measurements.items() if m}
    loaded = {name: cores for name, cores in others.items() if cores is not None and cores > CONTENTION_CORES}
    if not loaded:
        return ""
    during = ", ".join(f"{cores:.2f} cores during {name}" for name, cores in others.items() if cores is not None)
    rates = {name: _rate_per_core(m) for name, m in measurements.items() if m}
    per_core = ", ".join(f"{name} {rate:.0f}/s" for name, rate in rates.items() if rate is not None)
    return (
        f"Contention: the rest of the machine used {during} (other users of the shared cores); "
        "this measurement is distorted and should be repeated on an idle machine."
        + (f" Per CPU core the system under test used: {per_core}." if per_core else "")
    )


def _rate_per_core(measurement: dict) -> float | None:
    """Throughput per core used by the system under test (server tree, or this process for raw ORT)."""
    if "throughput_seqs" in measurement:
        rate, cores = measurement["throughput_seqs"], measurement.get("cpu_cores")
    else:
        rate, cores = measurement.get("throughput_rps"), measurement.get("server_cpu_cores")
    return rate / cores if rate and cores else None


def _step(point: dict | None, model: str) -> dict | None:
    return next((s for s in (point or {}).get("steps", []) if s["model"] == model), None)


def _busy_ms(step: dict) -> float:
    return step["queue_ms"] + step["compute_ms"]


def _fixes(*candidates: tuple[bool, str]) -> str:
    """The fixes whose measured cause is present, as one sentence."""
    chosen = [fix for applies, fix in candidates if applies]
    return f"Fix: {'; '.join(chosen)}." if chosen else ""


#: The fix for a query encoder measured in a Python-backend stub.
NATIVE_ENCODER = "serve the encoder on a native backend (a target rendering it for onnxruntime or TensorRT)"
#: The fix for a point measured CPU-bound with the load generator on the server's machine.
MOVE_GENERATOR = "run the load generator on another machine"


def _ort_gap_note(point: dict | None, ort: dict | None, facts: RunFacts) -> str:
    tokenizer, encoder = _step(point, QUERY_TOKENIZER), _step(point, QUERY_ENCODER)
    parts = [f"Profile: {profile(point)}."]
    if encoder and ort:
        tokenizing = (
            f"the tokenizer step adds {_busy_ms(tokenizer):.2f} ms per request"
            if tokenizer
            else "tokenized them itself (no tokenizer step on this target)"
        )
        parts.append(
            f"Raw ORT needs {ort['latency']['p50_ms']:.2f} ms per batch of {ort['batch_size']}; Triton's encoder ran "
            f"batches of {encoder['mean_batch']:.1f} and {tokenizing}."
        )
    if facts.python_encoder:
        parts.append(
            f"On {facts.served()} each encoder batch also crosses to a stub process (shared-memory copies and a "
            "Python execute()), which raw ORT does not."
        )
    cpu = CpuUse.of(point, facts.cores) if point else None
    if cpu:
        parts.append(cpu.describe("Triton"))
    small_batches = bool(encoder and ort and encoder["mean_batch"] < SMALL_BATCH_SHARE * ort["batch_size"])
    slow_tokenizer = bool(tokenizer and encoder and _busy_ms(tokenizer) >= TOKENIZER_SHARE * _busy_ms(encoder))
    parts.append(
        _fixes(
            (facts.python_encoder, NATIVE_ENCODER),
            (small_batches, "let the encoder fill larger batches (a longer max_queue_delay_us under load)"),
            (bool(cpu and cpu.saturated), MOVE_GENERATOR),
            (slow_tokenizer, "tokenize in the client or give the tokenizer its own instances"),
        )
    )
    return " ".join(p for p in parts if p)


def _eager_note(triton: dict | None, eager: dict | None, bucket_share: dict[str, float], facts: RunFacts) -> str:
    encoder = _step(triton, QUERY_ENCODER)
    parts = [f"Triton on {facts.served()}: {profile(triton)}. Eager: {profile(eager)}."]
    small_batches = bool(encoder and triton and encoder["mean_batch"] < SMALL_BATCH_SHARE * triton["level"])
    if encoder and triton:
        shares = ", ".join(f"{share:.0%} in bucket {bucket}" for bucket, share in bucket_share.items())
        parts.append(
            f"Triton's encoder ran batches of {encoder['mean_batch']:.1f} at concurrency {triton['level']:g}; the "
            "dynamic batcher merges same-bucket requests only" + (f" ({shares})." if shares else ".")
        )
    cpus = [CpuUse.of(point, facts.cores) for point in (triton, eager) if point]
    parts += [cpu.describe(system) for cpu, system in zip(cpus, ("Triton", "eager"))]
    parts.append(
        _fixes(
            (any(cpu.saturated for cpu in cpus), MOVE_GENERATOR),
            (facts.python_encoder, NATIVE_ENCODER),
            (small_batches, "let the encoder wait longer for same-bucket batches under load"),
        )
    )
    return " ".join(p for p in parts if p)


def _bucket_note(buckets: dict | None, padded: dict | None) -> str:
    if not buckets or not padded:
        return "not measured"
    token_ratio = padded["mean_padded_tokens"] / buckets["mean_padded_tokens"]
    slower = buckets["executed_gflops"] < padded["executed_gflops"]
    return (
        f"Queries average {buckets['mean_tokens']:.1f} real tokens; buckets pad them to "
        f"{buckets['mean_padded_tokens']:.1f}, pad-to-max to {padded['mean_padded_tokens']:.0f} "
        f"({token_ratio:.1f}x the tokens). Executed GFLOP/s: buckets {buckets['executed_gflops']:.0f}, padded "
        f"{padded['executed_gflops']:.0f}"
        + (
            ": the short bucketed batches run further below the machine's GEMM rate than the long padded ones, "
            "which eats part of the token saving."
            if slower
            else "."
        )
        + " Fix: larger same-bucket batches (more concurrency or a longer queue delay for short buckets) or ragged "
        "batching (no padding at all)."
    )


def _rank_note(point: dict | None, facts: RunFacts) -> str:
    steps = (point or {}).get("steps", [])
    store, head = _step(point, ITEM_STORE), _step(point, FUSION_HEAD)
    parts = [f"Profile: {profile(point)}."]
    if store and head and store["mean_batch"] < head["mean_batch"]:
        parts.append(
            f"item_store ran batches of {store['mean_batch']:.1f} vs {head['mean_batch']:.1f} for the head: "
            "histories of different lengths (dims [-1]) never share a batch, so its requests queue "
            f"({store['queue_ms']:.2f} ms); padding histories to a few length buckets would let them merge."
        )
    slowest = max(steps, key=_busy_ms, default=None)
    queued = sum(s["queue_ms"] for s in steps)
    computing = sum(s["compute_ms"] for s in steps)
    if slowest:
        parts.append(
            f"rank is {len(steps)} steps ({', '.join(s['model'] for s in steps)}); the slowest is {slowest['model']} "
            f"({_busy_ms(slowest):.2f} of {queued + computing:.2f} ms), and requests spent {queued:.2f} ms queued "
            f"vs {computing:.2f} ms computing."
        )
    cpu = CpuUse.of(point, facts.cores) if point else None
    if cpu:
        parts.append(cpu.describe("rank"))
    encoder_first = bool(slowest and slowest["model"] == QUERY_ENCODER and facts.python_encoder)
    parts.append(
        _fixes(
            (encoder_first, NATIVE_ENCODER),
            (
                queued > computing,
                "shorter max_queue_delay_us where load is low, or more instances of the most queued step",
            ),
            (bool(cpu and cpu.saturated), MOVE_GENERATOR),
        )
    )
    return " ".join(p for p in parts if p)


def _search_note(search: dict | None, query: dict | None, facts: RunFacts) -> str:
    """What search adds to embed_query: the catalog_search step (retrieval + head + top-K), which on
    targets whose graphs run in python models also encodes the query (aisle.schema.fuse_encoders)."""
    step = _step(search, CATALOG_SEARCH)
    parts = [f"search: {profile(search)}. embed_query: {profile(query)}."]
    if step:
        work = "query encoder, retrieval" if facts.python_encoder else "retrieval"
        parts.append(
            f"catalog_search ({work}, fusion head, top-K in one step) took {step['compute_ms']:.2f} ms computing "
            f"and {step['queue_ms']:.2f} ms queued per request, in batches of {step['mean_batch']:.1f}."
        )
    cpu = CpuUse.of(search, facts.cores) if search else None
    if cpu:
        parts.append(cpu.describe("search"))
    parts.append(
        _fixes(
            (bool(step and step["compute_ms"] > step["queue_ms"]), "fewer candidates (search_depth) or a cheaper head"),
            (bool(cpu and cpu.saturated), MOVE_GENERATOR),
        )
    )
    return " ".join(p for p in parts if p)


def _gflops_note(point: dict | None, gemm: float, facts: RunFacts) -> str:
    encoder = _step(point, QUERY_ENCODER)
    if not point or not encoder:
        return "not measured"
    useful = point["extra"].get("encoder_useful_gflops", float("nan"))
    executed = point["extra"].get("encoder_executed_gflops", float("nan"))
    padding = 1 - useful / executed if executed else 0.0
    cpu = CpuUse.of(point, facts.cores)
    small_batches = encoder["mean_batch"] < SMALL_BATCH_SHARE * point["level"]
    return " ".join(
        p
        for p in (
            f"The encoder achieved {useful:.0f} GFLOP/s on real tokens, at most {executed:.0f} counting bucket "
            f"padding (runs are cut to their longest text, so at most {padding:.0%} of the executed work is "
            f"padding), vs {gemm:.0f} GFLOP/s fp32 GEMM; mean batch "
            f"{encoder['mean_batch']:.1f} at concurrency {point['level']:g}.",
            cpu.describe("Triton"),
            _fixes(
                (small_batches, "larger batches (more concurrency or queue delay)"),
                (padding > PADDING_SHARE, "ragged batching (no padding)"),
                (cpu.saturated, "keep the encoder's cores free of the load generator and the tokenizer"),
            ),
        )
        if p
    )
