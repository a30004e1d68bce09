"""The launcher's readiness endpoint: GET /ready answers 200 only when the replica can serve.

Kubernetes' readinessProbe and any balancer that health-checks over HTTP ask it instead of
Triton's /v2/health/ready, which in explicit model-control mode does not count a model that was
unloaded (see aisle.model_repository.server). What "can serve" means is the launcher's decision
(TritonServer.not_ready_reason); this module only answers it over HTTP:

    GET /ready -> 200 "ready"            every ensemble READY
               -> 503 "<why not>"        e.g. "ensembles not READY: embed_query UNAVAILABLE", or a
                                         catalog reader not serving the served catalog version
    anything else -> 404

It exposes no control: nothing here loads, unloads or changes the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

READY_PATH = "/ready"


class ReadinessEndpoint:
    """A daemon HTTP server on (host, port) answering GET /ready from `not_ready_reason()` (None = ready)."""

    def __init__(self, host: str, port: int, not_ready_reason: Callable[[], str | None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != READY_PATH:
                    self._answer(HTTPStatus.NOT_FOUND, f"not found: ask GET {READY_PATH}")
                    return
                reason = not_ready_reason()
                self._answer(HTTPStatus.OK if reason is None else HTTPStatus.SERVICE_UNAVAILABLE, reason or "ready")

            def _answer(self, status: HTTPStatus, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
                pass  # probes every few seconds: nothing worth a log line

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="aisle-readiness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the socket (a probe then gets connection refused: not ready)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)
