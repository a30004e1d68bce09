"""The real embedded tritonserver over gRPC and HTTP: served outputs equal the PyTorch checkpoint,
and every bad input is INVALID_ARGUMENT naming the field while the server stays ready."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    EMBED_ITEM,
    EMBED_QUERY,
    EMBEDDING,
    ITEM_TEXT,
    MAX_HISTORY,
    QUERY,
    RANK,
    RANK_COLD,
    SCORES,
    USER_HISTORY_IDS,
    ServingLimits,
    build_schema,
)

DEFAULT_LIMITS = ServingLimits()

pytestmark = pytest.mark.server

EMBED_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-4
EDGE_TEXTS = [
    "",
    "   \t ",
    "running shoes 🏃‍♀️👟🔥",
    "跑步鞋 男款 轻便",
    "waterproof trail running shoes with extra cushioning " * 30,
]
WIRE_TYPES = {np.dtype(object): "BYTES", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def grpc_infer(server, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    wire = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), WIRE_TYPES[array.dtype])
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    return client.infer(model, wire).as_numpy(output)


def http_infer(server, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    """KServe v2 JSON over a plain HTTP POST (what any language can send)."""
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": WIRE_TYPES[array.dtype],
                "data": [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()],
            }
            for name, array in inputs.items()
        ]
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    (tensor,) = [t for t in answer["outputs"] if t["name"] == output]
    return np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def texts(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object).reshape(-1, 1)


class Reference:
    """The PyTorch checkpoint computing what the server should answer."""

    def __init__(self, checkpoint_dir: Path, data_dir: Path) -> None:
        from aisle.data.format import load_dataset
        from aisle.modeling.loading import load_checkpoint
        from aisle.tokenization import Bucketing, load_tokenizer

        self.checkpoint = load_checkpoint(checkpoint_dir)
        manifest = self.checkpoint.manifest
        self.schema = manifest.schema()
        self.query_tokenizer = load_tokenizer(self.checkpoint.query_dir, manifest.query_max_length)
        self.item_tokenizer = load_tokenizer(self.checkpoint.item_dir, manifest.item_max_length)
        self.query_bucketing = Bucketing(manifest.limits.query_buckets)
        self.item_bucketing = Bucketing(manifest.limits.item_buckets)
        self.dataset = load_dataset(data_dir)
        self.items = self.dataset.items
        self.item_embeddings = self.embed_items([item.text() for item in self.items])
        self.row = {item.item_id: row for row, item in enumerate(self.items)}

    def embed_queries(self, values: list[str]) -> np.ndarray:
        from aisle.modeling.loading import embed_texts

        return embed_texts(self.checkpoint.query_tower, self.query_tokenizer, values, self.query_bucketing).numpy()

    def embed_items(self, values: list[str]) -> np.ndarray:
        from aisle.modeling.loading import embed_texts

        return embed_texts(self.checkpoint.item_tower, self.item_tokenizer, values, self.item_bucketing).numpy()

    def user(self, history: list[int]) -> np.ndarray:
        from aisle.modeling.user import user_vector

        rows = [self.row[i] for i in history]
        return user_vector(self.item_embeddings[rows], self.schema.limits.history_decay)

    def scores(self, query: str, items: np.ndarray, features: np.ndarray, history: list[int]) -> np.ndarray:
        import torch

        q = torch.from_numpy(self.embed_queries([query]))
        u = torch.from_numpy(self.user(history))[None]
        items_t, features_t = torch.from_numpy(items)[None], torch.from_numpy(features)[None]
        with torch.inference_mode():
            return self.checkpoint.head(q, u, items_t, features_t)[0].numpy()

    def rank_scores(self, query: str, candidates: list[int], history: list[int]) -> np.ndarray:
        rows = [self.row[i] for i in candidates]
        features = np.array([self.items[r].features() for r in rows], np.float32)
        return self.scores(query, self.item_embeddings[rows], features, history)


@pytest.fixture(scope="module")
def reference(serving_checkpoint: Path, tiny_data: Path) -> Reference:
    return Reference(serving_checkpoint, tiny_data)


def rank_inputs(query: str, candidates: list[int], history: list[int]) -> dict[str, np.ndarray]:
    return {
        QUERY: texts([query]),
        CANDIDATE_IDS: np.array([candidates], np.int64),
        USER_HISTORY_IDS: np.array([history], np.int64).reshape(1, len(history)),
    }


def test_every_model_and_ensemble_is_ready(triton_server) -> None:
    from aisle.export.repo_format import RepoManifest

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    schema = RepoManifest.load(triton_server.config.repo).schema()
    assert {e.name for e in schema.ensembles} == {e.name for e in build_schema().ensembles}
    for name in [m.name for m in schema.models] + [e.name for e in schema.ensembles]:
        assert client.is_model_ready(name), name


def test_embed_query_equals_the_pytorch_query_tower(triton_server, reference: Reference) -> None:
    queries = [q.text for q in reference.dataset.queries[:20]] + EDGE_TEXTS
    served = grpc_infer(triton_server, EMBED_QUERY, {QUERY: texts(queries)}, EMBEDDING)
    expected = reference.embed_queries(queries)
    assert np.abs(served - expected).max() <= EMBED_TOLERANCE
    blank = len(queries) - len(EDGE_TEXTS)
    np.testing.assert_array_equal(served[blank : blank + 2], 0.0)


@pytest.mark.parametrize("text", EDGE_TEXTS, ids=["empty", "whitespace", "emoji", "cjk", "very-long"])
def test_embed_query_handles_each_edge_text_alone(triton_server, reference: Reference, text: str) -> None:
    served = grpc_infer(triton_server, EMBED_QUERY, {QUERY: texts([text])}, EMBEDDING)
    assert np.abs(served - reference.embed_queries([text])).max() <= EMBED_TOLERANCE


def test_empty_query_embeds_to_the_zero_vector(triton_server) -> None:
    served = grpc_infer(triton_server, EMBED_QUERY, {QUERY: texts(["", "  "])}, EMBEDDING)
    np.testing.assert_array_equal(served, 0.0)


def test_embed_item_equals_the_pytorch_item_tower(triton_server, reference: Reference) -> None:
    values = [item.text() for item in reference.items[:64]]
    served = grpc_infer(triton_server, EMBED_ITEM, {ITEM_TEXT: texts(values)}, EMBEDDING)
    assert np.abs(served - reference.item_embeddings[:64]).max() <= EMBED_TOLERANCE


def test_embed_query_over_http_json_equals_the_pytorch_query_tower(triton_server, reference: Reference) -> None:
    queries = ["red running shoes", "跑步鞋", ""]
    served = http_infer(triton_server, EMBED_QUERY, {QUERY: texts(queries)}, EMBEDDING)
    assert np.abs(served - reference.embed_queries(queries)).max() <= EMBED_TOLERANCE


def test_rank_scores_equal_the_pytorch_fusion_head(triton_server, reference: Reference) -> None:
    ids = [item.item_id for item in reference.items]
    candidates, history = ids[:100], ids[150:160]
    served = grpc_infer(triton_server, RANK, rank_inputs("trail running shoes", candidates, history), SCORES)
    assert served.shape == (1, 100)
    expected = reference.rank_scores("trail running shoes", candidates, history)
    assert np.abs(served[0] - expected).max() <= SCORE_TOLERANCE


@pytest.mark.parametrize(
    ("query", "history_size"), [("", 5), ("wireless headphones", 0), ("", 0)], ids=["no-query", "no-history", "neither"]
)
def test_rank_handles_empty_query_and_empty_history(
    triton_server, reference: Reference, query: str, history_size: int
) -> None:
    ids = [item.item_id for item in reference.items]
    candidates, history = ids[10:40], ids[200 : 200 + history_size]
    served = grpc_infer(triton_server, RANK, rank_inputs(query, candidates, history), SCORES)
    assert np.abs(served[0] - reference.rank_scores(query, candidates, history)).max() <= SCORE_TOLERANCE


def test_rank_over_http_json_equals_the_pytorch_fusion_head(triton_server, reference: Reference) -> None:
    ids = [item.item_id for item in reference.items]
    inputs = rank_inputs("leather boots", ids[:20], ids[30:33])
    served = http_infer(triton_server, RANK, inputs, SCORES)
    assert np.abs(served[0] - reference.rank_scores("leather boots", ids[:20], ids[30:33])).max() <= SCORE_TOLERANCE


def test_rank_request_of_several_users_equals_each_user_alone(triton_server) -> None:
    inputs = {
        QUERY: texts(["boots", ""]),
        CANDIDATE_IDS: np.array([[1, 2, 3], [4, 5, 6]], np.int64),
        USER_HISTORY_IDS: np.array([[7, 8], [9, 10]], np.int64),
    }
    together = grpc_infer(triton_server, RANK, inputs, SCORES)
    for row in range(2):
        alone = grpc_infer(triton_server, RANK, {k: v[row : row + 1] for k, v in inputs.items()}, SCORES)
        np.testing.assert_allclose(together[row], alone[0], atol=1e-6)


def test_rank_cold_scores_item_texts_as_rank_scores_their_ids(triton_server, reference: Reference) -> None:
    chosen = reference.items[40:70]
    history = [reference.items[5].item_id, reference.items[6].item_id]
    cold = {
        QUERY: texts(["summer dress"]),
        CANDIDATE_TEXTS: np.array([[item.text().encode() for item in chosen]], dtype=object),
        CANDIDATE_FEATURES: np.array([[item.features() for item in chosen]], np.float32),
        USER_HISTORY_IDS: np.array([history], np.int64),
    }
    served_cold = grpc_infer(triton_server, RANK_COLD, cold, SCORES)
    served_warm = grpc_infer(
        triton_server, RANK, rank_inputs("summer dress", [i.item_id for i in chosen], history), SCORES
    )
    expected = reference.scores(
        "summer dress", reference.embed_items([i.text() for i in chosen]), cold[CANDIDATE_FEATURES][0], history
    )
    assert np.abs(served_cold[0] - expected).max() <= SCORE_TOLERANCE
    assert np.abs(served_cold - served_warm).max() <= SCORE_TOLERANCE


def test_rank_cold_imputes_unknown_features_given_as_nan(triton_server, reference: Reference) -> None:
    features = np.full((1, 2, 4), np.nan, np.float32)
    cold = {
        QUERY: texts(["lamp"]),
        CANDIDATE_TEXTS: np.array([[b"brass desk lamp", b"new listing"]], dtype=object),
        CANDIDATE_FEATURES: features,
        USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
    }
    served = grpc_infer(triton_server, RANK_COLD, cold, SCORES)
    expected = reference.scores("lamp", reference.embed_items(["brass desk lamp", "new listing"]), features[0], [])
    assert np.isfinite(served).all()
    assert np.abs(served[0] - expected).max() <= SCORE_TOLERANCE


def bad_requests() -> list:
    """(ensemble, inputs, field, value) of each invalid request the server must reject."""
    long_history = list(range(MAX_HISTORY + 1))
    return [
        pytest.param(EMBED_QUERY, {QUERY: np.array([[b"caf\xe9"]], object)}, QUERY, "UTF-8", id="utf8-embed-query"),
        pytest.param(
            RANK,
            {**rank_inputs("", [1], []), QUERY: np.array([[b"\xff\xfe"]], object)},
            QUERY,
            "UTF-8",
            id="utf8-rank-query",
        ),
        pytest.param(RANK, rank_inputs("q", [1, 987654], []), CANDIDATE_IDS, "987654", id="unknown-candidate"),
        pytest.param(RANK, rank_inputs("q", [1, -4], []), CANDIDATE_IDS, "-4", id="negative-candidate"),
        pytest.param(
            RANK,
            rank_inputs("q", [1] * (DEFAULT_LIMITS.max_candidates + 1), []),
            CANDIDATE_IDS,
            f"max_candidates={DEFAULT_LIMITS.max_candidates}",
            id="too-many-candidates",
        ),
        pytest.param(RANK, rank_inputs("q", [1], [3, 123456]), USER_HISTORY_IDS, "123456", id="unknown-history"),
        pytest.param(
            RANK, rank_inputs("q", [1], long_history), USER_HISTORY_IDS, f"max_history={MAX_HISTORY}", id="long-history"
        ),
        pytest.param(
            RANK_COLD,
            {
                QUERY: texts(["q"]),
                CANDIDATE_TEXTS: np.array([[b"a", b"b"]], object),
                CANDIDATE_FEATURES: np.ones((1, 2, 5), np.float32),
                USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
            },
            CANDIDATE_FEATURES,
            "5",
            id="feature-width",
        ),
        pytest.param(
            RANK_COLD,
            {
                QUERY: texts(["q"]),
                CANDIDATE_TEXTS: np.array([[b"a", b"b"]], object),
                CANDIDATE_FEATURES: np.ones((1, 3, 4), np.float32),
                USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
            },
            CANDIDATE_FEATURES,
            "[1, 3, 4]",
            id="feature-count",
        ),
        pytest.param(
            RANK_COLD,
            {
                QUERY: texts(["q"]),
                CANDIDATE_TEXTS: np.array([[b"ok", b"\xc3("]], object),
                CANDIDATE_FEATURES: np.ones((1, 2, 4), np.float32),
                USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
            },
            CANDIDATE_TEXTS,
            "UTF-8",
            id="utf8-candidate-text",
        ),
    ]


@pytest.mark.parametrize(("model", "inputs", "field", "value"), bad_requests())
def test_bad_input_is_invalid_argument_naming_the_field_and_server_stays_ready(
    triton_server, model: str, inputs: dict, field: str, value: str
) -> None:
    output = EMBEDDING if model == EMBED_QUERY else SCORES
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(triton_server, model, inputs, output)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert field in caught.value.message() and value in caught.value.message(), caught.value.message()
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    assert client.is_server_ready() and client.is_model_ready(model)


@pytest.mark.parametrize(
    ("inputs", "field", "value"),
    [
        (rank_inputs("q", [1, 987654], []), CANDIDATE_IDS, "987654"),
        (rank_inputs("q", [1], [-2]), USER_HISTORY_IDS, "-2"),
    ],
    ids=["unknown-candidate", "negative-history"],
)
def test_bad_input_over_http_is_400_naming_the_field(triton_server, inputs: dict, field: str, value: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        http_infer(triton_server, RANK, inputs, SCORES)
    assert caught.value.code == 400
    message = json.loads(caught.value.read())["error"]
    assert field in message and value in message, message
    with urllib.request.urlopen(f"http://{triton_server.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
