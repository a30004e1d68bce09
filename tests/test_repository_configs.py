"""Rendered configs, for every target (even those that cannot run here), agree with the schema."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor

from aisle.errors import ExportError
from aisle.export.repo_format import GRAPH_FILE, MODEL_VERSION, TOKENIZER_FILE, Catalog, RepoManifest
from aisle.export.repository import write_models
from aisle.export.targets import RenderTarget, target_named
from aisle.export.targets.tensorrt import START_SCRIPT, write_start_script
from aisle.export.triton_config import (
    CONFIG_FILE,
    GRAPH_ROLES,
    WARMUP_DIR,
    WARMUP_VALUES,
    model_config,
    read_config,
    render_configs,
    write_config,
)
from aisle.schema import (
    CATALOG_SEARCH,
    INDEX_DEVICE_PARAMETER,
    ITEM_ENCODER,
    NUM_ITEM_FEATURES,
    QUERY,
    QUERY_EMBEDDING,
    QUERY_ENCODER,
    SEARCH,
    DType,
    FoldedEncoder,
    Role,
    Schema,
    ServingLimits,
    TensorDecl,
    build_schema,
    fold_for_python_graphs,
    tokenizer_buckets,
)

SCHEMA = build_schema(384)
#: The declared schema and the one targets whose graphs run in python models serve.
SCHEMAS = [SCHEMA, fold_for_python_graphs(SCHEMA)]
SCHEMA_IDS = ["declared", "folded-for-python-graphs"]
ALL_TARGETS = [
    target_named("tensorrt"),
    target_named("onnxruntime"),
    target_named("onnxruntime", gpu=True, trt_accelerator=True),
    target_named("embedded"),
]
TARGET_IDS = ["tensorrt", "onnxruntime-cpu", "onnxruntime-gpu-trt", "embedded"]


def written_and_parsed(target: RenderTarget, tmp_path: Path) -> dict[str, pb.ModelConfig]:
    """Every config written as config.pbtxt and parsed back by protobuf's text_format."""
    parsed = {}
    for name, config in render_configs(target.served_schema(SCHEMA), target).items():
        (tmp_path / name).mkdir()
        write_config(config, tmp_path / name)
        parsed[name] = read_config(tmp_path / name)
    return parsed


def assert_tensors(actual, declared: tuple[TensorDecl, ...]) -> None:
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in actual] == [
        (t.name, t.dtype.config_name, list(t.dims)) for t in declared
    ]


@pytest.mark.parametrize("target", ALL_TARGETS, ids=TARGET_IDS)
def test_every_model_config_parses_and_matches_its_declaration(target: RenderTarget, tmp_path: Path) -> None:
    configs = written_and_parsed(target, tmp_path)
    schema = target.served_schema(SCHEMA)
    assert set(configs) == {m.name for m in schema.models} | {e.name for e in schema.ensembles}
    for decl in schema.models:
        config = configs[decl.name]
        assert config.name == decl.name
        assert config.max_batch_size == decl.batching.max_batch_size
        assert_tensors(config.input, decl.inputs)
        assert_tensors(config.output, decl.outputs)
        if decl.batching.max_queue_delay_us is None:
            assert not config.HasField("dynamic_batching")
        else:
            assert config.HasField("dynamic_batching"), decl.name  # a 0 us delay is still a batcher
            assert config.dynamic_batching.max_queue_delay_microseconds == decl.batching.max_queue_delay_us
        threads_key = target.runtime(decl.role).threads_parameter
        threads = {threads_key: str(decl.intra_op_threads)} if decl.intra_op_threads and threads_key else {}
        index = {INDEX_DEVICE_PARAMETER: target.index_device} if decl.role is Role.CATALOG_SEARCH else {}
        assert dict(decl.parameters) | threads | index == {k: v.string_value for k, v in config.parameters.items()}
        assert config.response_cache.enable == decl.response_cache, decl.name
        ragged = [t.name for t in config.input if t.allow_ragged_batch]
        assert ragged == [t.name for t in decl.inputs if decl.batching.ragged and -1 in t.dims], decl.name


def test_the_models_that_take_requests_one_by_one_merge_requests_of_any_history_length() -> None:
    """Only python logic that reads each request on its own is rendered ragged, and a ragged model on
    a graph backend (which would concatenate the requests) is refused."""
    ragged = {decl.name for decl in SCHEMA.models if decl.batching.ragged}
    assert ragged == {"catalog_search", "item_store", "user_profile", "rank_cold_validator"}
    head = SCHEMA.model("fusion_head")
    assert not head.batching.ragged
    with pytest.raises(ValueError, match="fusion_head: ragged batching needs a python model, onnxruntime runs it"):
        model_config(SCHEMA, replace(head, batching=replace(head.batching, ragged=True)), target_named("onnxruntime"))


