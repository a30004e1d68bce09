"""nginx as an L7 gRPC proxy in front of replicas: what a Kubernetes ingress does, on loopback.

Who retries what behind a proxy: nginx sees connections and HTTP status, not gRPC status (Triton
answers errors as HTTP 200 with a grpc-status trailer). So nginx fails over what it can see — a
replica that refuses connections or dies mid-request (`grpc_next_upstream error timeout`, with
`non_idempotent` because every gRPC call is a POST and every aisle call is a safe read) and sits a
failed replica out for `fail_timeout` — and the client's own retry policy, against the single proxy
endpoint, covers the rest (a draining replica's NOT_FOUND, a dead stub's INTERNAL): each retry
passes through nginx's round robin again, to the next replica.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aisle.benchmarks.drills.fleet import dying_with_parent
from aisle.benchmarks.errors import BenchmarkError
from aisle.export.repo_format import RepoManifest
from aisle.model_repository.server import free_port

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ProxyConfig:
    """The nginx knobs that decide failover.

    fail_timeout_s: after a failed attempt, the replica gets no requests for this long (then one
        request probes it); shorter brings a restarted replica back sooner.
    next_upstream_tries: attempts per request across replicas (the first included).
    connect_timeout_s: a replica that does not accept the connection within this is skipped.
    max_body_bytes: larger request bodies are refused with RESOURCE_EXHAUSTED before they reach a
        replica (0 = no cap); ServingLimits.max_request_bytes is the cap a repository declares.
    """

    fail_timeout_s: float = 2.0
    next_upstream_tries: int = 3
    connect_timeout_s: float = 1.0
    max_body_bytes: int = 0

    @classmethod
    def for_repository(cls, repo: Path) -> ProxyConfig:
        """The defaults, with bodies capped at the repository's ServingLimits.max_request_bytes."""
        return cls(max_body_bytes=RepoManifest.load(repo).schema().limits.max_request_bytes)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_conf(upstreams: list[str], port: int, config: ProxyConfig) -> str:
    """nginx.conf for a plaintext HTTP/2 listener on loopback that grpc_passes to `upstreams`."""
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout={config.fail_timeout_s:g}s;" for u in upstreams)
    return f"""worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    client_max_body_size {config.max_body_bytes};
    # Request bodies stay in memory: run as root, nginx's workers (user nobody) cannot write the
    # private temporary directory this process created.
    client_body_buffer_size 8m;
    upstream aisle_replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://aisle_replicas;
            grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            grpc_next_upstream_tries {config.next_upstream_tries};
            grpc_connect_timeout {config.connect_timeout_s:g}s;
            grpc_read_timeout 120s;
            grpc_send_timeout 120s;
        }}
        # A body over client_max_body_size, answered as gRPC (grpc-status 8) rather than as an
        # HTTP 413 page, which gRPC clients report as UNKNOWN.
        error_page 413 = @too_large;
        location @too_large {{
            default_type application/grpc;
            add_header grpc-status 8 always;
            add_header grpc-message "request body over {config.max_body_bytes} bytes (max_request_bytes)" always;
            return 204;
        }}
    }}
}}
"""


class NginxGrpcProxy:
    """nginx started and stopped by this process: `with NginxGrpcProxy(upstreams) as proxy:` ... proxy.url."""

    def __init__(self, upstreams: list[str], config: ProxyConfig | None = None) -> None:
        self.upstreams = upstreams
        self.config = config or ProxyConfig()
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="aisle-nginx-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise BenchmarkError("nginx is not installed (Debian: apt-get install -y nginx-light)")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(nginx_conf(self.upstreams, self.port, self.config))
        with (self.prefix / "stderr.log").open("wb") as stderr:  # the child keeps its own copy
            self._process = subprocess.Popen(
                dying_with_parent([binary, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"]),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self.prefix / "stderr.log").read_text(errors="replace")
                self._process = None
                raise BenchmarkError(f"nginx exited during start-up: {log[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchmarkError(f"nginx not listening on {self.url} after {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGQUIT (graceful: finish requests in flight), then SIGKILL the group if it lingers; its
        prefix directory (config, logs, buffers) goes with it. A failed start has already raised
        with the log's tail."""
        process, self._process = self._process, None
        if process is None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the workers, if the master went first
        except ProcessLookupError:
            pass
        process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxGrpcProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
