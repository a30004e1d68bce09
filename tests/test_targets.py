"""The target registry: targets, their flags and what derives from them come from export/targets/ alone."""

import sys
from pathlib import Path

import pytest

import aisle.export.targets as targets
from aisle.cli import build_parser, main
from aisle.errors import ExportError
from aisle.export.repo_format import RepoManifest
from aisle.export.targets import registry, served_by, target_from_args, target_named, target_names
from aisle.export.triton_config import GRAPH_ROLES, render_configs
from aisle.schema import CATALOG_SEARCH, INDEX_DEVICE_PARAMETER, QUERY_ENCODER, Role, build_schema

SCHEMA = build_schema(384)


def repo_args(*extra: str) -> list[str]:
    return ["export", "repo", "--checkpoint", "ckpt", "--data", "data", "--out", "out", *extra]


def repo_parser():
    export = next(a for a in build_parser()._subparsers._actions if a.choices and "export" in a.choices)
    return next(a for a in export.choices["export"]._subparsers._actions if a.choices).choices["repo"]


def test_each_module_of_the_package_is_one_target_named_after_it() -> None:
    assert target_names() == ("embedded", "onnxruntime", "tensorrt")
    for name, target in registry().items():
        assert sys.modules[target.__module__].__name__ == f"aisle.export.targets.{name}"


def test_a_new_module_in_the_package_is_a_new_target_for_the_cli_and_the_renderer(tmp_path: Path, monkeypatch) -> None:
    """Adding a target = one module: the CLI choices and rendering pick it up with no other edit."""
    (tmp_path / "cpu_docker.py").write_text(
        "from dataclasses import dataclass\n"
        "from aisle.export.targets import RenderTarget, Runtime, TargetOption\n"
        "@dataclass(frozen=True)\n"
        "class CpuDocker(RenderTarget):\n"
        "    NAME = 'cpu_docker'\n"
        "    HELP = 'a test target: onnxruntime graphs with three instances'\n"
        "    GRAPH_RUNTIME = Runtime('onnxruntime', platform='onnxruntime_onnx', model_file='model.onnx')\n"
        "    OPTIONS = (TargetOption('--gpu', 'accepted by this target too'),)\n"
        "    gpu: bool = False\n"
        "    def instance_count(self, decl):\n"
        "        return 3\n"
        "TARGET = CpuDocker\n"
    )
    try:
        with monkeypatch.context() as patched:
            patched.setattr(targets, "__path__", [*targets.__path__, str(tmp_path)])
            registry.cache_clear()
            args = build_parser().parse_args(repo_args("--target", "cpu_docker", "--gpu"))
            target = target_from_args(args)
            assert (target.name, target.gpu) == ("cpu_docker", True)
            config = render_configs(SCHEMA, target)[QUERY_ENCODER]
            assert (config.platform, config.instance_group[0].count) == ("onnxruntime_onnx", 3)
            gpu_flag = next(a for a in repo_parser()._actions if "--gpu" in a.option_strings)
            assert gpu_flag.help == "cpu_docker/onnxruntime target: accepted by this target too"  # one flag, two owners
    finally:
        registry.cache_clear()
        sys.modules.pop("aisle.export.targets.cpu_docker", None)
    assert "cpu_docker" not in target_names()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--target", "tensorrt", "--gpu"), "--gpu applies to the onnxruntime target only, not --target tensorrt"),
        (("--target", "embedded", "--trt-accelerator"), "--trt-accelerator applies to the onnxruntime target only"),
        (("--target", "onnxruntime", "--trt-accelerator"), "--trt-accelerator (trt_accelerator=True) needs --gpu"),
    ],
    ids=["gpu-on-tensorrt", "trt-accelerator-on-embedded", "trt-accelerator-without-gpu"],
)
def test_export_repo_refuses_target_flags_that_mean_nothing(argv: tuple, message: str, capsys) -> None:
    assert main(repo_args(*argv)) == 2
    assert message in capsys.readouterr().err


