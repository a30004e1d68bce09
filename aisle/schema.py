"""The one declaration of aisle's served interface.

Every model Triton serves, every ensemble, every tensor name, dtype and dim, and every batching
choice is declared here once. The config.pbtxt of each target (tensorrt, onnxruntime, embedded),
the ensemble wiring, the client's validation, perf_analyzer's input files and the tests are all
derived from these declarations; nothing else spells a tensor name.

This module imports only the standard library so the torch-free client can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import TypeVar

# --- Sizes declared once -------------------------------------------------------------------------

#: Raw item features, in the order every tensor carries them. The fusion head normalises them
#: itself (log transform, standardisation, NaN -> catalog mean), so the wire carries raw values.
ITEM_FEATURES: tuple[str, ...] = ("price", "rating", "review_count", "popularity")
NUM_ITEM_FEATURES = len(ITEM_FEATURES)

#: Default embedding size: all-MiniLM-L6-v2's hidden size. A checkpoint's manifest overrides it.
DEFAULT_EMBEDDING_DIM = 384

#: Recency weighting of the user vector: the k-th most recent item weighs HISTORY_DECAY**k.
HISTORY_DECAY = 0.9
#: Most history items a request may carry (and the generator keeps per user).
MAX_HISTORY = 50

#: Prefix of the config `parameters` keys that carry ServingLimits in every rendered ensemble.
LIMITS_PARAMETER_PREFIX = "aisle."
#: The config `parameters` key through which aisle's python models take ModelDecl.intra_op_threads.
INTRA_OP_THREADS_PARAMETER = "intra_op_threads"
#: The config `parameters` key that tells the models reading the retrieval index where to search it
#: (aisle.retrieval.gpu.INDEX_DEVICES; rendered from RenderTarget.index_device).
INDEX_DEVICE_PARAMETER = "index_device"


def _buckets_text(buckets: tuple[int, ...]) -> str:
    return ",".join(map(str, buckets))


def parse_buckets(text: str, field_name: str = "buckets") -> tuple[int, ...]:
    """Parse "8,16,32" into (8, 16, 32): the form flags, config parameters and JSON all share."""
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError as e:
        raise ValueError(f"{field_name}={text!r}: expected comma-separated token counts, e.g. 8,16,32") from e


def _parse_limit(name: str, text: str, default: object) -> object:
    """One ServingLimits value from its config-parameter text, typed like the field's default."""
    if isinstance(default, tuple):
        return parse_buckets(text, name)
    try:
        return float(text) if isinstance(default, float) else int(text)
    except ValueError as e:
        raise ValueError(f"{name}={text!r}: not a number") from e


#: Room in ServingLimits.max_request_bytes for the small tensors and the protocol's framing.
REQUEST_HEADROOM_BYTES = 2**20


