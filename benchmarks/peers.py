"""Real peers in `aisle bench`: infinity-emb's ONNX and torch engines, and sentence-transformers' ONNX backend.

Users choose between aisle and the embedding servers people deploy, so those are the baselines that
count. Every peer serves the checkpoint's own query tower (same BERT weights, mean pooling, L2
normalisation), is driven by the suite's load generator with the same embed_query requests at the
same concurrencies as aisle's SDK points, and must reproduce aisle's embeddings (cosine >= 0.999 on
a few queries) before it is measured: a misconfigured peer (infinity defaults to CLS pooling) is
reported as a failure, never benchmarked.

- infinity-emb, `--engine optimum` (ONNX Runtime) and `--engine torch`, each in its own process on a
  free 127.0.0.1 port, over HTTP POST /embeddings (OpenAI style), one text per request.
- sentence-transformers with `backend="onnx"`, in-process in the peers venv (aisle.benchmarks.peer_st)
  at batch = concurrency: what the same graph gives a library user with no server at all.

The peers live in their own venv (aisle.benchmarks.peer_env); the suite builds it before measuring
anything, so an install never competes with a measurement and a failed install stops the run early.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aisle.benchmarks.cpu import CpuMeter
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import LoadConfig, LoadPoint, closed_loop
from aisle.benchmarks.peer_env import PeerEnv
from aisle.benchmarks.targets import Goal, find_ort, find_point, profile, with_note
from aisle.benchmarks.workloads import Workload
from aisle.schema import QUERY

#: The name infinity serves the model under (requests must name it).
SERVED_MODEL = "aisle-query-encoder"
#: Flags every infinity engine gets: the tower pools by mean (infinity's default is CLS), on CPU, and
#: no per-request access log (uvicorn's default at info level; aisle's server logs none either).
INFINITY_FLAGS = {"--device": "cpu", "--pooling-method": "mean", "--log-level": "warning"}
#: Per-engine extras: optimum's graph optimisation call fails on optimum 2.x and falls back to the
#: plain graph anyway, so it is switched off explicitly to make the flags say what runs.
INFINITY_ENGINES: dict[str, dict[str, str | None]] = {"optimum": {"--onnx-disable-optimize": None}, "torch": {}}
#: The graph file infinity's optimum engine loads from the model folder's root.
ONNX_FILE = "model.onnx"
#: Lowest cosine to aisle's embedding a peer may show on any check query before it is benchmarked.
MIN_COSINE = 0.999
#: Keeps the peers offline: the model is a local folder, nothing may be fetched from a hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
#: System names of the peers in results["points"].
ST_SYSTEM = "sentence-transformers-onnx"


def infinity_system(engine: str) -> str:
    return f"infinity-{engine}"


class PeerMismatch(BenchmarkError):
    """A peer's embeddings differ from aisle's: it serves a different model or pooling, so it is not measured."""


# --- processes -------------------------------------------------------------------------------------


def _port_answers(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ServerProcess:
    """A server subprocess that is ready once GET `health_path` answers 200; stopped by its PID.

    Started in its own session so the stop signal reaches the whole process group it spawned (and
    only that group); refuses to start over something already listening on the port, which would
    otherwise pass the readiness check for it.
    """

    name: str
    command: list[str]
    port: int
    log_path: Path
    health_path: str = "/health"
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    start_timeout_s: float = 300.0
    stop_timeout_s: float = 15.0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchmarkError(f"{self.name} is not running")
        return self.process.pid

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        if _port_answers(self.host, self.port):
            raise BenchmarkError(f"{self.name}: port {self.url} is already in use; refusing to start over it")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            try:
                self.process = subprocess.Popen(
                    self.command,
                    cwd=self.cwd,
                    env={**os.environ, **self.env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                raise BenchmarkError(f"{self.name}: cannot start {self.command[0]} (cwd {self.cwd}): {e}") from e
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"{self.name} exited with {self.process.returncode} before it was ready; "
                    f"{self.log_path} ends with:\n{self._tail()}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.url}{self.health_path}", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise BenchmarkError(
            f"{self.name} on {self.url} not ready after start_timeout_s={self.start_timeout_s}; "
            f"{self.log_path} ends with:\n{self._tail()}"
        )

    def stop(self) -> None:
        """SIGTERM to the process group led by our child's PID, SIGKILL after stop_timeout_s."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, None)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc) -> None:
        self.stop()


