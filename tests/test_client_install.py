"""The base install (`pip install .`, no extras) gives a working client that never loads torch.

Why a real install: the import graph is easy to break from anywhere (a top-level `import torch` in
a module the client or the `aisle` CLI touches). In the development venv everything is installed,
so only a clean virtual environment — no system site-packages, only what the base dependencies
pull from PyPI (tritonclient[grpc], numpy) — shows what a client-only user gets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Modules of the training/export/serving stacks that a client-only install must never import.
HEAVY_MODULES = ("torch", "transformers", "onnxruntime", "onnx", "tokenizers", "pytriton")

#: Run inside the fresh venv: exercise the client without a server, then report what got imported.
PROBE = """
import asyncio, json, sys
import aisle.client
from aisle.client import AisleClient, AsyncAisleClient, ClientConfig, RetryConfig, UnavailableError
import aisle.client.cli
from aisle.cli import build_parser

build_parser()
config = ClientConfig(url="127.0.0.1:9", timeout_s=2.0, retry=RetryConfig(max_attempts=1))
with AisleClient(config=config) as client:
    sync_ready = client.is_ready()
    try:
        client.rank("shoes", [1, 2, 3])
        refused = None
    except UnavailableError as e:
        refused = str(e)

async def probe_async():
    async with AsyncAisleClient(config=config) as client:
        return await client.is_ready()

heavy = sorted(m for m in sys.modules if m.split(".")[0] in set(json.loads(sys.argv[1])))
print(json.dumps({
    "sync_ready": sync_ready, "async_ready": asyncio.run(probe_async()), "refused": refused, "heavy": heavy,
}))
"""


def source_copy(destination: Path) -> Path:
    """The project's package folders and metadata, copied so the build never writes into the shared tree."""
    packages = [p for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"]
    for package in sorted(packages):
        shutil.copytree(package, destination / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, destination / name)
    return destination


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def client_only_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with `pip install .` (base dependencies only; pip's download cache is used)."""
    work = tmp_path_factory.mktemp("client_install")
    venv = work / "venv"
    created = run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    installed = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source_copy(work / "src"))])
    assert installed.returncode == 0, f"pip install . failed:\n{installed.stdout}\n{installed.stderr}"
    return venv


def test_base_install_imports_the_client_and_cli_without_any_model_runtime(client_only_venv: Path) -> None:
    probe = run([str(client_only_venv / "bin" / "python"), "-c", PROBE, json.dumps(HEAVY_MODULES)], cwd="/")
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["sync_ready"] is False and report["async_ready"] is False
    assert report["refused"] is not None and "127.0.0.1:9" in report["refused"]


def test_base_install_does_not_pull_model_runtimes(client_only_venv: Path) -> None:
    listed = run([str(client_only_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"])
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"tritonclient", "numpy", "grpcio"} <= names
    assert not names & {"torch", "transformers", "onnxruntime", "tokenizers", "nvidia-pytriton"}


def test_base_install_cli_reports_an_unreachable_server_as_a_user_error(client_only_venv: Path) -> None:
    aisle = str(client_only_venv / "bin" / "aisle")
    assert run([aisle, "search", "--help"]).returncode == 0
    failed = run([aisle, "embed", "hello", "--url", "127.0.0.1:9", "--timeout-s", "3"], cwd="/")
    assert failed.returncode == 2
    assert "aisle embed: error:" in failed.stderr and "UNAVAILABLE" in failed.stderr