@dataclass(frozen=True)
class ServingLimits:
    """Every limit and size a served repository enforces, declared once.

    Owned by the checkpoint (`aisle train` writes them, `--query-buckets`/`--item-buckets` set the
    buckets), embedded in the repository manifest (`aisle export repo` may override the buckets),
    rendered into every ensemble's config `parameters`, and read back from the server by the client
    at its first call, so client-side checks always match the server it talks to.

    query_buckets / item_buckets: token lengths each text is padded to (the smallest that fits);
        the dynamic batcher merges only identical shapes, so few buckets batch well. The largest is
        the tower's maximum length: longer texts are truncated.
    max_candidates: candidate ids (or texts) one rank request may carry.
    max_history: history ids one request may carry; the user vector uses them all.
    history_decay: the k-th most recent history item weighs history_decay**k in the user vector.
    search_depth / recommend_depth: candidates search retrieves from the whole catalog (stage 1)
        and the fusion head re-ranks (stage 2), for a request with a query / without one (history
        only, or popularity). More finds more of what the head would rank high, at a head cost per
        request linear in it (`aisle evaluate`'s sweep on the small shop, nDCG@10 search / feed at
        N = 100, 200, 300, 500: 0.2985 / 0.1953, 0.2982 / 0.2185, 0.2980 / 0.2268, 0.2979 / 0.2293):
        searches are flat from 100, feeds gain up to ~300.
    max_results: most results (TOP_K) one search request may ask for; at most either depth.
    max_excluded_ids: most ids one search request may exclude (already bought, out of stock).
    max_filter_brands: most brands one search request may include or exclude.
    text_bytes_per_token: a text (query, item text, candidate text) is cut to
        `largest bucket x text_bytes_per_token` UTF-8 bytes (on a character boundary) before it is
        tokenized: see max_text_bytes. 64 keeps every ordinary text's ids: its first largest-bucket
        tokens span far fewer bytes (~4-6 per token in English, 3 per CJK character, words over
        100 characters are one [UNK]); only a text averaging more than 64 bytes per token (runs of
        whitespace, marks or giant words) is cut earlier than the tokenizer would have truncated
        it. Smaller caps the work a multi-MB text costs (tokenizing is linear, ~0.8 us per byte
        on the reference CPU); larger keeps even such texts intact.
    """

    query_buckets: tuple[int, ...] = (8, 16, 32)
    item_buckets: tuple[int, ...] = (16, 32, 64, 128)
    max_candidates: int = 1000
    max_history: int = MAX_HISTORY
    history_decay: float = HISTORY_DECAY
    search_depth: int = 100
    recommend_depth: int = 300
    max_results: int = 100
    max_excluded_ids: int = 1000
    max_filter_brands: int = 100
    text_bytes_per_token: int = 64

    def __post_init__(self) -> None:
        for name in ("query_buckets", "item_buckets"):
            buckets = getattr(self, name)
            if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
                raise ValueError(f"{name}={_buckets_text(buckets)}: expected ascending positive token counts")
        for name in (
            "max_candidates",
            "max_history",
            "search_depth",
            "recommend_depth",
            "max_results",
            "max_excluded_ids",
            "max_filter_brands",
            "text_bytes_per_token",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("search_depth", "recommend_depth"):
            if self.max_results > getattr(self, name):
                raise ValueError(f"max_results={self.max_results}: more than {name}={getattr(self, name)}")
        if not 0 < self.history_decay <= 1:
            raise ValueError(f"history_decay={self.history_decay}: must be in (0, 1]")

    def retrieval_depth(self, has_query: bool) -> int:
        """Stage-1 candidates for one request: search_depth with a query, recommend_depth without."""
        return self.search_depth if has_query else self.recommend_depth

    def max_text_bytes(self, buckets: tuple[int, ...]) -> int:
        """UTF-8 bytes of a text that a tokenizer with `buckets` reads; the rest is never read.

        Why a cut by bytes: the tokenizer truncates only after tokenizing the whole text, so a 4 MB
        query held the query tokenizer ~10 s and every query behind it waited. Cut to this many
        bytes first, a text costs at most a few ms whatever its size, and its token ids are
        unchanged whenever its first buckets[-1] tokens lie within the cut (text_bytes_per_token).
        """
        return buckets[-1] * self.text_bytes_per_token

    @property
    def max_query_bytes(self) -> int:
        """Bytes of a QUERY the query tokenizer reads (max_text_bytes of the query buckets)."""
        return self.max_text_bytes(self.query_buckets)

    @property
    def max_item_text_bytes(self) -> int:
        """Bytes of an item or candidate text the item tokenizer reads."""
        return self.max_text_bytes(self.item_buckets)

    @property
    def max_request_bytes(self) -> int:
        """The largest request body a proxy in front of the servers should admit.

        The largest request that carries nothing the server would throw away is a rank_cold at
        max_candidates texts cut to max_item_text_bytes (plus their 4-byte length prefixes and
        features) with a full history and excluded-id list; REQUEST_HEADROOM_BYTES covers the
        query, the filters and the protocol's framing. Every other useful request is smaller.

        Why a cap in front: tritonserver 2.51 has no request-size limit for gRPC, and a 10 MB query
        costs ~36 ms of server CPU (receiving it, copying it into the tokenizing stub, decoding it)
        before the cut by bytes can act, so a client sending them back to back slows everyone.
        A proxy that refuses bodies over this size stops such requests before they reach Triton.
        Texts longer than the cut stay legal: only a whole request above the cap is refused.
        """
        texts = self.max_candidates * (self.max_item_text_bytes + 4)
        features = self.max_candidates * NUM_ITEM_FEATURES * 4
        ids = (self.max_history + self.max_excluded_ids) * 8
        return texts + features + ids + REQUEST_HEADROOM_BYTES

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> ServingLimits:
        """From JSON (unknown keys ignored, missing ones default); lists become tuples."""
        known = {f.name: f for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
        return cls(**values)  # type: ignore[arg-type]

    def to_parameters(self) -> dict[str, str]:
        """The config.pbtxt `parameters` form: "aisle.<field>" -> string value."""
        return {
            LIMITS_PARAMETER_PREFIX + name: _buckets_text(value) if isinstance(value, tuple) else str(value)
            for name, value in self.to_dict().items()
        }

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> ServingLimits:
        """Inverse of to_parameters; a missing key is an error (the server must declare every limit)."""
        values: dict[str, object] = {}
        for name, default in cls().to_dict().items():
            key = LIMITS_PARAMETER_PREFIX + name
            if key not in parameters:
                raise ValueError(f"parameter {key!r} missing")
            text = parameters[key]
            values[name] = _parse_limit(name, text, default)
        return cls(**values)  # type: ignore[arg-type]

    def with_buckets(
        self, query_buckets: tuple[int, ...] | None = None, item_buckets: tuple[int, ...] | None = None
    ) -> ServingLimits:
        """These limits with the given buckets replaced (None keeps the current ones)."""
        return replace(
            self,
            query_buckets=self.query_buckets if query_buckets is None else query_buckets,
            item_buckets=self.item_buckets if item_buckets is None else item_buckets,
        )


class DType(str, Enum):
    """Wire datatypes (KServe v2 names), with their config and numpy spellings."""

    BYTES = "BYTES"
    INT64 = "INT64"
    FP32 = "FP32"

    @property
    def config_name(self) -> str:
        """The `data_type` enum name used in config.pbtxt."""
        return "TYPE_STRING" if self is DType.BYTES else f"TYPE_{self.value}"

    @property
    def numpy_name(self) -> str:
        return {"BYTES": "object", "INT64": "int64", "FP32": "float32"}[self.value]


#: Token ids and masks travel as int64: the dtype HF models and their ONNX exports take natively.
TOKEN_DTYPE = DType.INT64


class Role(str, Enum):
    """What a model does; the renderer picks a backend per (role, target)."""

    TOKENIZER = "tokenizer"
    ENCODER = "encoder"
    #: Tokenizer and encoder in one python model (fuse_tokenizers), TEXT -> EMBEDDING.
    TEXT_ENCODER = "text_encoder"
    FUSION_HEAD = "fusion_head"
    ITEM_STORE = "item_store"
    USER_PROFILE = "user_profile"
    COLD_ITEM_ENCODER = "cold_item_encoder"
    VALIDATOR = "validator"
    CATALOG_SEARCH = "catalog_search"
    ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class TensorDecl:
    """One tensor. `dims` excludes the batch dimension when the model batches; -1 is variable."""

    name: str
    dtype: DType
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Batching:
    """Batching of one model.

    max_batch_size: largest batch Triton forms (0 = the model sees whole requests, unbatched).
    max_queue_delay_us: how long the dynamic batcher waits to fill a batch; None disables it.
        Longer waits raise throughput under load and add at most this much latency when idle.
    ragged: the model reads each request's tensors on its own (a python model that checks and
        serves request by request), so the batcher may merge requests whose variable dims differ
        (`allow_ragged_batch` on those inputs). Without it Triton merges only requests of equal
        shapes: search requests, whose history and filter lengths vary, ran catalog_search in
        batches of 1.6 at concurrency 16; merged, in batches of 4.7 and 254 / 270 vs 209 / 215
        searches/s (perf_analyzer, two interleaved pairs of runs, embedded target, small shop).
        Only for python-backend models: a graph backend would concatenate ragged inputs.
    """

    max_batch_size: int
    max_queue_delay_us: int | None = None
    ragged: bool = False


@dataclass(frozen=True)
class ModelDecl:
    """A composing model: its name, role and interface, the same on every target."""

    name: str
    role: Role
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    batching: Batching
    #: Free-form parameters rendered into config.pbtxt `parameters` (e.g. which tokenizer to load).
    parameters: tuple[tuple[str, str], ...] = ()
    #: Let Triton's response cache answer a repeated request (same input tensors) without running
    #: the model. Only for deterministic models whose inputs recur; it takes effect on a server
    #: started with a cache (`aisle serve --response-cache-mb N`, tritonserver `--cache-config`).
    response_cache: bool = False
    #: Threads one execution of the model's graph may use on the CPU; None = the runtime's default
    #: (one per core), or in a python model with several instances cores // instances. A small
    #: graph run at batch 1 gains no time from a second thread but spends ~70% more CPU (the fusion
    #: head over 100 candidates: 0.84 ms on one thread, 0.94 ms wall and 1.45 ms CPU on two), which
    #: a saturated server takes from its other models.
    intra_op_threads: int | None = None
    #: Instances on CPU targets whose graphs run in python models, sharing the cores: each session
    #: takes cores // instances threads (model_repository/ort_runner.py). Two for the query encoder:
    #: its short sequences gain little from a second thread within one run, and two single-threaded
    #: instances side by side served 17-27% more embed_query requests/s at concurrency 16 on 2 cores
    #: than one two-threaded instance (three interleaved pairs of runs), with the same p50 at
    #: concurrency 1. On an Intel Xeon one two-threaded instance answered a lone caller sooner but
    #: served 10-15% fewer at 4 and 16 (`python -m aisle.benchmarks.studies instances`; README).
    cpu_instances: int = 1
    #: Encoders only: where the target runs its graphs in python models (the embedded target), the
    #: tokenizer step feeding this encoder is folded into it (fuse_tokenizers), saving one process
    #: hop per request. The query tower's, which every latency-bound ensemble passes through:
    #: embed_query at concurrency 16 served 579 / 546 vs 538 / 459 requests/s on 2 cores, its p50
    #: alone 6.4 / 6.1 vs 7.2 / 6.9 ms (perf_analyzer, two interleaved pairs of runs, folded vs
    #: not). The item tower keeps its step: embed_item carries catalog texts in
    #: bulk, where one hop per batch weighs little, and its encoder stays addressable by token ids
    #: (the bucket study sends those).
    fuse_tokenizer: bool = False
    #: Where the target runs its graphs in python models, the text encoder step feeding this model's
    #: first input (an embedding) is folded into it (fold_for_python_graphs): the model takes that
    #: encoder's text and embeds it in-process, one process hop fewer per request.
    fuse_encoder: bool = False
    #: Set by that fold on the served schema: which encoder the model runs, and for which input.
    folded_encoder: FoldedEncoder | None = None


@dataclass(frozen=True)
class FoldedEncoder:
    """A text encoder folded into the model that consumed its embedding.

    encoder: the text encoder model whose tokenizer and graph files the model loads.
    text: the model's input carrying the text (named after the ensemble tensor that fed the encoder).
    embedding: the declared input the embedding replaces, as the model's logic still reads it.
    """

    encoder: str
    text: str
    embedding: str


@dataclass(frozen=True)
class Step:
    """One ensemble step: `input_map`/`output_map` go from the model's tensor to the ensemble's."""

    model: str
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class EnsembleDecl:
    """A public ensemble: the contract the client, perf_analyzer and tests use."""

    name: str
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    max_batch_size: int
    steps: tuple[Step, ...]
    description: str = ""
    #: Rendered into config.pbtxt `parameters`: every ensemble carries the ServingLimits, so a
    #: client reads the limits of the server it talks to from any ensemble's config.
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Schema:
    """All declarations for one checkpoint: its embedding size and its serving limits."""

    embedding_dim: int
    models: tuple[ModelDecl, ...]
    ensembles: tuple[EnsembleDecl, ...]
    limits: ServingLimits = field(default_factory=ServingLimits)

    def model(self, name: str) -> ModelDecl:
        for decl in self.models:
            if decl.name == name:
                return decl
        raise KeyError(f"no model named {name!r} in the schema")

    def ensemble(self, name: str) -> EnsembleDecl:
        for decl in self.ensembles:
            if decl.name == name:
                return decl
        raise KeyError(f"no ensemble named {name!r} in the schema")

    def encoder_buckets(self, encoder: str) -> tuple[int, ...]:
        """The length buckets of the tokenizer whose token ids an encoder consumes in the ensembles
        (a text encoder's own).

        Found by following the ensemble wiring, so a third tower gets its own tokenizer's buckets.
        """
        if self.model(encoder).role is Role.TEXT_ENCODER:
            return tokenizer_buckets(self.model(encoder))
        for ensemble in self.ensembles:
            produced_by = {tensor: step.model for step in ensemble.steps for _, tensor in step.output_map}
            for step in ensemble.steps:
                if step.model == self.model(encoder).name:
                    return tokenizer_buckets(self.model(produced_by[step.input_map[0][1]]))
        raise KeyError(f"no ensemble feeds encoder {encoder!r} from a tokenizer")


def tokenizer_buckets(decl: ModelDecl) -> tuple[int, ...]:
    """A tokenizing model's length buckets, as declared in its `buckets` parameter ("8,16,32")."""
    return parse_buckets(dict(decl.parameters)["buckets"])


def _fused_steps(schema: Schema, steps: tuple[Step, ...]) -> tuple[tuple[Step, ...], dict[str, str]]:
    """`steps` with each tokenizer step folded into the fuse_tokenizer encoder step it feeds, and
    {encoder: tokenizer} for every fold."""
    producers = {tensor: index for index, step in enumerate(steps) for _, tensor in step.output_map}
    folded: dict[int, Step] = {}
    pairs: dict[str, str] = {}
    for step in steps:
        if not schema.model(step.model).fuse_tokenizer:
            continue
        source = producers[step.input_map[0][1]]
        tokenizer = steps[source]
        if schema.model(tokenizer.model).role is not Role.TOKENIZER:
            raise ValueError(f"{step.model} declares fuse_tokenizer but {tokenizer.model} feeds it, not a tokenizer")
        folded[source] = Step(step.model, tokenizer.input_map, step.output_map)
        pairs[step.model] = tokenizer.model
    merged = tuple(folded.get(i, step) for i, step in enumerate(steps) if step.model not in pairs or i in folded)
    return merged, pairs


#: What one kind of fold records per folded model.
T = TypeVar("T")


def _fold_ensembles(
    schema: Schema, fold: Callable[[Schema, tuple[Step, ...]], tuple[tuple[Step, ...], dict[str, T]]]
) -> tuple[tuple[EnsembleDecl, ...], dict[str, T]]:
    """Every ensemble with `fold` applied to its steps, and what the folds recorded, by model."""
    ensembles: list[EnsembleDecl] = []
    folds: dict[str, T] = {}
    for ensemble in schema.ensembles:
        steps, folded = fold(schema, ensemble.steps)
        ensembles.append(replace(ensemble, steps=steps))
        folds.update(folded)
    return tuple(ensembles), folds


def fuse_tokenizers(schema: Schema) -> Schema:
    """Every encoder declaring fuse_tokenizer becomes a TEXT_ENCODER (the tokenizer's TEXT input and
    buckets; the encoder's name, outputs, batching, instances and cache), its tokenizer step leaves
    the ensembles, and a tokenizer no step uses any more leaves the models."""
    ensembles, pairs = _fold_ensembles(schema, _fused_steps)
    used = {step.model for ensemble in ensembles for step in ensemble.steps}
    models = []
    for decl in schema.models:
        if decl.name in pairs:
            tokenizer = schema.model(pairs[decl.name])
            decl = replace(
                decl,
                role=Role.TEXT_ENCODER,
                inputs=tokenizer.inputs,
                parameters=tokenizer.parameters + decl.parameters,
            )
        if decl.role is not Role.TOKENIZER or decl.name in used:
            models.append(decl)
    return replace(schema, models=tuple(models), ensembles=tuple(ensembles))


def _encoder_folded_steps(schema: Schema, steps: tuple[Step, ...]) -> tuple[tuple[Step, ...], dict[str, FoldedEncoder]]:
    """`steps` with each text encoder step that feeds a fuse_encoder model folded into that model's
    step (the encoder step stays while another step still reads its embedding), and the folds."""
    producers = {tensor: index for index, step in enumerate(steps) for _, tensor in step.output_map}
    replaced: dict[int, Step] = {}
    folds: dict[str, FoldedEncoder] = {}
    for index, step in enumerate(steps):
        if not schema.model(step.model).fuse_encoder:
            continue
        embedding, source_tensor = step.input_map[0]
        encoder = steps[producers[source_tensor]]
        if schema.model(encoder.model).role is not Role.TEXT_ENCODER:
            raise ValueError(f"{step.model} declares fuse_encoder but {encoder.model} feeds it, not a text encoder")
        text = encoder.input_map[0][1]
        replaced[index] = Step(step.model, ((text, text), *step.input_map[1:]), step.output_map)
        folds[step.model] = FoldedEncoder(encoder.model, text, embedding)
    merged = tuple(replaced.get(i, step) for i, step in enumerate(steps))
    read_before = {tensor for step in steps for _, tensor in step.input_map}
    read_after = {tensor for step in merged for _, tensor in step.input_map}
    orphaned = read_before - read_after
    return tuple(step for step in merged if not any(t in orphaned for _, t in step.output_map)), folds


def fuse_encoders(schema: Schema) -> Schema:
    """Every model declaring fuse_encoder takes the text its feeding text encoder took (an input named
    after the ensemble tensor, BYTES [1]) instead of the embedding, and records the fold
    (ModelDecl.folded_encoder) so it loads that encoder's files; an encoder step whose embedding
    nothing else reads leaves that ensemble. The encoder model itself stays for the other ensembles."""
    ensembles, folds = _fold_ensembles(schema, _encoder_folded_steps)
    models = []
    for decl in schema.models:
        if decl.name in folds:
            fold = folds[decl.name]
            decl = replace(
                decl, inputs=(TensorDecl(fold.text, DType.BYTES, (1,)), *decl.inputs[1:]), folded_encoder=fold
            )
        models.append(decl)
    return replace(schema, models=tuple(models), ensembles=tuple(ensembles))


def fold_for_python_graphs(schema: Schema) -> Schema:
    """The schema as a target whose graphs run in python models serves it: tokenizers folded into the
    encoders declaring fuse_tokenizer, then those text encoders into the models declaring
    fuse_encoder. Public ensemble tensors do not change."""
    return fuse_encoders(fuse_tokenizers(schema))


# --- Names -----------------------------------------------------------------------------------------

QUERY_TOKENIZER = "query_tokenizer"
ITEM_TOKENIZER = "item_tokenizer"
QUERY_ENCODER = "query_encoder"
ITEM_ENCODER = "item_encoder"
ITEM_STORE = "item_store"
USER_PROFILE = "user_profile"
COLD_ITEM_ENCODER = "cold_item_encoder"
FUSION_HEAD = "fusion_head"
RANK_COLD_VALIDATOR = "rank_cold_validator"
CATALOG_SEARCH = "catalog_search"

EMBED_QUERY = "embed_query"
EMBED_ITEM = "embed_item"
RANK = "rank"
RANK_COLD = "rank_cold"
SEARCH = "search"

# Tensor names shared by several models and ensembles.
TEXT = "TEXT"
INPUT_IDS = "INPUT_IDS"
ATTENTION_MASK = "ATTENTION_MASK"
EMBEDDING = "EMBEDDING"
QUERY = "QUERY"
ITEM_TEXT = "ITEM_TEXT"
CANDIDATE_IDS = "CANDIDATE_IDS"
CANDIDATE_TEXTS = "CANDIDATE_TEXTS"
CANDIDATE_FEATURES = "CANDIDATE_FEATURES"
USER_HISTORY_IDS = "USER_HISTORY_IDS"
QUERY_EMBEDDING = "QUERY_EMBEDDING"
USER_EMBEDDING = "USER_EMBEDDING"
ITEM_EMBEDDINGS = "ITEM_EMBEDDINGS"
ITEM_FEATURES_TENSOR = "ITEM_FEATURES"
SCORES = "SCORES"
TOP_K = "TOP_K"
CATEGORY = "CATEGORY"
BRANDS = "BRANDS"
EXCLUDE_BRANDS = "EXCLUDE_BRANDS"
PRICE_RANGE = "PRICE_RANGE"
EXCLUDE_IDS = "EXCLUDE_IDS"
ITEM_IDS = "ITEM_IDS"

#: Largest batch of texts one embed request (and one encoder execution) carries.
ENCODER_MAX_BATCH = 64
#: Largest batch of rank requests merged into one head execution.
RANK_MAX_BATCH = 8

# Queue delays, from the queue-delay sweep (`python -m aisle.benchmarks.studies queue-delay`) on the
# small shop (2 CPU cores, embedded target; measured with the sweep's earlier loop): the python steps
# (tokenizers, item store, validator, profile, head) gain nothing from waiting for company: rank at
# delay 0 vs 500 us, alone p50 9.6 vs 13.7 ms, at concurrency 8 179 vs 156 req/s. Under load they
# still batch what queued while they ran. The encoders do gain: embed_query at concurrency 8 took
# 186 req/s at delay 0 and 204-218 at 500-2000 us (alone p50 8.3 -> 9.0 ms at 1000 us).
TEXT_BATCHING = Batching(ENCODER_MAX_BATCH, max_queue_delay_us=0)
ENCODER_BATCHING = Batching(ENCODER_MAX_BATCH, max_queue_delay_us=1000)
# The query encoder runs two instances (ModelDecl.cpu_instances; two on GPUs too), so a request
# finds an idle instance rather than waiting for company, and waiting stopped paying: embed_query
# at delay 0 vs 1000 us (two interleaved pairs of perf_analyzer runs, embedded target), alone p50
# 7.6 / 7.3 vs 8.0 / 8.9 ms, at concurrency 16 479 / 487 vs 438 / 471 req/s.
QUERY_ENCODER_BATCHING = Batching(ENCODER_MAX_BATCH, max_queue_delay_us=0)
RANK_BATCHING = Batching(RANK_MAX_BATCH, max_queue_delay_us=0)
#: The catalog readers and validators: python logic that takes requests one by one.
PER_REQUEST_BATCHING = Batching(RANK_MAX_BATCH, max_queue_delay_us=0, ragged=True)


def _pairs(**mapping: str) -> tuple[tuple[str, str], ...]:
    return tuple(mapping.items())


def validated(tensor: str) -> str:
    """Name of a validator's output carrying `tensor` once checked (e.g. VALID_CANDIDATE_IDS)."""
    return f"VALID_{tensor}"


@dataclass(frozen=True)
class CommonTensors:
    """The tensor declarations every builder below shares, for one embedding size."""

    dim: int

    @property
    def ids(self) -> TensorDecl:
        return TensorDecl(INPUT_IDS, TOKEN_DTYPE, (-1,))

    @property
    def mask(self) -> TensorDecl:
        return TensorDecl(ATTENTION_MASK, TOKEN_DTYPE, (-1,))

    @property
    def embedding(self) -> TensorDecl:
        return TensorDecl(EMBEDDING, DType.FP32, (self.dim,))

    @property
    def query(self) -> TensorDecl:
        return TensorDecl(QUERY, DType.BYTES, (1,))

    @property
    def history(self) -> TensorDecl:
        return TensorDecl(USER_HISTORY_IDS, DType.INT64, (-1,))

    @property
    def item_embeddings(self) -> TensorDecl:
        return TensorDecl(ITEM_EMBEDDINGS, DType.FP32, (-1, self.dim))

    @property
    def item_features(self) -> TensorDecl:
        return TensorDecl(ITEM_FEATURES_TENSOR, DType.FP32, (-1, NUM_ITEM_FEATURES))

    @property
    def user_embedding(self) -> TensorDecl:
        return TensorDecl(USER_EMBEDDING, DType.FP32, (self.dim,))

    @property
    def scores(self) -> TensorDecl:
        return TensorDecl(SCORES, DType.FP32, (-1,))


# --- Composing models --------------------------------------------------------------------------------


def tokenizer_model(name: str, buckets: tuple[int, ...], t: CommonTensors) -> ModelDecl:
    return ModelDecl(
        name=name,
        role=Role.TOKENIZER,
        inputs=(TensorDecl(TEXT, DType.BYTES, (1,)),),
        outputs=(t.ids, t.mask),
        batching=TEXT_BATCHING,
        parameters=(("buckets", _buckets_text(buckets)),),
    )


def encoder_model(
    name: str,
    t: CommonTensors,
    *,
    batching: Batching = ENCODER_BATCHING,
    response_cache: bool = False,
    cpu_instances: int = 1,
    fuse_tokenizer: bool = False,
) -> ModelDecl:
    return ModelDecl(
        name,
        Role.ENCODER,
        (t.ids, t.mask),
        (t.embedding,),
        batching,
        response_cache=response_cache,
        cpu_instances=cpu_instances,
        fuse_tokenizer=fuse_tokenizer,
    )


def item_store_model(t: CommonTensors) -> ModelDecl:
    """rank's first step: checks the whole request (QUERY passes on as VALID_QUERY), looks up the
    candidates and builds the user vector; one python hop where three would read one catalog."""
    return ModelDecl(
        ITEM_STORE,
        Role.ITEM_STORE,
        (t.query, TensorDecl(CANDIDATE_IDS, DType.INT64, (-1,)), t.history),
        (TensorDecl(validated(QUERY), DType.BYTES, (1,)), t.item_embeddings, t.item_features, t.user_embedding),
        PER_REQUEST_BATCHING,
    )


def cold_item_encoder_model(t: CommonTensors) -> ModelDecl:
    """Takes the features too (passed through) so it can check they match the texts one to one and
    name CANDIDATE_FEATURES when they do not, on every target."""
    return ModelDecl(
        COLD_ITEM_ENCODER,
        Role.COLD_ITEM_ENCODER,
        (
            TensorDecl(CANDIDATE_TEXTS, DType.BYTES, (-1,)),
            TensorDecl(CANDIDATE_FEATURES, DType.FP32, (-1, NUM_ITEM_FEATURES)),
        ),
        (t.item_embeddings, t.item_features),
        Batching(RANK_MAX_BATCH),
    )


def fusion_head_model(t: CommonTensors) -> ModelDecl:
    return ModelDecl(
        FUSION_HEAD,
        Role.FUSION_HEAD,
        (TensorDecl(QUERY_EMBEDDING, DType.FP32, (t.dim,)), t.user_embedding, t.item_embeddings, t.item_features),
        (t.scores,),
        RANK_BATCHING,
        intra_op_threads=1,
    )


def search_inputs(t: CommonTensors) -> tuple[TensorDecl, ...]:
    """What a search request carries besides the query: history, result count, filters.

    TOP_K: results wanted (1..max_results). Filters, each "no filter" when empty: CATEGORY a
    category path prefix ("Shoes > Running Shoes", "" = any); BRANDS only these brands; EXCLUDE_BRANDS
    never these; PRICE_RANGE (min, max), NaN = open end; EXCLUDE_IDS items never returned.
    """
    return (
        t.history,
        TensorDecl(TOP_K, DType.INT64, (1,)),
        TensorDecl(CATEGORY, DType.BYTES, (1,)),
        TensorDecl(BRANDS, DType.BYTES, (-1,)),
        TensorDecl(EXCLUDE_BRANDS, DType.BYTES, (-1,)),
        TensorDecl(PRICE_RANGE, DType.FP32, (2,)),
        TensorDecl(EXCLUDE_IDS, DType.INT64, (-1,)),
    )


def catalog_search_model(t: CommonTensors) -> ModelDecl:
    """Search's stages 1 and 2 in one step: checks the request, retrieves search_depth (with a
    query) or recommend_depth candidates from the whole catalog (filtered inside retrieval), scores
    them with the fusion head's graph and returns the TOP_K best, best first (variable length).

    One step rather than retriever -> fusion_head -> selection: the candidates' embeddings
    ([N, D] floats per request) never cross a process boundary, and the request pays one python
    hop after the query encoder instead of three.
    """
    return ModelDecl(
        CATALOG_SEARCH,
        Role.CATALOG_SEARCH,
        (TensorDecl(QUERY_EMBEDDING, DType.FP32, (t.dim,)), *search_inputs(t)),
        (TensorDecl(ITEM_IDS, DType.INT64, (-1,)), TensorDecl(SCORES, DType.FP32, (-1,))),
        PER_REQUEST_BATCHING,
        # On the embedded target search is this one step: the query encoder's tokenizer and graph
        # run inside it (one python hop instead of two). Measured with perf_analyzer on the small
        # shop (2 cores, quiet machine, three interleaved pairs of two-step vs folded servers):
        # searches/s at concurrency 16 312 / 336 / 338 vs 401 / 418 / 363; p50 at concurrency 1
        # unchanged (9.5 / 8.1 / 8.6 vs 9.1 / 9.1 / 9.2 ms): the hop was cheap alone, the gain is
        # under load, where a search no longer queues twice.
        fuse_encoder=True,
        # Two instances sharing the cores (one onnxruntime thread each, like the query encoder's):
        # folded, one two-threaded instance ran full batches of 8 with 25 ms queued per request at
        # concurrency 16 and served 291-314 searches/s. Two instances without the fold did not gain
        # (281 / 315 vs the folded 392 / 405, two interleaved pairs).
        cpu_instances=2,
    )


def validator_model(name: str, inputs: tuple[TensorDecl, ...], extra_outputs: tuple[TensorDecl, ...] = ()) -> ModelDecl:
    """A step that checks every input and passes each on as VALID_<name> (plus `extra_outputs`).

    Multi-branch ensembles check every input in one first step, before any branch starts: when a
    composing model fails while sibling steps are in flight, tritonserver 2.51 never releases the
    ensemble request (leaked in-flight count, memory, and a stalled shutdown drain).
    rank_cold's validator also builds the user vector (USER_EMBEDDING): it is the ensemble's one
    catalog reader, so a request checks its history ids and averages their embeddings on one
    catalog version, even while a live catalog update switches versions (see `aisle catalog`).
    """
    outputs = tuple(TensorDecl(validated(t.name), t.dtype, t.dims) for t in inputs) + extra_outputs
    return ModelDecl(name, Role.VALIDATOR, inputs, outputs, PER_REQUEST_BATCHING)


# --- Steps shared by several ensembles ----------------------------------------------------------------


def embed_steps(tokenizer: str, encoder: str, text: str, embedding: str = EMBEDDING) -> tuple[Step, ...]:
    """Text tensor `text` -> tokenizer -> encoder -> ensemble tensor `embedding`."""
    return (
        Step(tokenizer, _pairs(TEXT=text), _pairs(INPUT_IDS="ids", ATTENTION_MASK="mask")),
        Step(encoder, _pairs(INPUT_IDS="ids", ATTENTION_MASK="mask"), _pairs(EMBEDDING=embedding)),
    )


def passthrough_step(decl: ModelDecl, outputs: Mapping[str, str]) -> Step:
    """A step fed by the ensemble inputs of the same names, its outputs wired as `outputs` says."""
    return Step(decl.name, tuple((t.name, t.name) for t in decl.inputs), tuple(outputs.items()))


HEAD_STEP = Step(
    FUSION_HEAD,
    _pairs(
        QUERY_EMBEDDING="query_embedding",
        USER_EMBEDDING="user",
        ITEM_EMBEDDINGS="item_embeddings",
        ITEM_FEATURES="item_features",
    ),
    _pairs(SCORES=SCORES),
)
#: The validated query's embedding, as the head step reads it.
QUERY_TO_EMBEDDING = embed_steps(QUERY_TOKENIZER, QUERY_ENCODER, QUERY.lower(), "query_embedding")


# --- Public ensembles -------------------------------------------------------------------------------------


def embed_query_ensemble(t: CommonTensors) -> EnsembleDecl:
    return EnsembleDecl(
        EMBED_QUERY,
        (t.query,),
        (t.embedding,),
        ENCODER_MAX_BATCH,
        embed_steps(QUERY_TOKENIZER, QUERY_ENCODER, QUERY),
        "Search query text -> L2-normalised query-tower embedding (empty text -> zero vector).",
    )


def embed_item_ensemble(t: CommonTensors) -> EnsembleDecl:
    return EnsembleDecl(
        EMBED_ITEM,
        (TensorDecl(ITEM_TEXT, DType.BYTES, (1,)),),
        (t.embedding,),
        ENCODER_MAX_BATCH,
        embed_steps(ITEM_TOKENIZER, ITEM_ENCODER, ITEM_TEXT),
        "Item text -> L2-normalised item-tower embedding.",
    )


def rank_ensemble(t: CommonTensors, item_store: ModelDecl) -> EnsembleDecl:
    outputs = {
        validated(QUERY): QUERY.lower(),
        ITEM_EMBEDDINGS: "item_embeddings",
        ITEM_FEATURES_TENSOR: "item_features",
        USER_EMBEDDING: "user",
    }
    return EnsembleDecl(
        RANK,
        item_store.inputs,
        (t.scores,),
        RANK_MAX_BATCH,
        (passthrough_step(item_store, outputs), *QUERY_TO_EMBEDDING, HEAD_STEP),
        "Score catalog candidates for a query (may be empty) and a user history (may be empty).",
    )


def rank_cold_ensemble(t: CommonTensors, validator: ModelDecl) -> EnsembleDecl:
    cold_step = Step(
        COLD_ITEM_ENCODER,
        _pairs(CANDIDATE_TEXTS=CANDIDATE_TEXTS.lower(), CANDIDATE_FEATURES=CANDIDATE_FEATURES.lower()),
        _pairs(ITEM_EMBEDDINGS="item_embeddings", ITEM_FEATURES="item_features"),
    )
    # The history goes no further than the validator: it becomes the user vector there.
    checked = {validated(x.name): x.name.lower() for x in validator.inputs if x.name != USER_HISTORY_IDS}
    return EnsembleDecl(
        RANK_COLD,
        validator.inputs,
        (t.scores,),
        RANK_MAX_BATCH,
        (
            passthrough_step(validator, {**checked, USER_EMBEDDING: "user"}),
            *QUERY_TO_EMBEDDING,
            cold_step,
            HEAD_STEP,
        ),
        "Cold start: score candidates given as item texts (+ raw features, NaN = unknown), "
        "encoded by the item tower on the fly.",
    )


def search_ensemble(t: CommonTensors, catalog_search: ModelDecl) -> EnsembleDecl:
    query_steps = embed_steps(QUERY_TOKENIZER, QUERY_ENCODER, QUERY, "query_embedding")
    search = Step(
        CATALOG_SEARCH,
        ((QUERY_EMBEDDING, "query_embedding"), *((x.name, x.name) for x in catalog_search.inputs[1:])),
        _pairs(ITEM_IDS=ITEM_IDS, SCORES=SCORES),
    )
    return EnsembleDecl(
        SEARCH,
        (t.query, *catalog_search.inputs[1:]),
        catalog_search.outputs,
        RANK_MAX_BATCH,
        (*query_steps, search),
        "Search (or, with an empty query, recommend) from the whole catalog: retrieval of "
        "search_depth (recommend_depth without a query) candidates by the query and the user vector, "
        "filtered, then the fusion head; the TOP_K best ids and scores, best first. No query and no "
        "history: the most popular items.",
    )


def build_schema(embedding_dim: int = DEFAULT_EMBEDDING_DIM, limits: ServingLimits | None = None) -> Schema:
    """Declare every served model and ensemble for one embedding size and one set of limits."""
    limits = limits or ServingLimits()
    t = CommonTensors(embedding_dim)
    item_store = item_store_model(t)
    catalog_search = catalog_search_model(t)
    rank_cold_validator = validator_model(
        RANK_COLD_VALIDATOR,
        (
            t.query,
            TensorDecl(CANDIDATE_TEXTS, DType.BYTES, (-1,)),
            TensorDecl(CANDIDATE_FEATURES, DType.FP32, (-1, NUM_ITEM_FEATURES)),
            t.history,
        ),
        (t.user_embedding,),
    )
    models = (
        tokenizer_model(QUERY_TOKENIZER, limits.query_buckets, t),
        tokenizer_model(ITEM_TOKENIZER, limits.item_buckets, t),
        # Shoppers repeat head queries ("running shoes"): their token ids recur, so the query
        # encoder's responses are worth caching. Item texts rarely repeat in one request's shape.
        encoder_model(
            QUERY_ENCODER,
            t,
            batching=QUERY_ENCODER_BATCHING,
            response_cache=True,
            cpu_instances=2,
            fuse_tokenizer=True,
        ),
        encoder_model(ITEM_ENCODER, t),
        item_store,
        ModelDecl(USER_PROFILE, Role.USER_PROFILE, (t.history,), (t.user_embedding,), PER_REQUEST_BATCHING),
        cold_item_encoder_model(t),
        fusion_head_model(t),
        rank_cold_validator,
        catalog_search,
    )
    ensembles = (
        embed_query_ensemble(t),
        embed_item_ensemble(t),
        rank_ensemble(t, item_store),
        rank_cold_ensemble(t, rank_cold_validator),
        search_ensemble(t, catalog_search),
    )
    parameters = tuple(limits.to_parameters().items())
    return Schema(
        embedding_dim=embedding_dim,
        models=models,
        ensembles=tuple(replace(e, parameters=parameters) for e in ensembles),
        limits=limits,
    )
