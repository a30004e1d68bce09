"""The real-peer benchmark (aisle.benchmarks.peers, peer_env): command lines, process handling against
real subprocesses, agreement checks, goals and report fields; and one end-to-end run of the real
peers that needs the peers' venv already built (it is ~1 GB, so CI never downloads it)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.peer_env import DEFAULT_VENV, STAMP, PeerEnv
from aisle.benchmarks.peers import (
    MIN_COSINE,
    SERVED_MODEL,
    PeerMismatch,
    ServerProcess,
    check_agreement,
    export_command,
    fetch_embeddings,
    infinity_command,
    openai_body,
    peer_targets,
)
from aisle.model_repository.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- command lines ---------------------------------------------------------------------------------


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_infinity_commands_mean_pool_offline_on_loopback_and_only_optimum_skips_optimisation() -> None:
    env = PeerEnv(Path("/venv"))
    optimum, torch = infinity_command(env, "optimum", 8123), infinity_command(env, "torch", 8124)
    for command, engine, port in ((optimum, "optimum", "8123"), (torch, "torch", "8124")):
        assert command[:2] == ["/venv/bin/infinity_emb", "v2"]
        assert _flag(command, "--pooling-method") == "mean"  # infinity's default (CLS) is not the tower's pooling
        assert _flag(command, "--model-id") == "."  # started inside the model folder: no hub lookup
        assert _flag(command, "--engine") == engine and _flag(command, "--port") == port
        assert _flag(command, "--host") == "127.0.0.1" and _flag(command, "--device") == "cpu"
        assert _flag(command, "--served-model-name") == SERVED_MODEL
    assert "--onnx-disable-optimize" in optimum and "--onnx-disable-optimize" not in torch


def test_infinity_command_rejects_an_unknown_engine_naming_it() -> None:
    with pytest.raises(BenchmarkError, match="'tensorrt'.*known"):
        infinity_command(PeerEnv(Path("/venv")), "tensorrt", 8000)


def test_export_is_transformers_style_feature_extraction_from_the_peers_venv(tmp_path: Path) -> None:
    command = export_command(PeerEnv(tmp_path / "v"), tmp_path / "query_encoder", tmp_path / "out")
    assert command[0] == str(tmp_path / "v" / "bin" / "optimum-cli") and command[1:3] == ["export", "onnx"]
    assert _flag(command, "--library-name") == "transformers" and _flag(command, "--task") == "feature-extraction"


# --- the peers' venv -------------------------------------------------------------------------------


def test_peer_venv_is_reused_only_when_its_stamp_names_the_same_pins(tmp_path: Path) -> None:
    env = PeerEnv(tmp_path / "venv")
    assert not env.complete()  # nothing there
    (env.path / "bin").mkdir(parents=True)
    env.python.touch()
    assert not env.complete()  # an interrupted install: no stamp
    (env.path / STAMP).write_text(json.dumps({**env.wanted(), "versions": {"infinity-emb": "0.0.78"}}))
    assert env.complete() and env.versions()["infinity-emb"] == "0.0.78"
    assert not PeerEnv(env.path, torch="torch==2.14.0+cpu").complete()  # other pins: rebuilt


def test_peer_venv_installs_cpu_torch_first_under_a_constraints_file(tmp_path: Path) -> None:
    env = PeerEnv(tmp_path / "venv")
    steps = env.install_steps(tmp_path / "constraints.txt")
    assert [label for label, _ in steps][0] == "create venv"
    for _, command in steps[1:]:
        assert command[:4] == [str(env.python), "-m", "pip", "install"]
        assert _flag(command, "-c") == str(tmp_path / "constraints.txt")
    assert steps[1][1][-1] == env.torch and env.torch.endswith("+cpu")
    assert steps[2][1][-len(env.requirements) :] == list(env.requirements)


def test_a_failed_peer_install_names_the_step_and_the_log_and_leaves_no_stamp(tmp_path: Path) -> None:
    env = PeerEnv(tmp_path / "venv", torch=str(tmp_path / "no-such-torch.whl"))
    with pytest.raises(BenchmarkError, match="(?s)failed at step 'CPU torch'.*install.log") as error:
        env.ensure(progress=False)
    assert "--no-peers" in str(error.value)
    assert not env.complete() and not (env.path / STAMP).exists()


# --- server processes ------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_server_process_waits_for_readiness_and_stops_by_pid(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    server = ServerProcess("http.server", command, port, tmp_path / "server.log", health_path="/", start_timeout_s=30)
    with server:
        pid = server.pid
        assert _pid_alive(pid)
        with pytest.raises(BenchmarkError, match="already in use"):
            ServerProcess("second", command, port, tmp_path / "second.log", health_path="/").__enter__()
    assert server.process is not None and server.process.returncode is not None and not _pid_alive(pid)


def test_a_missing_server_executable_is_a_benchmark_error_naming_it(tmp_path: Path) -> None:
    command = [str(tmp_path / "no-venv" / "bin" / "infinity_emb"), "v2"]
    with pytest.raises(BenchmarkError, match="cannot start .*no-venv/bin/infinity_emb"):
        with ServerProcess("missing", command, free_port(), tmp_path / "missing.log", cwd=tmp_path):
            pass


def test_peer_venv_entry_points_are_absolute_so_they_run_from_the_model_folder() -> None:
    assert PeerEnv(Path("artifacts/peers-venv")).bin("infinity_emb").is_absolute()


def test_server_process_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('cannot load model'); sys.exit(3)"]
    with pytest.raises(BenchmarkError, match="(?s)exited with 3.*cannot load model"):
        with ServerProcess("broken", command, free_port(), tmp_path / "broken.log", start_timeout_s=30):
            pass


def test_server_process_never_ready_times_out_and_is_killed(tmp_path: Path) -> None:
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    command = [sys.executable, "-c", ignore_term]
    server = ServerProcess("stuck", command, free_port(), tmp_path / "stuck.log", start_timeout_s=1, stop_timeout_s=1)
    with pytest.raises(BenchmarkError, match="not ready after start_timeout_s=1"):
        server.__enter__()
    assert server.process is not None and server.process.returncode is not None  # SIGKILL after ignored SIGTERM


# --- OpenAI-style /embeddings ----------------------------------------------------------------------


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    """A real HTTP server answering /embeddings like infinity: one row per input, listed in reverse."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/embeddings" and request["model"] == SERVED_MODEL
        rows = [{"index": i, "embedding": [float(len(text)), 1.0]} for i, text in enumerate(request["input"])]
        payload = json.dumps({"data": rows[::-1]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_openai_embeddings_come_back_in_input_order_over_both_http_clients() -> None:
    from aisle.benchmarks.eager_server import HttpEmbedCaller

    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"127.0.0.1:{server.server_address[1]}"
    try:
        np.testing.assert_array_equal(fetch_embeddings(url, ["a", "bbb"]), [[1.0, 1.0], [3.0, 1.0]])

        async def one() -> dict:
            caller = HttpEmbedCaller(url, path="/embeddings", body=openai_body)
            try:
                return await caller("four")
            finally:
                await caller.close()

        assert asyncio.run(one())["data"][0]["embedding"] == [4.0, 1.0]
    finally:
        server.shutdown()
        server.server_close()


# --- agreement and goals ---------------------------------------------------------------------------


def test_a_peer_pooling_differently_is_caught_before_it_is_measured() -> None:
    rng = np.random.default_rng(0)
    aisle = rng.normal(size=(4, 8))
    assert check_agreement("scaled", aisle * 3.0, aisle) == pytest.approx(1.0)  # cosine ignores normalisation
    with pytest.raises(PeerMismatch, match=rf"cls-peer: min cosine .* < {MIN_COSINE}.*pooling"):
        check_agreement("cls-peer", aisle + rng.normal(size=aisle.shape), aisle)
    with pytest.raises(PeerMismatch, match="shape"):
        check_agreement("short", aisle[:, :4], aisle)


def _latency(p99: float) -> dict:
    return {"p50_ms": p99 / 2, "p90_ms": p99, "p95_ms": p99, "p99_ms": p99, "mean_ms": p99 / 2, "count": 100}


def _point(system: str, level: int, rps: float, p99: float) -> dict:
    latency = _latency(p99)
    return {"workload": "embed_query", "generator": "python", "mode": "concurrency", "system": system, "level": level,
            "throughput_rps": rps, "latency": latency, "errors": 0, "stable": True, "other_cpu_cores": 0.0,
            "client_cpu_cores": 0.5, "steps": []}  # fmt: skip


def _peer_results() -> dict:
    points = [_point("triton", 1, 70, 20), _point("triton", 4, 110, 60), _point("triton", 16, 140, 170)]
    points += [_point("infinity-optimum", 1, 55, 25), _point("infinity-optimum", 4, 95, 50)]
    points += [_point("infinity-optimum", 16, 100, 200), _point("infinity-torch", 16, 60, 150)]
    library = [
        {"system": "sentence-transformers-onnx", "batch_size": b, "throughput_seqs": s, "latency": _latency(9.0)}
        for b, s in ((1, 140), (4, 200), (16, 250))
    ]
    peers = {
        "infinity-optimum": {"version": "0.0.78", "flags": {"--pooling-method": "mean"}, "min_cosine": 1.0,
                             "status": "measured"},
        "infinity-torch": {"version": "0.0.78", "flags": {"--engine": "torch"}, "min_cosine": 1.0,
                           "status": "measured"},
        "sentence-transformers-onnx": {"version": "5.7.0", "flags": {"backend": "onnx"}, "min_cosine": 1.0,
                                       "status": "measured"},
    }  # fmt: skip
    ort = [{"padding": "buckets", "batch_size": b, "throughput_seqs": s} for b, s in ((1, 140), (4, 200), (16, 250))]
    return {"points": points, "peer_library": library, "peers": peers, "ort": ort}


def test_peer_goals_are_ratios_of_the_same_runs_points() -> None:
    from aisle.benchmarks.suite import TargetLevels

    targets = {t.name: t for t in peer_targets(_peer_results(), TargetLevels())}
    best = next(t for name, t in targets.items() if name.startswith("embed_query throughput, aisle / infinity"))
    assert "infinity-optimum" in best.name and best.measured == pytest.approx(140 / 100) and best.passed is False
    p99 = {name.split("concurrency ")[1].split(" ")[0]: t for name, t in targets.items() if "p99" in name}
    assert p99["1"].measured == pytest.approx(20 / 25) and p99["1"].passed
    assert p99["4"].measured == pytest.approx(60 / 50) and p99["4"].passed is False
    assert p99["16"].measured == pytest.approx(170 / 150) and "infinity-torch" in p99["16"].name  # lowest p99 peer
    ort = {t.name: t.measured for t in targets.values() if "in-process" in t.name}
    assert sorted(ort.values()) == pytest.approx(sorted([110 / 200, 140 / 250]))
    assert peer_targets({"points": []}, TargetLevels()) == []  # a run without peers has no peer goals


def test_summary_json_records_every_peers_version_flags_and_the_peer_table(tmp_path: Path) -> None:
    from aisle.benchmarks.report import peers_table, write_report
    from aisle.benchmarks.suite import TargetLevels
    from tests.test_bench_components import _results  # the suite's results shape, shared

    peer_results = _peer_results()
    results = _results() | {key: peer_results[key] for key in ("peers", "peer_library")}
    results["points"] += peer_results["points"]
    results["targets"] = [t.to_dict() for t in peer_targets(results, TargetLevels())]
    write_report(results, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["peers"]["infinity-optimum"]["flags"] == {"--pooling-method": "mean"}
    assert {p["version"] for p in summary["peers"].values()} == {"0.0.78", "5.7.0"}
    assert any("infinity-emb's best engine" in t["name"] for t in summary["targets"])
    table = peers_table(results)
    assert "| infinity-torch | 16 | 60.0 |" in table and "| sentence-transformers-onnx (batch) | 16 | 250.0 |" in table
    assert "## Peers" in (tmp_path / "summary.md").read_text()


def test_full_runs_measure_peers_and_quick_runs_do_not(tmp_path: Path) -> None:
    from aisle.benchmarks.suite import SuiteConfig

    options = dict(out=tmp_path, checkpoint=tmp_path, data=tmp_path, repo=tmp_path)
    assert SuiteConfig(**options).peers and not SuiteConfig.quick(**options).peers
    assert SuiteConfig(**options).peers_venv == DEFAULT_VENV


# --- the real peers --------------------------------------------------------------------------------

PEERS_ENV = PeerEnv(REPO_ROOT / DEFAULT_VENV)


@pytest.mark.slow
@pytest.mark.skipif(
    not PEERS_ENV.complete(),
    reason=f"the peers' venv {PEERS_ENV.path} is not built (~1 GB download, never done by tests); build it with "
    "`aisle bench ... --peers` or PeerEnv().ensure() to run the real infinity-emb / sentence-transformers peers",
)
def test_real_peers_agree_with_aisle_and_are_measured(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    from tqdm import tqdm

    from aisle.benchmarks.load import LoadConfig
    from aisle.benchmarks.peers import PeerConfig, aisle_reference, run_peers
    from aisle.benchmarks.workloads import WorkloadConfig, query_workload
    from aisle.data.format import load_dataset
    from aisle.modeling.checkpoint import Manifest

    schema = Manifest.load(serving_checkpoint).schema()
    workload = query_workload(load_dataset(tiny_data), WorkloadConfig(requests=32))
    config = PeerConfig(
        env=PEERS_ENV,
        model_dir=serving_checkpoint / "query_encoder",
        work=tmp_path,
        concurrencies=(1, 2),
        load=LoadConfig(window_s=0.5, warmup_s=0.3, min_windows=1, max_windows=1),
        duration_s=0.5,
    )
    reference = aisle_reference(onnx_dir / "query_encoder.onnx", config.model_dir, schema.limits.query_buckets, 2)
    with tqdm(disable=True) as progress:
        results = run_peers(config, workload, reference, progress)
    assert results.failures == []
    for system in ("infinity-optimum", "infinity-torch", "sentence-transformers-onnx"):
        assert results.peers[system]["status"] == "measured" and results.peers[system]["min_cosine"] >= MIN_COSINE
    assert results.peers["infinity-optimum"]["version"] == "0.0.78"
    assert {(p.system, p.level) for p in results.points} == {
        (s, c) for s in ("infinity-optimum", "infinity-torch") for c in (1, 2)
    }
    assert all(p.errors == 0 and p.throughput_rps > 0 for p in results.points)
    assert [r["batch_size"] for r in results.library] == [1, 2]
