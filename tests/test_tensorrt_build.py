"""TensorRT engine plans: profiles from the schema, the trtexec rendering, rebuild-or-load decisions.

Everything but the build itself runs without TensorRT; the build/run test needs TensorRT and a GPU.
"""

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import onnx
import pytest

from aisle.cli import main
from aisle.export.fp16 import FP32_OPS
from aisle.export.graphs import graph_file
from aisle.export.tensorrt_build import (
    OPT_CANDIDATES,
    BuildEnvironment,
    EngineConfig,
    EngineMetadata,
    decide,
    derive_profiles,
    plan_engines,
    render_trtexec,
    source_sha256,
    trtexec_command,
)
from aisle.modeling.checkpoint import Manifest
from aisle.schema import (
    ATTENTION_MASK,
    ENCODER_MAX_BATCH,
    FUSION_HEAD,
    INPUT_IDS,
    ITEM_EMBEDDINGS,
    ITEM_ENCODER,
    QUERY_ENCODER,
    RANK_MAX_BATCH,
    ServingLimits,
    build_schema,
)

ENVIRONMENT = BuildEnvironment("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA_GPU = shutil.which("nvidia-smi") is not None
MISSING_FOR_ENGINES = [
    *([] if HAS_TENSORRT else ["tensorrt is not installed (PyPI's tensorrt cannot fetch NVIDIA's wheels here)"]),
    *([] if HAS_CUDA_GPU else ["no CUDA GPU (nvidia-smi not found)"]),
]


def test_encoder_profiles_are_one_per_length_bucket_up_to_the_max_batch() -> None:
    schema = build_schema(384, ServingLimits(query_buckets=(8, 16, 32), item_buckets=(16, 64)))
    for model, buckets in ((QUERY_ENCODER, (8, 16, 32)), (ITEM_ENCODER, (16, 64))):
        profiles = derive_profiles(schema, model)
        assert [p.shapes[INPUT_IDS].max[1] for p in profiles] == list(buckets)
        for profile, bucket in zip(profiles, buckets):
            for name in (INPUT_IDS, ATTENTION_MASK):
                shape = profile.shapes[name]
                assert (shape.min, shape.opt, shape.max) == (
                    (1, bucket),
                    (ENCODER_MAX_BATCH, bucket),
                    (ENCODER_MAX_BATCH, bucket),
                )


def test_head_profile_spans_one_to_max_candidates_tuned_at_a_typical_depth() -> None:
    schema = build_schema(384)
    (profile,) = derive_profiles(schema, FUSION_HEAD, opt_batch=4)
    items = profile.shapes[ITEM_EMBEDDINGS]
    assert (items.min, items.opt, items.max) == (
        (1, 1, 384),
        (4, OPT_CANDIDATES, 384),
        (RANK_MAX_BATCH, schema.limits.max_candidates, 384),
    )
    assert set(profile.shapes) == {t.name for t in schema.model(FUSION_HEAD).inputs}


@pytest.fixture
def plans(onnx_dir: Path, tmp_path: Path):
    return plan_engines(
        onnx_dir, tmp_path / "engines", EngineConfig(workspace_mib=2048, timing_cache=tmp_path / "t.cache")
    )


def test_trtexec_command_renders_the_same_build(plans, onnx_dir: Path) -> None:
    query = next(p for p in plans if p.model == QUERY_ENCODER)
    args = trtexec_command(query)
    assert args[:3] == ["trtexec", f"--onnx={onnx_dir / graph_file(QUERY_ENCODER)}", f"--saveEngine={query.engine}"]
    assert {"--fp16", "--memPoolSize=workspace:2048", f"--timingCacheFile={query.config.timing_cache}"} <= set(args)
    buckets = Manifest.load(onnx_dir).limits.query_buckets
    assert [a for a in args if a.startswith("--profile=")] == [f"--profile={i}" for i in range(len(buckets))]
    first_max = args.index("--profile=0") + 3
    assert (
        args[first_max]
        == f"--maxShapes={INPUT_IDS}:{ENCODER_MAX_BATCH}x{buckets[0]},{ATTENTION_MASK}:{ENCODER_MAX_BATCH}x{buckets[0]}"
    )
    assert "--precisionConstraints=obey" in args
    pinned = next(a for a in args if a.startswith("--layerPrecisions=")).split("=", 1)[1].split(",")
    graph = onnx.load(str(onnx_dir / graph_file(QUERY_ENCODER)), load_external_data=False)
    expected = [f"{n.name}:fp32" for n in graph.graph.node if n.op_type in FP32_OPS]
    assert pinned == expected and any("LayerNormalization" in p for p in pinned)
    head = next(p for p in plans if p.model == FUSION_HEAD)
    assert not any(a.startswith("--profile=") for a in trtexec_command(head)), "one profile needs no index"
    assert render_trtexec(query).startswith("trtexec --onnx=")


def _built(plan, environment: BuildEnvironment = ENVIRONMENT) -> None:
    """Pretend `plan` was built in `environment`: an engine file and matching metadata."""
    plan.engine.parent.mkdir(parents=True, exist_ok=True)
    plan.engine.write_bytes(b"plan")
    EngineMetadata(
        plan.model, *dataclasses.astuple(environment), source_sha256(plan.onnx), plan.build_settings()
    ).write(plan.metadata_path)


def test_an_engine_built_here_from_this_graph_is_loaded(plans) -> None:
    _built(plans[0])
    assert decide(plans[0], ENVIRONMENT, source_sha256(plans[0].onnx)).rebuild is False


@pytest.mark.parametrize(
    ("environment", "why"),
    [
        (dataclasses.replace(ENVIRONMENT, tensorrt_version="10.4.0"), "TensorRT version 10.3.0, now 10.4.0"),
        (dataclasses.replace(ENVIRONMENT, gpu_name="NVIDIA L4"), "GPU NVIDIA H100 80GB HBM3, now NVIDIA L4"),
        (dataclasses.replace(ENVIRONMENT, compute_capability="8.9"), "compute capability 9.0, now 8.9"),
    ],
)
def test_an_engine_from_another_gpu_or_tensorrt_is_rebuilt(plans, environment: BuildEnvironment, why: str) -> None:
    _built(plans[0])
    decision = decide(plans[0], environment, source_sha256(plans[0].onnx))
    assert decision.rebuild and why in decision.reason


def test_an_engine_of_a_changed_graph_or_changed_settings_is_rebuilt(plans) -> None:
    plan = plans[0]
    _built(plan)
    assert "source ONNX sha256" in decide(plan, ENVIRONMENT, "0" * 64).reason
    other_profiles = dataclasses.replace(plan, profiles=plan.profiles[:1])
    assert decide(other_profiles, ENVIRONMENT, source_sha256(plan.onnx)).reason.endswith("changed (profiles)")


def test_an_engine_without_readable_metadata_is_rebuilt(plans) -> None:
    plan = plans[0]
    assert decide(plan, ENVIRONMENT, "x").reason == f"no engine at {plan.engine}"
    _built(plan)
    plan.metadata_path.write_text("{not json")
    assert decide(plan, ENVIRONMENT, "x").rebuild


def test_trt_cli_prints_trtexec_commands_without_tensorrt(onnx_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "trt", "--onnx-dir", str(onnx_dir), "--out", str(tmp_path), "--trtexec-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("trtexec --onnx=") for line in lines)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_trt_cli_without_tensorrt_says_how_to_get_it(onnx_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "trt", "--onnx-dir", str(onnx_dir), "--out", str(tmp_path)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(bool(MISSING_FOR_ENGINES), reason="; ".join(MISSING_FOR_ENGINES))
def test_engines_build_pass_the_fp16_gate_and_are_kept_when_current(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    from aisle.export.tensorrt_build import build_engines, gate_engines

    plans = plan_engines(onnx_dir, tmp_path, EngineConfig(timing_cache=tmp_path / "timing.cache"))
    first = build_engines(plans)
    assert all(r.decision.rebuild for r in first) and (tmp_path / "timing.cache").is_file()
    assert all(EngineMetadata.read(p.metadata_path).fp32_layers_matched > 0 for p in plans if p.fp32_layers)
    assert not any(r.decision.rebuild for r in build_engines(plans))
    report = gate_engines(plans, serving_checkpoint, tiny_data)
    assert report.failures == []