@pytest.mark.parametrize("target", ALL_TARGETS, ids=TARGET_IDS)
def test_every_ensemble_config_wires_the_declared_steps(target: RenderTarget, tmp_path: Path) -> None:
    configs = written_and_parsed(target, tmp_path)
    for decl in target.served_schema(SCHEMA).ensembles:
        config = configs[decl.name]
        assert config.platform == "ensemble"
        assert config.max_batch_size == decl.max_batch_size
        assert_tensors(config.input, decl.inputs)
        assert_tensors(config.output, decl.outputs)
        steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in config.ensemble_scheduling.step]
        assert steps == [(s.model, dict(s.input_map), dict(s.output_map)) for s in decl.steps]


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_ensemble_wiring_is_complete_and_type_consistent(schema: Schema) -> None:
    """Every step input is an ensemble input or an earlier step's output, with the same dtype and dims."""
    for ensemble in schema.ensembles:
        available = {t.name: t for t in ensemble.inputs}
        for step in ensemble.steps:
            decl = schema.model(step.model)
            assert ensemble.max_batch_size <= decl.batching.max_batch_size, (ensemble.name, step.model)
            for model_tensor, ensemble_tensor in step.input_map:
                declared = next(t for t in decl.inputs if t.name == model_tensor)
                assert ensemble_tensor in available, (ensemble.name, step.model, ensemble_tensor)
                assert (available[ensemble_tensor].dtype, available[ensemble_tensor].dims) == (
                    declared.dtype,
                    declared.dims,
                ), (ensemble.name, step.model, model_tensor)
            for model_tensor, ensemble_tensor in step.output_map:
                declared = next(t for t in decl.outputs if t.name == model_tensor)
                available[ensemble_tensor] = TensorDecl(ensemble_tensor, declared.dtype, declared.dims)
        for output in ensemble.outputs:
            assert (available[output.name].dtype, available[output.name].dims) == (output.dtype, output.dims)


def step_ancestors(steps: tuple) -> list[set[int]]:
    """For each step, the steps it waits for (directly or not) through the tensors it reads."""
    produced_by = {tensor: i for i, step in enumerate(steps) for _, tensor in step.output_map}
    ancestors: list[set[int]] = []
    for step in steps:  # declared in dependency order
        direct = {produced_by[t] for _, t in step.input_map if t in produced_by}
        ancestors.append(direct.union(*(ancestors[d] for d in direct)))
    return ancestors


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_no_step_that_reads_request_inputs_runs_beside_another_step(schema: Schema) -> None:
    """tritonserver 2.51 leaks an ensemble request that fails while sibling steps run, so a step that
    sees raw request inputs (and may reject them) must never run concurrently with another step:
    every other step comes strictly before or after it."""
    for ensemble in schema.ensembles:
        public = {t.name for t in ensemble.inputs}
        ancestors = step_ancestors(ensemble.steps)
        for i, step in enumerate(ensemble.steps):
            if not public & {tensor for _, tensor in step.input_map}:
                continue
            for j in range(len(ensemble.steps)):
                assert j == i or j in ancestors[i] or i in ancestors[j], (ensemble.name, step.model, j)


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_rank_and_rank_cold_check_every_input_in_their_first_step(schema: Schema) -> None:
    for name in ("rank", "rank_cold"):
        ensemble = schema.ensemble(name)
        first, *rest = ensemble.steps
        assert {tensor for _, tensor in first.input_map} == {t.name for t in ensemble.inputs}
        assert schema.model(first.model).role in {Role.ITEM_STORE, Role.VALIDATOR}


@pytest.mark.parametrize(
    ("target", "graph_platform", "graph_kind"),
    [
        (target_named("tensorrt"), "tensorrt_plan", pb.ModelInstanceGroup.KIND_GPU),
        (target_named("onnxruntime"), "onnxruntime_onnx", pb.ModelInstanceGroup.KIND_CPU),
        (target_named("onnxruntime", gpu=True), "onnxruntime_onnx", pb.ModelInstanceGroup.KIND_GPU),
        (target_named("embedded"), "", pb.ModelInstanceGroup.KIND_CPU),
    ],
    ids=["tensorrt", "onnxruntime-cpu", "onnxruntime-gpu", "embedded"],
)
def test_graph_models_run_on_the_target_backend_and_the_rest_in_python(
    target: RenderTarget, graph_platform: str, graph_kind: int
) -> None:
    schema = target.served_schema(SCHEMA)
    configs = render_configs(schema, target)
    for decl in schema.models:
        config = configs[decl.name]
        if decl.role in GRAPH_ROLES and graph_platform:
            assert (config.platform, config.backend) == (graph_platform, "")
            assert config.instance_group[0].kind == graph_kind
        else:
            assert (config.platform, config.backend) == ("", "python")
            assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU


