"""The baseline a user would build without Triton: HF transformers (PyTorch eager) behind http.server.

One request = one text, tokenised by the HF tokenizer and encoded by the same tower (mean pooling
+ L2 norm) in its own thread, with no batching across requests: the straightforward service a
team writes first. It runs in its own process (like tritonserver) so it does not share the load
generator's interpreter, and it is driven by the same load generator at the same concurrency.

Threads: each request runs torch on its handler thread. With torch's default intra-op threads (one
per core) concurrent requests oversubscribe the cores and OpenMP barriers stall whenever a core is
taken (measured here: 2 threads 77-716 ms per query, 1 thread 19 ms, on busy shared cores), so the
suite runs it with `torch_threads=1` (OMP_NUM_THREADS=1), the usual setting for a threaded server.

Run by hand: `python -m aisle.benchmarks.eager_server --model-dir CKPT/query_encoder --port 8500
--torch-threads 1`, then POST {"text": "..."} to /embed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aisle.benchmarks.errors import BenchmarkError

EMBED_PATH = "/embed"
HEALTH_PATH = "/health"


def _handler(tokenizer, tower) -> type[BaseHTTPRequestHandler]:
    import torch

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per client worker
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
            """Silence per-request logging: it would cost more than the request."""

        def _reply(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._reply(200 if self.path == HEALTH_PATH else 404, {"ready": self.path == HEALTH_PATH})

        def do_POST(self) -> None:
            if self.path != EMBED_PATH:
                self._reply(404, {"error": f"unknown path {self.path}"})
                return
            text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
            encoded = tokenizer(text, return_tensors="pt", truncation=True)
            with torch.inference_mode():
                embedding = tower(encoded["input_ids"], encoded["attention_mask"])[0]
            self._reply(200, {"embedding": embedding.tolist()})

    return Handler


def serve(model_dir: Path, host: str, port: int, torch_threads: int | None) -> None:
    """Load the tower and its tokenizer and serve until killed."""
    import torch
    from transformers import AutoTokenizer

    from aisle.modeling.towers import TextTower

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tower = TextTower.from_pretrained(model_dir).eval()
    server = ThreadingHTTPServer((host, port), _handler(tokenizer, tower))
    server.daemon_threads = True
    server.serve_forever()


class EagerServer:
    """Context manager running `serve` in a child process; `url` is host:port once ready."""

    def __init__(
        self,
        model_dir: Path,
        port: int,
        log_path: Path,
        *,
        torch_threads: int | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 120.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.torch_threads = torch_threads
        self.log_path = Path(log_path)
        self.host, self.port = host, port
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> EagerServer:
        command = [sys.executable, "-m", "aisle.benchmarks.eager_server", "--model-dir", str(self.model_dir)]
        command += ["--host", self.host, "--port", str(self.port)]
        env = dict(os.environ)
        if self.torch_threads is not None:
            command += ["--torch-threads", str(self.torch_threads)]
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.torch_threads)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BenchmarkError(
                    f"eager baseline server ({self.model_dir}) exited with {self.process.returncode}; "
                    f"{self.log_path} ends with: {tail}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.url}{HEALTH_PATH}", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise BenchmarkError(f"eager baseline server on {self.url} not ready after {self.start_timeout_s} s")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def eager_body(text: str) -> dict:
    """The eager server's request body for one query."""
    return {"text": text}


class HttpEmbedCaller:
    """Async HTTP/1.1 keep-alive client: `await caller(text)` POSTs `body(text)` to `path` -> JSON reply.

    Connections are pooled so each concurrent worker reuses one, as a real client library would.
    The same client drives the eager server and the HTTP peers (aisle.benchmarks.peers), so every
    HTTP system pays the same client cost.
    """

    def __init__(self, url: str, *, path: str = EMBED_PATH, body: Callable[[str], dict] = eager_body) -> None:
        self.host, port = url.rsplit(":", 1)
        self.port = int(port)
        self.path, self.body = path, body
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __call__(self, text: str) -> dict:
        reader, writer = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        body = json.dumps(self.body(text)).encode()
        head = f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        writer.write(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status = (await reader.readline()).split(b" ", 2)
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        self._idle.append((reader, writer))
        if len(status) < 2 or status[1] != b"200":
            where = f"{self.host}:{self.port}{self.path}"
            raise BenchmarkError(f"HTTP server {where} answered {status!r}: {payload[:200]!r}")
        return json.loads(payload)

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="HF model directory (e.g. CKPT/query_encoder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--torch-threads", type=int, help="intra-op threads per request (default: torch's)")
    args = parser.parse_args(argv)
    serve(args.model_dir, args.host, args.port, args.torch_threads)


if __name__ == "__main__":
    main()
