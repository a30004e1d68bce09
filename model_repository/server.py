"""Start and stop a tritonserver: the one shipped in the nvidia-pytriton wheel (no Docker), or the
NGC image's (ServerConfig.tritonserver), with the same control, drain, watchdog and readiness.

The wheel carries a full tritonserver (python backend only) but not a ready-to-use layout: its
backends/python/ lacks the stub for the running Python, and the binary and stub need the wheel's
bundled libraries and libpython on LD_LIBRARY_PATH. `backends_dir()` builds (once, cached) a
backends directory with the stub beside libtriton_python.so, `TritonServer.env()` sets the library
and import paths, and `TritonServer.command()` is the plain tritonserver command line, which works
by itself with that environment.

The server is bound to loopback, refuses to start over ports in use, and is started in its own
process group so that stopping it never leaves python stubs behind. Its python backend names its
shared-memory regions with a prefix of this server's own (`shm-region-prefix-name`, as PyTriton
does), so that what a server that died (SIGKILL, the OOM killer) leaves in /dev/shm, which is
memory until someone removes it, is removed when the launcher stops it.

Draining: on SIGTERM, tritonserver 2.51 stops every model's scheduler at once, so an ensemble
request caught between two steps fails ("scheduler for model has stopped accepting new inference
requests"). The server therefore runs in explicit model-control mode (loading everything at start)
and stop() first unloads the ensembles, the public entry points: Triton refuses new requests to
them and lets the in-flight ones finish, their composing models still loaded. Only then SIGTERM.

Control API: the model-repository API (load/unload/index) is restricted, on HTTP and gRPC, to
requests carrying a header with a token made at each start (`--http-restricted-api`,
`--grpc-restricted-protocol`): the endpoints may listen beyond loopback, the control API answers
only the launcher (drain, and the stub watchdog).

Stub watchdog (aisle.model_repository.watchdog): while the server runs, a thread reloads the model
of any python stub that dies, so readiness turns false at once and service comes back by itself.

Readiness (aisle.model_repository.readiness, ServerConfig.health_port): GET /ready on a port of the
launcher answers 200 only when Triton is ready and every ensemble of the repository is READY.
Triton 2.51's own /v2/health/ready does not count a model that was unloaded (explicit mode): with
query_encoder unloaded and its ensembles UNAVAILABLE it answered 200 as soon as the unload had
finished, and again at the start of the load that followed (200 at 4 ms into it, 503 by 17 ms;
measured on the embedded repository). The watchdog recovers a stub by exactly that unload and
load, so a probe of Triton's endpoint can admit a replica that is missing models (one drill run
saw it: 158 failed requests).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from aisle.export.repo_format import REPO_MANIFEST, RepoManifest
from aisle.model_repository.catalog_store import CATALOG_STATE_ENV, failed_catalog_switches
from aisle.model_repository.errors import ServerStartError, ServingError
from aisle.model_repository.readiness import READY_PATH, ReadinessEndpoint
from aisle.model_repository.watchdog import SHM_DIR, ControlApi, StubWatchdog

#: Lines of the server log quoted in a ServerStartError.
LOG_TAIL_LINES = 60
#: How often start() polls readiness.
POLL_INTERVAL_S = 0.5
#: How long a stop waits for the last of the server's output to be copied (log_stdout).
OUTPUT_DRAIN_S = 5.0
#: Header that unlocks the model-repository API of a server this launcher started.
CONTROL_HEADER = "aisle-control-token"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Run in the child before exec: the kernel SIGKILLs the server if the process that started it dies.

    The server runs in its own session (so stop() can signal all its stubs at once); without this a
    crashed or killed test run would leave it listening.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def answers_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether GET `url` answers 200, as a balancer's readiness check asks (refused, timed out or
    any other answer: not ready)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def is_ready(http_url: str, timeout_s: float = 2.0) -> bool:
    """Whether the tritonserver at `http_url` answers GET /v2/health/ready with 200."""
    return answers_ok(f"http://{http_url}/v2/health/ready", timeout_s)


def pytriton_home() -> Path:
    """The wheel's tritonserver tree (bin/, backends/, python_backend_stubs/, caches/)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("nvidia-pytriton is not installed: pip install 'aisle[serve]'")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def pytriton_libs() -> Path:
    """The wheel's bundled shared libraries (libcudart, libb64, ... that binary and stub link against)."""
    return pytriton_home().parent.parent / "nvidia_pytriton.libs"


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def backends_dir(cache_root: Path | None = None) -> Path:
    """A copy of the wheel's backends/ with this Python's stub next to libtriton_python.so.

    Cached per wheel and Python version under ~/.cache/aisle (or `cache_root`); built in a
    temporary directory and renamed into place, so concurrent test sessions never see half a copy.
    """
    root = cache_root or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aisle"
    version = importlib.metadata.version("nvidia-pytriton")
    target = root / f"backends-{version}-py{python_version_tag()}"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    home = pytriton_home()
    stub = home / "python_backend_stubs" / python_version_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerStartError(f"{stub}: nvidia-pytriton {version} ships no python backend stub for this Python")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="backends-", dir=root))
    shutil.copytree(home / "backends", staging / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, staging / "backends" / "python" / stub.name)
    try:
        (staging / "backends").rename(target)
    except OSError:
        if not (target / "python" / stub.name).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` right now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (all held open while choosing, so none is picked twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def copy_output(source: IO[bytes], log_path: Path) -> None:
    """tritonserver's output, line by line, appended to its log file and echoed on stdout, until the
    server and its stubs (which share the pipe) have all exited.

    The pipe is drained to the end whatever happens to stdout (closed, a broken pipe): a full pipe
    would block the server at its next log line.
    """
    echo = True
    with source, log_path.open("ab") as log:
        for line in iter(source.readline, b""):
            log.write(line)
            log.flush()
            if echo:
                try:
                    sys.stdout.write(line.decode("utf-8", errors="replace"))
                    sys.stdout.flush()
                except (OSError, ValueError):  # stdout gone; the log file still gets every line
                    echo = False


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on the port. SO_REUSEADDR, as tritonserver's own listeners set it: the
    closed connections of a server just stopped (TIME_WAIT, up to a minute) must not block a restart."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


@dataclass
class ServerConfig:
    """Where the server listens and what it serves.

    repo: a rendered model repository (embedded target).
    host: address of all three endpoints; loopback by default so nothing is exposed by accident.
    extra_args: appended verbatim to the tritonserver command line (e.g. "--model-control-mode=explicit").
    log_verbose: tritonserver's --log-verbose level (0 = info/warnings/errors only).
    response_cache_mb: size of Triton's local response cache; 0 starts the server without one.
        With a cache, the models whose config enables it (the query encoder) answer a repeated
        input from memory: a head query costs its tokenizer hop only. Off by default so that
        benchmarks measure the models, not the cache.
    watch_stubs: run the stub watchdog (reload the model of a python stub that dies). Off, a dead
        stub stays dead and readiness stays true (tritonserver 2.51's own behaviour).
    tritonserver: a tritonserver executable with its own backends and environment (the NGC image's
        `tritonserver`, or a script that execs one with the arguments it is given, like the
        tensorrt target's start_tritonserver.sh); None: the python-only one of the nvidia-pytriton
        wheel, set up by this module.
    health_port: where the launcher answers GET /ready (200 only when every ensemble is READY; see
        the module docstring) on `host`; None: no such endpoint.
    log_stdout: also copy tritonserver's output, line by line, to this process's stdout. In a
        container that is what the platform collects (`kubectl logs`); the log file stays too, for
        the start-up error's tail.
    """

    repo: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    log_verbose: int = 0
    response_cache_mb: int = 0
    watch_stubs: bool = True
    tritonserver: Path | None = None
    health_port: int | None = None
    log_stdout: bool = False

    def __post_init__(self) -> None:
        if self.response_cache_mb < 0:
            raise ValueError(f"ServerConfig.response_cache_mb={self.response_cache_mb} must be >= 0")


class TritonServer:
    """One tritonserver process: `with TritonServer(config) as server:` starts, waits ready, stops."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None
        self._output_copier: threading.Thread | None = None
        self._control_token = secrets.token_urlsafe(24)
        #: Starts the name of every shared-memory region of this server's python stubs.
        self.shm_prefix = f"aisle_{os.getpid()}_{secrets.token_hex(4)}_"
        self.watchdog: StubWatchdog | None = None
        self.readiness: ReadinessEndpoint | None = None

    @property
    def control(self) -> ControlApi:
        """The model-repository API of this server, with the header only this launcher knows."""
        return ControlApi(self.http_url, CONTROL_HEADER, self._control_token)

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.config.host}:{self.config.metrics_port}"

    @property
    def readiness_url(self) -> str:
        """What a balancer should probe: the launcher's /ready when it answers one, else Triton's."""
        c = self.config
        if c.health_port is not None:
            return f"http://{c.host}:{c.health_port}{READY_PATH}"
        return f"http://{self.http_url}/v2/health/ready"

    @property
    def log_path(self) -> Path | None:
        """The server's combined stdout/stderr of the current or last run."""
        return self._log_dir / "tritonserver.log" if self._log_dir else None

    @property
    def catalog_state_dir(self) -> Path | None:
        """Where this run's catalog readers report a served version they could not open."""
        return self._log_dir / "catalog" if self._log_dir else None

    def command(self) -> list[str]:
        """The plain tritonserver command line (run it with env())."""
        c = self.config
        runtime = (
            [str(c.tritonserver)]
            if c.tritonserver
            else [str(pytriton_home() / "bin" / "tritonserver"), f"--backend-directory={backends_dir()}"]
        )
        return [
            *runtime,
            f"--model-repository={Path(c.repo).resolve()}",
            f"--grpc-address={c.host}",
            f"--grpc-port={c.grpc_port}",
            f"--http-address={c.host}",
            f"--http-port={c.http_port}",
            f"--metrics-address={c.host}",
            f"--metrics-port={c.metrics_port}",
            f"--log-verbose={c.log_verbose}",
            f"--http-restricted-api=model-repository:{CONTROL_HEADER}={self._control_token}",
            f"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}={self._control_token}",
            # Explicit control (everything loaded at start) lets stop() unload ensembles to drain them.
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self._cache_args(),
            *c.extra_args,
        ]

    def display_command(self) -> list[str]:
        """command() with the control token masked, for printing and logs."""
        return [part.replace(self._control_token, "<token>") for part in self.command()]

    def _cache_args(self) -> list[str]:
        """The response cache flags: the wheel's local cache implementation, sized in bytes."""
        if not self.config.response_cache_mb:
            return []
        size = f"--cache-config=local,size={self.config.response_cache_mb * 2**20}"
        return [size] if self.config.tritonserver else [f"--cache-directory={pytriton_home() / 'caches'}", size]

    def env(self) -> dict[str, str]:
        """os.environ plus the library paths and the Python the python stubs need.

        LD_LIBRARY_PATH: the wheel's bundled libraries and the directory of libpython.
        PATH: this environment's bin/ first. The stub embeds Python in isolated mode (PYTHONPATH
        and PYTHONHOME are ignored) and derives sys.prefix from the `python3` it finds on PATH; a
        venv's python3 makes the venv's site-packages, .pth hooks included (an editable install of
        aisle is importable only through one), the stub's site directory.
        An external tritonserver (ServerConfig.tritonserver) runs in os.environ as it is.
        """
        env = dict(os.environ)
        if self.config.tritonserver:
            return env
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(pytriton_libs()), libdir, env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.prefix) / "bin"), env.get("PATH", "")) if p)
        return env

    @property
    def pid(self) -> int:
        """The tritonserver process id (its python stubs are its children)."""
        if self._process is None:
            raise ServingError("tritonserver is not running")
        return self._process.pid

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        """True when the server answers GET /v2/health/ready with 200 (all models loaded and warm)."""
        return is_ready(self.http_url)

    def start(self, timeout_s: float = 240.0) -> None:
        """Start the server and block until it is ready; raise ServerStartError with the log tail if not."""
        if self._process is not None:
            raise ServerStartError(f"server on {self.grpc_url} is already started")
        c = self.config
        ports = {"grpc_port": c.grpc_port, "http_port": c.http_port, "metrics_port": c.metrics_port}
        if c.health_port is not None:
            ports["health_port"] = c.health_port
        for name, port in ports.items():
            if port_in_use(c.host, port):
                raise ServerStartError(
                    f"{name}={port} on {c.host} is already in use (another tritonserver?); pick a free port"
                )
        repo = Path(c.repo)
        if not repo.is_dir():
            raise ServerStartError(f"{repo}: model repository does not exist")
        self._log_dir = Path(tempfile.mkdtemp(prefix="aisle-tritonserver-"))
        assert self.log_path is not None and self.catalog_state_dir is not None
        self.catalog_state_dir.mkdir()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                env={**self.env(), CATALOG_STATE_ENV: str(self.catalog_state_dir)},
                stdout=subprocess.PIPE if c.log_stdout else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        if c.log_stdout:
            assert self._process.stdout is not None
            self._output_copier = threading.Thread(
                target=copy_output, args=(self._process.stdout, self.log_path), name="tritonserver-output", daemon=True
            )
            self._output_copier.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                # A server that aborts (seen: boost::interprocess::lock_exception) orphans the stubs
                # it had started; they live on in its process group.
                self._kill_leftover_stubs(self._process.pid)
                self._process = None
                self._finish_output()
                self.remove_shm_regions()
                raise ServerStartError(f"tritonserver exited with code {code} during start-up:\n{self.log_tail()}")
            if self.is_ready():
                self._start_watchdog()
                if c.health_port is not None:
                    self.readiness = ReadinessEndpoint(c.host, c.health_port, self.not_ready_reason)
                    self.readiness.start()
                return
            time.sleep(POLL_INTERVAL_S)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"tritonserver not ready after timeout_s={timeout_s}:\n{tail}")

    def _start_watchdog(self) -> None:
        if not self.config.watch_stubs or self._process is None:
            return
        self.watchdog = StubWatchdog(self._process.pid, self.control, on_event=self._report, shm_prefix=self.shm_prefix)
        self.watchdog.start()

    @staticmethod
    def _report(message: str) -> None:
        print(f"aisle watchdog: {message}", file=sys.stderr, flush=True)

    @functools.cached_property
    def ensembles(self) -> list[str]:
        """The public ensembles of the repository's schema (none for a repository without an aisle
        manifest); read once, not at every readiness probe."""
        if not (Path(self.config.repo) / REPO_MANIFEST).is_file():
            return []
        return sorted(e.name for e in RepoManifest.load(self.config.repo).schema().ensembles)

    def not_ready_reason(self) -> str | None:
        """None when the replica can serve every ensemble; else why not (what GET /ready answers)."""
        if not self.is_running():
            return "tritonserver is not running"
        if not self.is_ready():
            return "tritonserver's /v2/health/ready is not 200"
        try:
            states = {m["name"]: m.get("state", "") for m in self.control.index()}
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"tritonserver's model index did not answer: {e}"
        missing = [f"{name} {states.get(name) or 'absent'}" for name in self.ensembles if states.get(name) != "READY"]
        if missing:
            return "ensembles not READY: " + ", ".join(missing)
        # A catalog reader still answering from an older version than the served one: this replica
        # would return what the catalog no longer holds (model_repository/catalog_store.py).
        failed = failed_catalog_switches(self.catalog_state_dir) if self.catalog_state_dir else []
        return "not serving the served catalog version: " + "; ".join(failed) if failed else None

    def drain(self, timeout_s: float = 30.0) -> None:
        """Unload the ensembles and wait up to `timeout_s` until their in-flight requests are done.

        New requests to an ensemble fail with NOT_FOUND from the moment its unload starts; requests
        already inside it finish normally. A repository without an aisle manifest is not drained.
        """
        ensembles = self.ensembles
        if not ensembles:
            return
        for name in ensembles:
            self.control.unload(name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            index = self.control.index()
            states = {m["name"]: m.get("state", "") for m in index if m["name"] in ensembles}
            if all(state == "UNAVAILABLE" for state in states.values()):
                return
            time.sleep(POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Drain the ensembles (drain()), then SIGTERM the server, which unloads the models and their
        stubs; SIGKILL its whole process group if it is not gone within `timeout_s`.

        Only the server gets SIGTERM: its stubs exit when it unloads them. The stub watchdog is
        stopped first: those exits are no deaths to recover from. The readiness endpoint goes first
        of all (connection refused: a probe's "not ready").
        """
        if self.readiness is not None:
            self.readiness.stop()
            self.readiness = None
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.is_running():
            try:
                self.drain(timeout_s)
            except OSError:
                pass  # not answering HTTP (stuck or still starting): SIGTERM it anyway
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._kill_leftover_stubs(process.pid)
        self._finish_output()
        self.remove_shm_regions()

    def remove_shm_regions(self) -> list[Path]:
        """Remove this server's shared-memory regions; returns those that were left.

        For a server and stubs that are gone: a server that stops cleanly removes its own, one that
        was killed leaves them all. (Removing a region a live process has mapped would only hide it:
        the mapping stays valid.)
        """
        left = sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))
        for region in left:
            region.unlink(missing_ok=True)
        return left

    def _finish_output(self) -> None:
        """Wait for the output copier to reach the end of the server's output (log_stdout)."""
        copier, self._output_copier = self._output_copier, None
        if copier is not None:
            copier.join(timeout=OUTPUT_DRAIN_S)

    @staticmethod
    def _kill_leftover_stubs(pgid: int) -> None:
        """Python stubs exit with their server; SIGKILL any of its process group that did not."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class _StopRequested(Exception):
    """Raised by the SIGINT/SIGTERM handler of serve_until_signalled."""


def serve_until_signalled(config: ServerConfig, *, start_timeout_s: float = 240.0) -> None:
    """Start, print endpoints and the plain command, serve until SIGINT/SIGTERM, then drain and stop.

    The handlers are installed before start-up so a signal during loading also stops the server
    (it runs in its own session and would otherwise outlive this process).
    """

    def request_stop(signum: int, frame: object) -> None:
        raise _StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(config)
    try:
        server.start(timeout_s=start_timeout_s)
        print(
            f"ready: grpc {server.grpc_url}  http http://{server.http_url}  metrics http://{server.metrics_url}/metrics"
        )
        if server.readiness is not None:
            print(f"readiness: http://{config.host}:{config.health_port}/ready (every ensemble READY)")
        print(f"repository: {Path(config.repo).resolve()}")
        print("plain command (what this runs):")
        if config.tritonserver is None:
            env = server.env()
            print(f"  LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']} PATH={Path(sys.prefix) / 'bin'}:$PATH \\")
        print("  " + " \\\n    ".join(server.display_command()))
        print(f"server log: {server.log_path}")
        if server.watchdog is not None:
            print("stub watchdog on: a python stub that dies has its model reloaded (not ready meanwhile)")
        print("Ctrl-C or SIGTERM drains in-flight requests and stops.", flush=True)
        while server.is_running():
            time.sleep(1.0)
        raise ServingError(f"tritonserver exited unexpectedly:\n{server.log_tail()}")
    except _StopRequested as stop:
        print(f"{stop}: draining in-flight requests and stopping", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