def test_target_flags_reach_their_target() -> None:
    argv = repo_args("--target", "onnxruntime", "--gpu", "--trt-accelerator")
    target = target_from_args(build_parser().parse_args(argv))
    assert target == target_named("onnxruntime", gpu=True, trt_accelerator=True)
    assert target_from_args(build_parser().parse_args(repo_args("--target", "tensorrt"))) == target_named("tensorrt")


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(ExportError, match="target='openvino' is not a known target; choose one of embedded"):
        target_named("openvino")


@pytest.mark.parametrize(
    ("target", "doubled"),
    [
        (target_named("tensorrt"), True),
        (target_named("onnxruntime", gpu=True), True),
        (target_named("onnxruntime"), False),
        (target_named("embedded"), False),
    ],
    ids=["tensorrt", "onnxruntime-gpu", "onnxruntime-cpu", "embedded"],
)
def test_gpu_targets_run_two_tokenizer_and_encoder_instances_and_one_of_everything_else(target, doubled: bool) -> None:
    """On the CPU only the embedded target (graphs in python models, which split the cores between
    instances) runs the query encoder's declared two instances."""
    configs = render_configs(SCHEMA, target)
    for decl in SCHEMA.models:
        two = doubled and decl.role in (Role.TOKENIZER, Role.ENCODER)
        cpu_share = not doubled and target.runtime(decl.role).is_python and decl.cpu_instances == 2
        assert [g.count for g in configs[decl.name].instance_group] == [2 if two or cpu_share else 1], decl.name
    assert (target.name == "embedded") == (configs[QUERY_ENCODER].instance_group[0].count == 2 and not doubled)


@pytest.mark.parametrize(
    ("target", "device"),
    [
        (target_named("tensorrt"), "gpu"),
        (target_named("onnxruntime", gpu=True), "gpu"),
        (target_named("onnxruntime"), "cpu"),
        (target_named("embedded"), "cpu"),
    ],
    ids=["tensorrt", "onnxruntime-gpu", "onnxruntime-cpu", "embedded"],
)
def test_catalog_search_is_told_to_search_its_index_where_the_graphs_run(target, device: str) -> None:
    configs = render_configs(target.served_schema(SCHEMA), target)
    assert configs[CATALOG_SEARCH].parameters[INDEX_DEVICE_PARAMETER].string_value == device
    assert all(INDEX_DEVICE_PARAMETER not in c.parameters for name, c in configs.items() if name != CATALOG_SEARCH)


@pytest.mark.parametrize("name", ["embedded", "onnxruntime", "tensorrt"])
def test_the_benchmark_recognises_each_target_from_its_served_encoder_config(name: str) -> None:
    """A server reports the platform it was given and the backend Triton derives from it; both map back."""
    config = render_configs(SCHEMA, target_named(name))[QUERY_ENCODER]
    runtime = target_named(name).runtime(Role.ENCODER)
    assert served_by(config.backend or config.platform) == name
    assert served_by(runtime.backend) == name


def test_only_graph_roles_leave_the_python_backend() -> None:
    for name in target_names():
        target = target_named(name)
        for role in Role:
            assert target.runtime(role).is_python == (role not in GRAPH_ROLES or name == "embedded"), (name, role)


@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt"])
def test_aisle_serve_refuses_a_repository_of_a_target_it_cannot_run(name: str, tmp_path: Path, capsys) -> None:
    RepoManifest(target=name, embedding_dim=8).save(tmp_path)
    assert main(["serve", "--repo", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"target={name}" in error and f"the {target_named(name).runtime(Role.ENCODER).backend} backend" in error
    assert "--target embedded" in error


def test_aisle_serve_names_an_unknown_target(tmp_path: Path, capsys) -> None:
    RepoManifest(target="openvino", embedding_dim=8).save(tmp_path)
    assert main(["serve", "--repo", str(tmp_path)]) == 2
    assert "target='openvino' is not a known target" in capsys.readouterr().err
