"""The launcher and `aisle serve`: ports, start-up failures, draining on SIGTERM, no leaked requests."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aisle.export.repo_format import REPO_MANIFEST, catalog_dir
from aisle.model_repository.errors import ServerStartError
from aisle.model_repository.server import ServerConfig, TritonServer, backends_dir, free_ports
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    ITEM_STORE,
    QUERY,
    RANK,
    RANK_COLD,
    SCORES,
    USER_HISTORY_IDS,
)

pytestmark = pytest.mark.server


def infer(url: str, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    wire = []
    for name, array in inputs.items():
        datatype = {"O": "BYTES", "i": "INT64", "f": "FP32"}[array.dtype.kind]
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    return client.infer(model, wire, client_timeout=300).as_numpy(SCORES)


def test_backends_dir_puts_this_pythons_stub_beside_the_python_backend() -> None:
    python = backends_dir() / "python"
    assert (python / "libtriton_python.so").is_file()
    assert os.access(python / "triton_python_backend_stub", os.X_OK)


def test_command_is_the_plain_tritonserver_command_on_loopback(tmp_path: Path) -> None:
    server = TritonServer(ServerConfig(tmp_path, grpc_port=1, http_port=2, metrics_port=3, extra_args=("--x=1",)))
    command = server.command()
    assert Path(command[0]).name == "tritonserver"
    for flag in ("--grpc-address", "--http-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in command
    assert f"--model-repository={tmp_path.resolve()}" in command and command[-1] == "--x=1"
    assert "nvidia_pytriton.libs" in server.env()["LD_LIBRARY_PATH"]
    assert server.env()["PATH"].startswith(str(Path(sys.prefix) / "bin"))


def test_an_external_tritonserver_runs_with_its_own_backends_and_environment(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path, tritonserver=Path("/opt/tritonserver/bin/tritonserver"), response_cache_mb=1)
    server = TritonServer(config)
    command = server.command()
    assert command[0] == "/opt/tritonserver/bin/tritonserver"
    assert not any(part.startswith(("--backend-directory", "--cache-directory")) for part in command)
    assert f"--cache-config=local,size={2**20}" in command
    assert f"--model-repository={tmp_path.resolve()}" in command and "--model-control-mode=explicit" in command
    assert server.env() == dict(os.environ)


def wheel_tritonserver_script(path: Path) -> Path:
    """A script that execs the wheel's tritonserver with its arguments, as the NGC image's
    `tritonserver` (or the tensorrt target's start script) is run by `aisle serve --tritonserver`."""
    plain = TritonServer(ServerConfig(path.parent))
    env = plain.env()
    path.write_text(
        "#!/bin/sh\n"
        f"export LD_LIBRARY_PATH={shlex.quote(env['LD_LIBRARY_PATH'])} PATH={shlex.quote(env['PATH'])}\n"
        f'exec {shlex.quote(plain.command()[0])} --backend-directory={shlex.quote(str(backends_dir()))} "$@"\n'
    )
    path.chmod(0o755)
    return path


def test_log_stdout_drains_the_servers_output_to_its_file_even_when_stdout_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed stdout must not stop the copy: the server would block on a full pipe."""
    import io

    from aisle.model_repository.server import copy_output

    gone = io.StringIO()
    gone.close()
    monkeypatch.setattr(sys, "stdout", gone)
    lines = 100_000  # several pipe buffers' worth
    writer = subprocess.Popen(
        [sys.executable, "-c", f"for i in range({lines}): print('line', i)"], stdout=subprocess.PIPE
    )
    assert writer.stdout is not None
    copier = threading.Thread(target=copy_output, args=(writer.stdout, tmp_path / "log"))
    copier.start()
    assert writer.wait(timeout=60) == 0
    copier.join(timeout=30)
    assert not copier.is_alive()
    assert len((tmp_path / "log").read_text().splitlines()) == lines


def test_start_refuses_a_port_already_in_use(triton_server) -> None:
    grpc_port = int(triton_server.grpc_url.rsplit(":", 1)[1])
    _, http_port, metrics_port = free_ports(3)
    config = ServerConfig(
        triton_server.config.repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port
    )
    with pytest.raises(ServerStartError, match=f"grpc_port={grpc_port} .* already in use"):
        TritonServer(config).start()


def test_failed_start_raises_with_the_server_log_naming_the_broken_model(embedded_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "broken"
    repo.mkdir()
    shutil.copy2(embedded_repo / REPO_MANIFEST, repo)
    shutil.copytree(embedded_repo / ITEM_STORE, repo / ITEM_STORE)
    shutil.rmtree(catalog_dir(repo))
    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(ServerConfig(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port))
    with pytest.raises(ServerStartError, match="exited with code") as caught:
        server.start(timeout_s=120)
    assert "catalog: catalog directory not found" in str(caught.value)
    assert not server.is_running()


def wait_ready(http_url: str, process: subprocess.Popen, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"aisle serve not ready after {timeout_s}s")


def test_aisle_serve_drains_in_flight_requests_and_exits_zero_on_sigterm(
    embedded_repo: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """Run as deploy/ runs it: an external tritonserver (here a script exec'ing the wheel's, as the
    NGC image's would be), the readiness endpoint on, SIGTERM from the orchestrator."""
    from aisle.data.format import load_dataset

    grpc_port, http_port, metrics_port, health_port = free_ports(4)
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    tritonserver = wheel_tritonserver_script(tmp_path / "tritonserver")
    command = [sys.executable, "-m", "aisle.cli", "serve", "--repo", str(embedded_repo), *ports]
    command += ["--tritonserver", str(tritonserver), "--health-port", str(health_port), "--log-stdout"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"127.0.0.1:{http_port}", process)
        ready = None
        for _ in range(50):  # the endpoint opens once the launcher saw the server ready
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready", timeout=5) as response:
                    ready = (response.status, response.read())
                break
            except OSError:
                time.sleep(0.2)
        assert ready == (200, b"ready\n")
        url = f"127.0.0.1:{grpc_port}"
        # Rejected rank requests must not leave anything in flight (see model_repository.validation).
        for bad in ([-1], [10**9]):
            no_history = np.zeros((1, 0), np.int64)
            inputs = {QUERY: np.array([[b"q"]], object), CANDIDATE_IDS: np.array([bad]), USER_HISTORY_IDS: no_history}
            with pytest.raises(InferenceServerException, match=CANDIDATE_IDS):
                infer(url, RANK, inputs)
        items = load_dataset(tiny_data).items[:300]
        slow = {
            QUERY: np.array([[b"lamp"]], object),
            CANDIDATE_TEXTS: np.array([[(item.text() + " extra words") * 3 for item in items]], object),
            CANDIDATE_FEATURES: np.array([[item.features() for item in items]], np.float32),
            USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
        }
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(scores=infer(url, RANK_COLD, slow)))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive(), "the request finished before SIGTERM: make it longer"
        process.send_signal(signal.SIGTERM)
        worker.join(timeout=300)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert result["scores"].shape == (1, len(items)) and np.isfinite(result["scores"]).all()
    assert "SIGTERM: draining in-flight requests" in output
    assert "stub watchdog on" in output and "aisle watchdog:" not in output  # running, and no stub died
    assert f"plain command (what this runs):\n  {tritonserver} " in output  # the external one, no wheel env line
    assert f"readiness: http://127.0.0.1:{health_port}/ready" in output
    assert "--http-restricted-api=model-repository:aisle-control-token=<token>" in output  # token masked
    (log_path,) = re.findall(r"server log: (\S+)", output)
    # The ensembles were drained before SIGTERM, and rejected requests left nothing behind in flight.
    log = Path(log_path).read_text()
    assert "successfully unloaded 'rank_cold'" in log
    # --log-stdout: Triton's own lines reach the launcher's stdout too (what a platform collects).
    assert "successfully unloaded 'rank_cold'" in output and "successfully loaded 'search'" in output
    assert "Found 0 model versions that have in-flight inferences" in log
    assert not re.search(r"has \d+ in-flight inferences", log)


def test_the_demo_script_shops_over_grpc_and_prints_no_control_token(embedded_repo: Path, tiny_data: Path) -> None:
    """`make demo`'s last step on the test repository: searches, a filtered search, a recommendation
    and a cold-start ranking print their items; the command it prints masks the control token (the
    key to the model-control API)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"
    command = [sys.executable, str(script), "--repo", str(embedded_repo), "--data", str(tiny_data)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert output.count("\nsearch ") == 4 and "recommendations for user" in output, output
    assert "cold start:" in output and output.rstrip().endswith("server stopped"), output
    assert re.findall(r"aisle-control-token=(\S+)", output) == ["<token>", "<token>"], output


def test_aisle_serve_refuses_a_repository_rendered_for_the_ngc_image(tmp_path: Path, capsys) -> None:
    from aisle.cli import main
    from aisle.export.repo_format import RepoManifest

    RepoManifest(target="tensorrt", embedding_dim=8).save(tmp_path)
    assert main(["serve", "--repo", str(tmp_path)]) == 2
    assert "target=tensorrt" in capsys.readouterr().err
