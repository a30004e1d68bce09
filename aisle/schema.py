"""The one declaration of aisle's served interface.

Every model Triton serves, every ensemble, every tensor name, dtype and dim, and every batching
choice is declared here once. The config.pbtxt of each target (tensorrt, onnxruntime, embedded),
the ensemble wiring, the client's validation, perf_analyzer's input files and the tests are all
derived from these declarations; nothing else spells a tensor name.

This module imports only the standard library so the torch-free client can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# --- Sizes declared once -------------------------------------------------------------------------

#: Raw item features, in the order every tensor carries them. The fusion head normalises them
#: itself (log transform, standardisation, NaN -> catalog mean), so the wire carries raw values.
ITEM_FEATURES: tuple[str, ...] = ("price", "rating", "review_count", "popularity")
NUM_ITEM_FEATURES = len(ITEM_FEATURES)

#: Default embedding size: all-MiniLM-L6-v2's hidden size. A checkpoint's manifest overrides it.
DEFAULT_EMBEDDING_DIM = 384

#: Length buckets: each request is padded to the smallest bucket that fits its longest text, so
#: the dynamic batcher (which merges only identical shapes) can merge requests of one bucket.
QUERY_BUCKETS: tuple[int, ...] = (8, 16, 32)
ITEM_BUCKETS: tuple[int, ...] = (16, 32, 64, 128)

#: Upper bounds enforced by the item store and the client, reported in INVALID_ARGUMENT messages.
MAX_CANDIDATES = 1000
MAX_HISTORY = 50

#: Recency weighting of the user vector: the k-th most recent item weighs HISTORY_DECAY**k.
HISTORY_DECAY = 0.9


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
    FUSION_HEAD = "fusion_head"
    ITEM_STORE = "item_store"
    USER_PROFILE = "user_profile"
    COLD_ITEM_ENCODER = "cold_item_encoder"
    VALIDATOR = "validator"
    ENSEMBLE = "ensemble"


class Target(str, Enum):
    """Where a rendered repository runs."""

    TENSORRT = "tensorrt"  # NGC image: TensorRT FP16 plans on GPU
    ONNXRUNTIME = "onnxruntime"  # NGC image: onnxruntime backend, CPU or GPU
    EMBEDDED = "embedded"  # nvidia-pytriton's tritonserver: python backend only


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
    """

    max_batch_size: int
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelDecl:
    """A composing model: its name, role and interface, the same on every target."""

    name: str
    role: Role
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    batching: Batching
    instance_count: int = 1
    #: Free-form parameters rendered into config.pbtxt `parameters` (e.g. which tokenizer to load).
    parameters: tuple[tuple[str, str], ...] = ()
    #: Let Triton's response cache answer a repeated request (same input tensors) without running
    #: the model. Only for deterministic models whose inputs recur; it takes effect on a server
    #: started with a cache (`aisle serve --response-cache-mb N`, tritonserver `--cache-config`).
    response_cache: bool = False


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


@dataclass(frozen=True)
class Schema:
    """All declarations for one checkpoint (the embedding dim comes from its manifest)."""

    embedding_dim: int
    models: tuple[ModelDecl, ...]
    ensembles: tuple[EnsembleDecl, ...]
    query_buckets: tuple[int, ...] = QUERY_BUCKETS
    item_buckets: tuple[int, ...] = ITEM_BUCKETS
    max_candidates: int = MAX_CANDIDATES
    max_history: int = MAX_HISTORY
    history_decay: float = HISTORY_DECAY
    item_features: tuple[str, ...] = field(default=ITEM_FEATURES)

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

EMBED_QUERY = "embed_query"
EMBED_ITEM = "embed_item"
RANK = "rank"
RANK_COLD = "rank_cold"

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

#: Largest batch of texts one embed request (and one encoder execution) carries.
ENCODER_MAX_BATCH = 64
#: Largest batch of rank requests merged into one head execution.
RANK_MAX_BATCH = 8


def _pairs(**mapping: str) -> tuple[tuple[str, str], ...]:
    return tuple(mapping.items())


def validated(tensor: str) -> str:
    """Name of a validator's output carrying `tensor` once checked (e.g. VALID_CANDIDATE_IDS)."""
    return f"VALID_{tensor}"