def test_only_the_onnxruntime_gpu_target_asks_for_the_tensorrt_execution_accelerator() -> None:
    for target in ALL_TARGETS:
        for config in render_configs(SCHEMA, target).values():
            accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
            if getattr(target, "trt_accelerator", False) and config.platform == "onnxruntime_onnx":
                assert [(a.name, a.parameters["precision_mode"]) for a in accelerators] == [("tensorrt", "FP16")]
            else:
                assert not accelerators


@pytest.mark.parametrize("target", ALL_TARGETS, ids=TARGET_IDS)
def test_warmup_covers_every_bucket_and_a_rank_sized_head_request_at_max_batch_on_gpu(target: RenderTarget) -> None:
    schema = target.served_schema(SCHEMA)
    configs = render_configs(schema, target)
    batches = (1, 64) if target.graphs_on_gpu else (1,)
    for name, buckets in ((QUERY_ENCODER, SCHEMA.limits.query_buckets), (ITEM_ENCODER, SCHEMA.limits.item_buckets)):
        if schema.model(name).role is Role.TEXT_ENCODER:
            warmed = {(w.batch_size, w.inputs["TEXT"].input_data_file) for w in configs[name].model_warmup}
            assert warmed == {(1, f"bucket{bucket}") for bucket in buckets}
            continue
        warmed = {(w.batch_size, tuple(w.inputs["INPUT_IDS"].dims)) for w in configs[name].model_warmup}
        assert warmed == {(batch, (bucket,)) for bucket in buckets for batch in batches}
    head = configs["fusion_head"].model_warmup
    assert {w.batch_size for w in head} == ({1, 8} if target.graphs_on_gpu else {1})
    assert all(list(w.inputs["ITEM_FEATURES"].dims) == [100, 4] for w in head)
    for decl in schema.models:
        if decl.role in GRAPH_ROLES | {Role.TEXT_ENCODER}:
            continue
        # Every other (python) model: one empty request over all its inputs, zero or WARMUP_VALUES.
        (warm,) = configs[decl.name].model_warmup
        assert warm.batch_size == 1 and set(warm.inputs) == {t.name for t in decl.inputs}, decl.name
        for tensor in decl.inputs:
            sample = warm.inputs[tensor.name]
            assert list(sample.dims) == [0 if d == -1 else d for d in tensor.dims], (decl.name, tensor.name)
            assert sample.input_data_file == (tensor.name if tensor.name in WARMUP_VALUES else "")
            assert sample.zero_data == (tensor.name not in WARMUP_VALUES)
    assert {"TOP_K", "PRICE_RANGE"} <= {i for i in configs[CATALOG_SEARCH].model_warmup[0].inputs}


def test_encoder_buckets_follow_the_tokenizer_feeding_the_encoder() -> None:
    schema = build_schema(384, ServingLimits(query_buckets=(4, 12), item_buckets=(24, 48)))
    assert schema.encoder_buckets(QUERY_ENCODER) == (4, 12)
    assert schema.encoder_buckets(ITEM_ENCODER) == (24, 48)


