"""Replicas this process owns: tritonservers from one repository that a drill can SIGKILL and restart.

Why not TritonServer.start(): a drill forks while gRPC threads are busy, and Python code run
between fork and exec (the launcher's preexec_fn) then crashes the child (SIGSEGV, seen here). So a
Replica runs TritonServer's own command line and environment in its own process group through
`setpriv --pdeathsig KILL` (the same "die with the parent" flag, set by a plain exec'd program), and
keeps its pid: for SIGKILL of the whole group (server and python stubs) and for reading the
group's memory. A restarted replica comes back on the same ports (clients and proxies know only
those) and with the same shared-memory prefix (TritonServer.shm_prefix), whose regions a kill
leaves behind and kill() removes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from aisle.benchmarks.errors import BenchmarkError
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

#: Loading every model of the repository on a busy 2-core machine, under load from the others.
START_TIMEOUT_S = 300.0
POLL_S = 0.25
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def dying_with_parent(command: list[str]) -> list[str]:
    """`command` run so that the kernel SIGKILLs it when the thread that started it exits.

    Start such commands from a thread that lives as long as they should (the main thread).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise BenchmarkError("setpriv (util-linux) is needed to tie drill processes to their parent")
    return [setpriv, "--pdeathsig", "KILL", "--", *command]


def group_pids(pgid: int) -> list[int]:
    """Every live process of group `pgid` (the server and its python stubs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in group `pgid` (the server and its python stubs)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat (pgrp), counted after "pid (comm)"
                total += int(fields[21]) * PAGE_BYTES  # field 24: rss in pages
        except (OSError, IndexError, ValueError):
            continue  # the process exited while we read
    return total


class Replica:
    """One tritonserver on fixed loopback ports, started, killed and restarted by this process."""

    def __init__(self, repo: Path, name: str) -> None:
        grpc_port, http_port, metrics_port = free_ports(3)
        self.name = name
        self.server = TritonServer(
            ServerConfig(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
        )
        self.log_path = Path(tempfile.mkdtemp(prefix=f"aisle-{name}-")) / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server (same ports as before, if restarted) and block until it is ready."""
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the server process without waiting.

        Call it from a thread that outlives the server (the main thread): the server dies with the
        *thread* that started it (PR_SET_PDEATHSIG), so a worker thread must only wait_ready().
        """
        if self._process is not None and self._process.poll() is None:
            raise BenchmarkError(f"replica {self.name} on {self.grpc_url} is already running")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                dying_with_parent(self.server.command()),
                env=self.server.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the launched server is ready; BenchmarkError (and the server killed) if not."""
        process = self._process
        if process is None:
            raise BenchmarkError(f"replica {self.name} was not launched")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchmarkError(
                    f"replica {self.name} exited with code {process.returncode} during start-up; log: {self.log_path}"
                )
            if self.server.is_ready():
                return
            time.sleep(POLL_S)
        self.kill()
        raise BenchmarkError(f"replica {self.name} not ready after {timeout_s} s; log: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a crashed pod), reap the server, and remove the
        shared memory it leaves behind (a restarted pod gets a fresh /dev/shm; this machine does not)."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        deadline = time.monotonic() + 10
        while group_pids(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # stubs are reaped by init, a moment after the server
        self.server.remove_shm_regions()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Drain the ensembles and SIGTERM the server; SIGKILL the group if it lingers."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.server.drain(timeout_s)
            except OSError:
                pass  # not answering HTTP: terminate it anyway
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # the stubs of a server that is gone, or a server that did not stop

    def rss_bytes(self) -> int:
        return 0 if self.pid is None else group_rss_bytes(self.pid)


class Fleet:
    """`count` replicas of one repository: `with Fleet(repo, 3) as fleet:` starts them in parallel
    and always stops every one."""

    def __init__(self, repo: Path, count: int) -> None:
        if count < 1:
            raise BenchmarkError(f"a fleet needs at least one replica (got count={count})")
        self.repo = Path(repo)
        self.replicas = [Replica(repo, f"replica{k}") for k in range(count)]

    @property
    def grpc_urls(self) -> list[str]:
        return [r.grpc_url for r in self.replicas]

    def start(self) -> None:
        """Launch every replica from this thread, then wait for all (they load in parallel)."""
        for replica in self.replicas:
            replica.launch()
        for replica in self.replicas:
            replica.wait_ready()

    def stop(self) -> None:
        """Stop every replica (in parallel: each waits for its own drain)."""
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda r: r.stop(), self.replicas))

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