def build_schema(
    embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    *,
    query_buckets: tuple[int, ...] = QUERY_BUCKETS,
    item_buckets: tuple[int, ...] = ITEM_BUCKETS,
    max_candidates: int = MAX_CANDIDATES,
    max_history: int = MAX_HISTORY,
    history_decay: float = HISTORY_DECAY,
) -> Schema:
    """Declare every served model and ensemble for one embedding size."""
    d = embedding_dim
    f = NUM_ITEM_FEATURES
    ids = TensorDecl(INPUT_IDS, TOKEN_DTYPE, (-1,))
    mask = TensorDecl(ATTENTION_MASK, TOKEN_DTYPE, (-1,))
    embedding = TensorDecl(EMBEDDING, DType.FP32, (d,))
    # Queue delays, from `measure.queue_delay_sweep` on the small shop (2 CPU cores, embedded target):
    # the python steps (tokenizers, item store, validator, profile, head) gain nothing from waiting
    # for company: rank at delay 0 vs 500 us, alone p50 9.6 vs 13.7 ms, at concurrency 8 179 vs 156
    # req/s. Under load they still batch what queued while they ran. The encoders do gain: embed_query
    # at concurrency 8 took 186 req/s at delay 0 and 204-218 at 500-2000 us (alone p50 8.3 -> 9.0 ms
    # at 1000 us).
    text_batching = Batching(ENCODER_MAX_BATCH, max_queue_delay_us=0)
    encoder_batching = Batching(ENCODER_MAX_BATCH, max_queue_delay_us=1000)
    rank_batching = Batching(RANK_MAX_BATCH, max_queue_delay_us=0)

    def tokenizer(name: str, buckets: tuple[int, ...]) -> ModelDecl:
        return ModelDecl(
            name=name,
            role=Role.TOKENIZER,
            inputs=(TensorDecl(TEXT, DType.BYTES, (1,)),),
            outputs=(ids, mask),
            batching=text_batching,
            parameters=(("buckets", ",".join(map(str, buckets))),),
        )

    def encoder(name: str, *, response_cache: bool = False) -> ModelDecl:
        return ModelDecl(name, Role.ENCODER, (ids, mask), (embedding,), encoder_batching, response_cache=response_cache)

    query_in = TensorDecl(QUERY, DType.BYTES, (1,))
    item_embeddings = TensorDecl(ITEM_EMBEDDINGS, DType.FP32, (-1, d))
    item_features = TensorDecl(ITEM_FEATURES_TENSOR, DType.FP32, (-1, f))
    user_embedding = TensorDecl(USER_EMBEDDING, DType.FP32, (d,))
    history = TensorDecl(USER_HISTORY_IDS, DType.INT64, (-1,))
    # rank's first step: checks the whole request (QUERY passes on as VALID_QUERY), looks up the
    # candidates and builds the user vector; one python hop where three would read one catalog.
    item_store = ModelDecl(
        ITEM_STORE,
        Role.ITEM_STORE,
        (query_in, TensorDecl(CANDIDATE_IDS, DType.INT64, (-1,)), history),
        (TensorDecl(validated(QUERY), DType.BYTES, (1,)), item_embeddings, item_features, user_embedding),
        rank_batching,
    )
    models: tuple[ModelDecl, ...] = (
        tokenizer(QUERY_TOKENIZER, query_buckets),
        tokenizer(ITEM_TOKENIZER, item_buckets),
        # Shoppers repeat head queries ("running shoes"): their token ids recur, so the query
        # encoder's responses are worth caching. Item texts rarely repeat in one request's shape.
        encoder(QUERY_ENCODER, response_cache=True),
        encoder(ITEM_ENCODER),
        item_store,
        ModelDecl(USER_PROFILE, Role.USER_PROFILE, (history,), (user_embedding,), rank_batching),
        # Takes the features too (passed through) so it can check they match the texts one to one
        # and name CANDIDATE_FEATURES when they do not, on every target.
        ModelDecl(
            COLD_ITEM_ENCODER,
            Role.COLD_ITEM_ENCODER,
            (TensorDecl(CANDIDATE_TEXTS, DType.BYTES, (-1,)), TensorDecl(CANDIDATE_FEATURES, DType.FP32, (-1, f))),
            (item_embeddings, item_features),
            Batching(RANK_MAX_BATCH),
        ),
        ModelDecl(
            FUSION_HEAD,
            Role.FUSION_HEAD,
            (
                TensorDecl(QUERY_EMBEDDING, DType.FP32, (d,)),
                user_embedding,
                item_embeddings,
                item_features,
            ),
            (TensorDecl(SCORES, DType.FP32, (-1,)),),
            rank_batching,
        ),
    )

    def embed_steps(tokenizer_name: str, encoder_name: str, text: str) -> tuple[Step, ...]:
        return (
            Step(tokenizer_name, _pairs(TEXT=text), _pairs(INPUT_IDS="ids", ATTENTION_MASK="mask")),
            Step(encoder_name, _pairs(INPUT_IDS="ids", ATTENTION_MASK="mask"), _pairs(EMBEDDING=EMBEDDING)),
        )

    # Multi-branch ensembles check every input in one first step, before any branch starts: when a
    # composing model fails while sibling steps are in flight, tritonserver 2.51 never releases the
    # ensemble request (leaked in-flight count, memory, and a stalled shutdown drain). rank's first
    # step is the item store; rank_cold's is a validator that passes every input on once checked.
    def validator(name: str, inputs: tuple[TensorDecl, ...]) -> ModelDecl:
        outputs = tuple(TensorDecl(validated(t.name), t.dtype, t.dims) for t in inputs)
        return ModelDecl(name, Role.VALIDATOR, inputs, outputs, rank_batching)

    def validation_step(decl: ModelDecl) -> Step:
        return Step(
            decl.name,
            tuple((t.name, t.name) for t in decl.inputs),
            tuple((validated(t.name), t.name.lower()) for t in decl.inputs),
        )

    query_steps = embed_steps(QUERY_TOKENIZER, QUERY_ENCODER, QUERY)
    query_to_embedding = (
        Step(QUERY_TOKENIZER, _pairs(TEXT=QUERY.lower()), query_steps[0].output_map),
        Step(QUERY_ENCODER, query_steps[1].input_map, _pairs(EMBEDDING="query_embedding")),
    )
    user_step = Step(USER_PROFILE, _pairs(USER_HISTORY_IDS=USER_HISTORY_IDS.lower()), _pairs(USER_EMBEDDING="user"))
    head_step = Step(
        FUSION_HEAD,
        _pairs(
            QUERY_EMBEDDING="query_embedding",
            USER_EMBEDDING="user",
            ITEM_EMBEDDINGS="item_embeddings",
            ITEM_FEATURES="item_features",
        ),
        _pairs(SCORES=SCORES),
    )
    scores = TensorDecl(SCORES, DType.FP32, (-1,))
    rank_cold_validator = validator(
        RANK_COLD_VALIDATOR,
        (
            query_in,
            TensorDecl(CANDIDATE_TEXTS, DType.BYTES, (-1,)),
            TensorDecl(CANDIDATE_FEATURES, DType.FP32, (-1, f)),
            history,
        ),
    )
    models += (rank_cold_validator,)
    ensembles = (
        EnsembleDecl(
            EMBED_QUERY,
            (query_in,),
            (embedding,),
            ENCODER_MAX_BATCH,
            query_steps,
            "Search query text -> L2-normalised query-tower embedding (empty text -> zero vector).",
        ),
        EnsembleDecl(
            EMBED_ITEM,
            (TensorDecl(ITEM_TEXT, DType.BYTES, (1,)),),
            (embedding,),
            ENCODER_MAX_BATCH,
            embed_steps(ITEM_TOKENIZER, ITEM_ENCODER, ITEM_TEXT),
            "Item text -> L2-normalised item-tower embedding.",
        ),
        EnsembleDecl(
            RANK,
            item_store.inputs,
            (scores,),
            RANK_MAX_BATCH,
            (
                Step(
                    ITEM_STORE,
                    tuple((t.name, t.name) for t in item_store.inputs),
                    (
                        (validated(QUERY), QUERY.lower()),
                        *_pairs(
                            ITEM_EMBEDDINGS="item_embeddings", ITEM_FEATURES="item_features", USER_EMBEDDING="user"
                        ),
                    ),
                ),
            )
            + query_to_embedding
            + (head_step,),
            "Score catalog candidates for a query (may be empty) and a user history (may be empty).",
        ),
        EnsembleDecl(
            RANK_COLD,
            rank_cold_validator.inputs,
            (scores,),
            RANK_MAX_BATCH,
            (validation_step(rank_cold_validator),)
            + query_to_embedding
            + (
                Step(
                    COLD_ITEM_ENCODER,
                    _pairs(CANDIDATE_TEXTS=CANDIDATE_TEXTS.lower(), CANDIDATE_FEATURES=CANDIDATE_FEATURES.lower()),
                    _pairs(ITEM_EMBEDDINGS="item_embeddings", ITEM_FEATURES="item_features"),
                ),
                user_step,
                head_step,
            ),
            "Cold start: score candidates given as item texts (+ raw features, NaN = unknown), "
            "encoded by the item tower on the fly.",
        ),
    )
    return Schema(
        embedding_dim=d,
        models=models,
        ensembles=ensembles,
        query_buckets=query_buckets,
        item_buckets=item_buckets,
        max_candidates=max_candidates,
        max_history=max_history,
        history_decay=history_decay,
    )