def test_read_config_names_the_file_of_an_invalid_config(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text('name: "x"\nmax_batch_sizes: 3\n')
    with pytest.raises(ExportError, match="config.pbtxt"):
        read_config(tmp_path)


def synthetic_catalog(schema: Schema) -> Catalog:
    rng = np.random.default_rng(0)
    return Catalog.build(
        np.array([5, 3, 9], np.int64),
        rng.standard_normal((3, schema.embedding_dim)).astype(np.float32),
        rng.random((3, NUM_ITEM_FEATURES)).astype(np.float32),
    )


@pytest.mark.parametrize("target", ALL_TARGETS, ids=TARGET_IDS)
def test_written_repository_holds_each_models_files_for_its_target(
    target: RenderTarget, serving_checkpoint: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    from aisle.export.graphs import graph_file
    from aisle.tokenization import load_tokenizer

    schema = target.served_schema(SCHEMA)
    graphs = {m.name: onnx_dir / graph_file(m.name) for m in SCHEMA.models if m.role in GRAPH_ROLES}
    write_models(schema, target, tmp_path, serving_checkpoint, graphs, synthetic_catalog(SCHEMA))
    for decl in schema.models:
        version = tmp_path / decl.name / MODEL_VERSION
        python = decl.role not in GRAPH_ROLES or target.name == "embedded"
        text_encoder = decl.role is Role.TEXT_ENCODER
        assert (version / "model.py").is_file() == python, decl.name
        assert (version / GRAPH_FILE).is_file() == (decl.role in GRAPH_ROLES or text_encoder), decl.name
        assert (version / TOKENIZER_FILE).is_file() == (decl.role is Role.TOKENIZER or text_encoder), decl.name
        assert read_config(tmp_path / decl.name).name == decl.name
        warmup_dir = tmp_path / decl.name / WARMUP_DIR
        if text_encoder:
            warmup = {w.name: w.inputs["TEXT"].input_data_file for w in read_config(tmp_path / decl.name).model_warmup}
            # Each warmup text is a serialized BYTES tensor that fills its bucket exactly.
            tokenizer = load_tokenizer(version, max_length=1024)
            for bucket, file_name in zip(tokenizer_buckets(decl), warmup.values(), strict=True):
                (text,) = deserialize_bytes_tensor((warmup_dir / file_name).read_bytes())
                assert len(tokenizer.encode(text.decode()).ids) == bucket, (decl.name, bucket)
        else:
            # The values of an empty warmup request that may not be zero, as raw arrays of their dtype.
            valued = {t.name: t for t in decl.inputs if t.name in WARMUP_VALUES}
            assert {p.name for p in warmup_dir.glob("*")} == set(valued), decl.name
            for name, tensor in valued.items():
                read = np.frombuffer((warmup_dir / name).read_bytes(), dtype=tensor.dtype.numpy_name)
                np.testing.assert_array_equal(read, WARMUP_VALUES[name])
    for ensemble in schema.ensembles:
        assert (tmp_path / ensemble.name / MODEL_VERSION).is_dir()
        assert read_config(tmp_path / ensemble.name).name == ensemble.name


def test_catalog_is_sorted_by_id_and_survives_a_round_trip(tmp_path: Path) -> None:
    catalog = synthetic_catalog(SCHEMA)
    assert catalog.item_ids.tolist() == [3, 5, 9]
    catalog.save(tmp_path / "catalog")
    loaded = Catalog.load(tmp_path / "catalog")
    np.testing.assert_array_equal(loaded.embeddings, catalog.embeddings)
    np.testing.assert_array_equal(loaded.features, catalog.features)


def test_catalog_rejects_duplicate_item_ids() -> None:
    with pytest.raises(ExportError, match="ascending"):
        Catalog.build(np.array([1, 1]), np.zeros((2, 4)), np.zeros((2, 4)))


@pytest.mark.parametrize("target", ALL_TARGETS, ids=TARGET_IDS)
def test_repo_manifest_rebuilds_the_rendering_schema(target: RenderTarget, tmp_path: Path) -> None:
    limits = ServingLimits(item_buckets=(16, 64), max_history=7)
    RepoManifest(target=target.name, embedding_dim=32, limits=limits).save(tmp_path)
    schema = RepoManifest.load(tmp_path).schema()
    assert schema == target.served_schema(build_schema(32, limits))


def test_the_embedded_target_folds_the_query_tokenizer_into_the_query_encoder_and_that_into_catalog_search() -> None:
    served = {target.name: target.served_schema(SCHEMA) for target in ALL_TARGETS}
    assert served["tensorrt"] == served["onnxruntime"] == SCHEMA
    fused = served["embedded"]
    query_encoder = fused.model(QUERY_ENCODER)
    assert query_encoder.role is Role.TEXT_ENCODER
    assert query_encoder.inputs == SCHEMA.model("query_tokenizer").inputs
    assert query_encoder.outputs == SCHEMA.model(QUERY_ENCODER).outputs
    assert (query_encoder.batching, query_encoder.cpu_instances, query_encoder.response_cache) == (
        SCHEMA.model(QUERY_ENCODER).batching,
        2,
        True,
    )
    assert fused.encoder_buckets(QUERY_ENCODER) == SCHEMA.limits.query_buckets
    assert fused.model(ITEM_ENCODER) == SCHEMA.model(ITEM_ENCODER)
    assert {m.name for m in SCHEMA.models} - {m.name for m in fused.models} == {"query_tokenizer"}
    # search is one step: catalog_search takes the query text and embeds it with the query tower.
    declared_search, catalog_search = SCHEMA.model(CATALOG_SEARCH), fused.model(CATALOG_SEARCH)
    assert catalog_search.inputs == (TensorDecl(QUERY, DType.BYTES, (1,)), *declared_search.inputs[1:])
    assert declared_search.inputs[0].name == QUERY_EMBEDDING and declared_search.folded_encoder is None
    assert catalog_search.folded_encoder == FoldedEncoder(QUERY_ENCODER, QUERY, QUERY_EMBEDDING)
    assert catalog_search.outputs == declared_search.outputs
    (step,) = fused.ensemble(SEARCH).steps
    assert step.model == CATALOG_SEARCH and dict(step.input_map) == {t.name: t.name for t in catalog_search.inputs}
    for declared, ensemble in zip(SCHEMA.ensembles, fused.ensembles, strict=True):
        assert (ensemble.name, ensemble.inputs, ensemble.outputs) == (declared.name, declared.inputs, declared.outputs)
        uses_query_tower = any(step.model == QUERY_ENCODER for step in declared.steps)
        folds_it = ensemble.name == SEARCH
        assert len(ensemble.steps) == len(declared.steps) - uses_query_tower - folds_it, ensemble.name


def test_an_encoder_fold_needs_a_text_encoder_feeding_the_model() -> None:
    """fuse_encoder on a model fed by a graph encoder (tokenizer not folded) is a declaration error."""
    unfused = replace(SCHEMA, models=tuple(replace(m, fuse_tokenizer=False) for m in SCHEMA.models))
    with pytest.raises(ValueError, match="catalog_search declares fuse_encoder but query_encoder feeds it"):
        fold_for_python_graphs(unfused)


def test_repo_manifest_load_names_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="aisle_repo.json"):
        RepoManifest.load(tmp_path)


FAKE_TOOLS = {
    # Stand-ins for the NGC image's binaries, to exercise the script's rebuild-or-keep logic here.
    "nvidia-smi": 'echo "$FAKE_GPU, 9.0"',
    "trtexec": 'echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100500]"\n'
    'for a in "$@"; do case $a in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n'
    'echo "$@" >> "$CALLS"',
    "tritonserver": 'echo "tritonserver $*" >> "$CALLS"',
}


def test_tensorrt_start_script_builds_each_engine_once_per_gpu_then_starts_tritonserver(
    serving_checkpoint: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    import os
    import subprocess

    from aisle.export.graphs import graph_file
    from aisle.export.tensorrt_build import derive_profiles

    repo, bin_dir, calls = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls"
    graphs = {m.name: onnx_dir / graph_file(m.name) for m in SCHEMA.models if m.role in GRAPH_ROLES}
    repo.mkdir()
    write_models(SCHEMA, target_named("tensorrt"), repo, serving_checkpoint, graphs, synthetic_catalog(SCHEMA))
    script = write_start_script(SCHEMA, repo)
    bin_dir.mkdir()
    for name, body in FAKE_TOOLS.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRTEXEC": "trtexec", "CALLS": str(calls)}

    def run(gpu: str, *args: str) -> tuple[list[str], list[str]]:
        """(trtexec builds, tritonserver starts) of one container start on `gpu`."""
        calls.unlink(missing_ok=True)
        command = [str(script), *(args or ("--log-verbose=1",))]
        subprocess.run(command, env={**env, "FAKE_GPU": gpu}, check=True, capture_output=True)
        lines = calls.read_text().splitlines()
        return [c for c in lines if "--onnx=" in c], [c for c in lines if c.startswith("tritonserver")]

    builds, starts = run("H100")
    graph_models = sorted(graphs)
    assert sorted(build.split("--onnx=")[1].split("/")[0] for build in builds) == graph_models
    assert starts == [f"tritonserver --model-repository={repo} --log-verbose=1"]
    for name in graph_models:
        assert (repo / name / MODEL_VERSION / "model.plan").is_file()
        build = next(b for b in builds if f"--onnx={name}/" in b)
        assert build.count("--minShapes=") == len(derive_profiles(SCHEMA, name))
    assert run("H100") == ([], starts)
    assert len(run("L4")[0]) == len(graph_models)
    # aisle serve --tritonserver <script> names the repository itself: not passed twice
    assert run("L4", f"--model-repository={repo}", "--http-port=9000")[1] == [
        f"tritonserver --model-repository={repo} --http-port=9000"
    ]
    assert script.name == START_SCRIPT