# --- infinity-emb ----------------------------------------------------------------------------------


def infinity_flags(engine: str) -> dict[str, str | None]:
    """Every flag infinity is started with for `engine` (host and port aside): recorded in summary.json."""
    if engine not in INFINITY_ENGINES:
        raise BenchmarkError(f"unknown infinity engine {engine!r} (known: {sorted(INFINITY_ENGINES)})")
    return {"--model-id": ".", "--served-model-name": SERVED_MODEL, "--engine": engine, **INFINITY_FLAGS,
            **INFINITY_ENGINES[engine]}  # fmt: skip


def infinity_command(env: PeerEnv, engine: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """`infinity_emb v2 ...`, run from inside the model folder (`--model-id .`: offline, no hub lookup)."""
    command = [str(env.bin("infinity_emb")), "v2"]
    for flag, value in {**infinity_flags(engine), "--host": host, "--port": str(port)}.items():
        command += [flag] if value is None else [flag, value]
    return command


def infinity_server(env: PeerEnv, engine: str, folder: Path, port: int, log_path: Path, **kwargs) -> ServerProcess:
    """infinity serving `folder` (prepare_model_folder's layout) with `engine`; a ServerProcess to enter."""
    return ServerProcess(
        name=f"infinity-emb ({engine} engine)",
        command=infinity_command(env, engine, port),
        port=port,
        log_path=log_path,
        cwd=folder,
        env=OFFLINE_ENV,
        **kwargs,
    )


def openai_request(texts: Sequence[str]) -> dict:
    """An OpenAI-style /embeddings request for the served model."""
    return {"model": SERVED_MODEL, "input": list(texts)}


def openai_body(text: str) -> dict:
    """One query per request: how the load generator drives every system."""
    return openai_request([text])


def fetch_embeddings(url: str, texts: Sequence[str], timeout_s: float = 60.0) -> np.ndarray:
    """The embeddings an OpenAI-style server returns for `texts` (one request), in input order."""
    body = json.dumps(openai_request(texts)).encode()
    request = urllib.request.Request(
        f"http://{url}/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            data = json.loads(reply.read())["data"]
    except urllib.error.HTTPError as e:
        raise BenchmarkError(f"{url}/embeddings answered {e.code}: {e.read()[:300]!r}") from e
    return np.asarray([row["embedding"] for row in sorted(data, key=lambda row: row["index"])], dtype=np.float64)


# --- model folders ---------------------------------------------------------------------------------


def _source_stamp(model_dir: Path) -> dict[str, list[float]]:
    return {p.name: [p.stat().st_size, p.stat().st_mtime] for p in sorted(model_dir.iterdir()) if p.is_file()}


def export_command(env: PeerEnv, model_dir: Path, out: Path) -> list[str]:
    """optimum's transformers-style export: infinity's optimum engine loads exactly this layout."""
    return [str(env.bin("optimum-cli")), "export", "onnx", "--model", str(model_dir), "--task",
            "feature-extraction", "--library-name", "transformers", str(out)]  # fmt: skip


def prepare_model_folder(env: PeerEnv, model_dir: Path, folder: Path) -> Path:
    """A copy of the query tower's HF folder with its ONNX export (`model.onnx`) at the root.

    Reused while the source files are unchanged (a stamp of their sizes and mtimes); the export runs
    in the peers venv, so aisle's exporter and its pins are not involved.
    """
    stamp_path = folder / "aisle-source.json"
    wanted = {"source": str(Path(model_dir).resolve()), "files": _source_stamp(Path(model_dir))}
    if (folder / ONNX_FILE).is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == wanted:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(model_dir, folder)
    export_dir = folder.parent / f"{folder.name}-export"
    shutil.rmtree(export_dir, ignore_errors=True)
    log = folder.parent / f"{folder.name}-export.log"
    result = subprocess.run(
        export_command(env, Path(model_dir), export_dir),
        env={**os.environ, **OFFLINE_ENV},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    if result.returncode != 0 or not (export_dir / ONNX_FILE).is_file():
        raise BenchmarkError(
            f"optimum-cli export of {model_dir} failed (exit {result.returncode}); {log} ends with:\n"
            f"{log.read_text(errors='replace')[-2000:]}"
        )
    shutil.copy2(export_dir / ONNX_FILE, folder / ONNX_FILE)
    shutil.rmtree(export_dir)
    stamp_path.write_text(json.dumps(wanted, indent=2) + "\n")
    return folder


# --- agreement with aisle --------------------------------------------------------------------------


def min_cosine(peer: np.ndarray, reference: np.ndarray) -> float:
    """Lowest row-wise cosine between two [n, d] embedding sets (scale-free: normalisation aside)."""
    if peer.shape != reference.shape:
        raise PeerMismatch(f"embedding shape {peer.shape} differs from aisle's {reference.shape}")
    dots = (peer * reference).sum(axis=1)
    norms = np.linalg.norm(peer, axis=1) * np.linalg.norm(reference, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-12)))


def check_agreement(system: str, peer: np.ndarray, reference: np.ndarray, threshold: float = MIN_COSINE) -> float:
    """The minimum cosine to aisle's embeddings; PeerMismatch when below `threshold`."""
    cosine = min_cosine(np.asarray(peer, dtype=np.float64), np.asarray(reference, dtype=np.float64))
    if not cosine >= threshold:
        raise PeerMismatch(
            f"{system}: min cosine to aisle's embeddings {cosine:.4f} < {threshold} on {len(reference)} check "
            "queries: it serves a different model or pooling (infinity's default pooling is CLS; aisle's towers "
            "mean-pool), so it is not benchmarked"
        )
    return cosine


# --- the run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConfig:
    """What the peers serve and how they are driven.

    model_dir: the checkpoint's query tower (HF BERT folder) aisle was rendered from.
    work: folder for the prepared model folder, server logs and the library run's request.
    concurrencies: closed-loop levels (aisle's SDK embed_query levels); also the library's batch sizes.
    duration_s: measured seconds of each library batch size (servers use `load`'s windows).
    """

    env: PeerEnv
    model_dir: Path
    work: Path
    concurrencies: tuple[int, ...]
    load: LoadConfig
    duration_s: float
    engines: tuple[str, ...] = tuple(INFINITY_ENGINES)
    min_cosine: float = MIN_COSINE
    start_timeout_s: float = 300.0


@dataclass
class PeerResults:
    """Load points of the servers, the library runs, and per peer: version, flags, agreement, status."""

    points: list[LoadPoint] = field(default_factory=list)
    library: list[dict] = field(default_factory=list)
    peers: dict[str, dict] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def merge_into(self, results: dict) -> dict:
        results["points"] = results["points"] + [p.to_dict() for p in self.points]
        results["peer_library"] = self.library
        results["peers"] = self.peers
        results["failures"] = results["failures"] + self.failures
        return results


Reference = Callable[[list[str]], np.ndarray]


def _infinity_points(
    config: PeerConfig, engine: str, folder: Path, workload: Workload, check: tuple[list[str], np.ndarray], progress
) -> tuple[dict, list[LoadPoint]]:
    from aisle.benchmarks.callers import eager_call
    from aisle.benchmarks.eager_server import HttpEmbedCaller
    from aisle.model_repository.server import free_port

    system = infinity_system(engine)
    versions = config.env.versions()
    info = {"version": versions.get("infinity-emb"), "engine": engine, "flags": infinity_flags(engine),
            "runtime": {k: versions.get(k) for k in ("onnxruntime", "optimum", "torch", "transformers")}}  # fmt: skip
    log = config.work / f"{system}.log"
    points: list[LoadPoint] = []
    server = infinity_server(config.env, engine, folder, free_port(), log, start_timeout_s=config.start_timeout_s)
    with server:
        served = fetch_embeddings(server.url, check[0])
        info["min_cosine"] = check_agreement(system, served, check[1], config.min_cosine)

        async def sweep() -> None:
            caller = HttpEmbedCaller(server.url, path="/embeddings", body=openai_body)
            try:
                for concurrency in config.concurrencies:
                    with CpuMeter(server.pid) as meter:
                        point = await closed_loop(
                            eager_call(caller), workload.requests, concurrency, config.load, workload=workload.name
                        )
                    cpu = meter.result
                    points.append(
                        replace(
                            point,
                            system=system,
                            client_cpu_cores=cpu and cpu.client_cores,
                            server_cpu_cores=cpu and cpu.server_cores,
                            other_cpu_cores=cpu and cpu.other_cores,
                        )
                    )
                    progress.update(1)
            finally:
                await caller.close()

        asyncio.run(sweep())
    return info, points


def library_request(config: PeerConfig, folder: Path, workload: Workload, check_texts: list[str]) -> dict:
    """The JSON request aisle.benchmarks.peer_st reads (same texts as the servers get, in order)."""
    return {
        "model_dir": str(folder),
        "file_name": ONNX_FILE,
        "texts": workload.texts(QUERY),
        "check_texts": check_texts,
        "batch_sizes": list(config.concurrencies),
        "duration_s": config.duration_s,
        "flags": {"model_kwargs.file_name": ONNX_FILE, "model_kwargs.provider": "CPUExecutionProvider"},
    }


def run_library(config: PeerConfig, folder: Path, workload: Workload, check_texts: list[str]) -> dict:
    """Run aisle.benchmarks.peer_st in the peers venv; its parsed JSON plus the CPU it used."""
    request_path = config.work / "sentence-transformers-request.json"
    request_path.write_text(json.dumps(library_request(config, folder, workload, check_texts)))
    log = config.work / f"{ST_SYSTEM}.log"
    command = [str(config.env.python), str(Path(__file__).with_name("peer_st.py")), str(request_path)]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        with CpuMeter(process.pid) as meter:
            stdout, _ = process.communicate()
    if process.returncode != 0:
        raise BenchmarkError(
            f"sentence-transformers library run failed (exit {process.returncode}); {log} ends with:\n"
            f"{log.read_text(errors='replace')[-2000:]}"
        )
    result = json.loads(stdout.strip().splitlines()[-1])
    result["cpu_cores"] = meter.result and meter.result.server_cores
    result["other_cpu_cores"] = meter.result and meter.result.other_cores
    return result


def run_peers(config: PeerConfig, workload: Workload, reference: Reference, progress) -> PeerResults:
    """Prepare the model folder, then measure each infinity engine and the library, one at a time.

    A peer that fails to start, disagrees with aisle, or fails under load is recorded in failures and
    the next one runs: one broken peer does not cost the rest of the comparison.
    """
    config.work.mkdir(parents=True, exist_ok=True)
    folder = prepare_model_folder(config.env, config.model_dir, config.work / "model")
    check_texts, reference_vectors = check_queries(workload, reference)
    results = PeerResults()
    for engine in config.engines:
        system = infinity_system(engine)
        progress.set_postfix_str(system)
        try:
            check = (check_texts, reference_vectors)
            info, points = _infinity_points(config, engine, folder, workload, check, progress)
        except BenchmarkError as e:
            results.failures.append({"system": system, "workload": workload.name, "error": str(e)})
            results.peers[system] = {"engine": engine, "flags": infinity_flags(engine), "status": "failed"}
            continue
        results.peers[system] = {**info, "status": "measured"}
        results.points += points
    progress.set_postfix_str(ST_SYSTEM)
    try:
        library = run_library(config, folder, workload, check_texts)
        cosine = check_agreement(ST_SYSTEM, np.asarray(library.pop("embeddings")), reference_vectors, config.min_cosine)
    except BenchmarkError as e:
        results.failures.append({"system": ST_SYSTEM, "workload": workload.name, "error": str(e)})
        results.peers[ST_SYSTEM] = {"status": "failed"}
    else:
        runs = library.pop("runs")
        results.peers[ST_SYSTEM] = {**library, "min_cosine": cosine, "status": "measured"}
        results.library = [{"system": ST_SYSTEM, **run} for run in runs]
    progress.update(1)
    return results


def aisle_reference(graph: Path, model_dir: Path, buckets: Sequence[int], threads: int) -> Reference:
    """aisle's embeddings of texts: its tokenizer and length buckets, then the served ONNX graph in ORT."""
    from aisle.benchmarks.baselines import ort_session
    from aisle.schema import ATTENTION_MASK, INPUT_IDS
    from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

    def embed(texts: list[str]) -> np.ndarray:
        bucketing = Bucketing(tuple(buckets))
        tokenizer = load_tokenizer(model_dir, bucketing.max_length)
        session = ort_session(graph, threads)
        ids, mask = encode_batch(tokenizer, texts, bucketing)
        return session.run([session.get_outputs()[0].name], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0]

    return embed


def suite_peer_config(config, out: Path) -> PeerConfig:
    """The peers of a suite run (config: aisle.benchmarks.suite.SuiteConfig); builds the venv if missing."""
    from aisle.modeling.checkpoint import QUERY_ENCODER_DIR

    return PeerConfig(
        env=PeerEnv(Path(config.peers_venv)).ensure(),
        model_dir=Path(config.checkpoint) / QUERY_ENCODER_DIR,
        work=Path(out) / "peers",
        concurrencies=config.levels.query_levels,
        load=config.load_config(),
        duration_s=config.duration_s,
        start_timeout_s=config.server_start_timeout_s,
    )


def check_queries(workload: Workload, reference: Reference, count: int = 8) -> tuple[list[str], np.ndarray]:
    """The first `count` distinct workload queries and aisle's embeddings of them."""
    texts = list(dict.fromkeys(workload.texts(QUERY)))[:count]
    return texts, np.asarray(reference(texts), dtype=np.float64)


def planned_steps(config: PeerConfig) -> int:
    """Progress steps of run_peers: one per infinity load point, one for the library run."""
    return len(config.engines) * len(config.concurrencies) + 1


# --- goals -----------------------------------------------------------------------------------------


def peer_targets(results: dict, levels) -> list[Goal]:
    """The goals against the peers (levels: suite.TargetLevels), from the same run; [] without peers.

    aisle's side is its SDK (Python generator) embed_query point: the same generator the peers get.
    """
    if "peers" not in results:
        return []
    targets = []
    c = levels.throughput_concurrency
    aisle_c = find_point(results, "embed_query", generator="python", level=c)
    engines = [s for s in results["peers"] if s.startswith("infinity-")]
    at_c = [p for s in engines if (p := find_point(results, "embed_query", generator="python", level=c, system=s))]
    best = max(at_c, key=lambda p: p["throughput_rps"], default=None)
    aisle_rps = aisle_c["throughput_rps"] if aisle_c else None
    t = Goal(
        f"embed_query throughput, aisle / infinity-emb's best engine ({best['system'] if best else 'none'}), "
        f"concurrency {c}",
        aisle_rps / best["throughput_rps"] if aisle_rps is not None and best else None,
        2.0,
        "x",
        ">=",
    )
    targets.append(with_note(t, lambda: f"aisle: {profile(aisle_c)}. Peer: {profile(best)}.", {"aisle": aisle_c,
                              "peer": best}))  # fmt: skip
    for level in levels.query_levels:
        aisle_l = find_point(results, "embed_query", generator="python", level=level)
        peers_l = [p for s in engines if (p := find_point(results, "embed_query", generator="python", level=level,
                                                           system=s))]  # fmt: skip
        lowest = min(peers_l, key=lambda p: p["latency"]["p99_ms"], default=None)
        t = Goal(
            f"embed_query p99, aisle / lowest peer p99 ({lowest['system'] if lowest else 'none'}), concurrency "
            f"{level} (below 1 = aisle lower than every peer)",
            aisle_l["latency"]["p99_ms"] / lowest["latency"]["p99_ms"] if aisle_l and lowest else None,
            1.0,
            "ratio",
            "<=",
        )
        targets.append(with_note(t, lambda a=aisle_l, p=lowest: f"aisle: {profile(a)}. Peer: {profile(p)}.",
                                  {"aisle": aisle_l, "peer": lowest}))  # fmt: skip
    for level in [lv for lv in levels.query_levels if lv > 1]:
        aisle_l = find_point(results, "embed_query", generator="python", level=level)
        ort = find_ort(results, "buckets", level)
        t = Goal(
            f"embed_query throughput, aisle (SDK, concurrency {level}) / in-process ONNX Runtime on the same graph "
            f"(raw, length buckets, batch {level})",
            aisle_l["throughput_rps"] / ort["throughput_seqs"] if aisle_l and ort else None,
            0.8,
            "ratio",
            ">=",
        )
        targets.append(with_note(t, lambda a=aisle_l: f"aisle: {profile(a)}.", {"aisle": aisle_l, "ORT": ort}))
    return targets
