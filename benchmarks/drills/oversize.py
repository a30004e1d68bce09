"""Drill: one client floods the server with 10 MB query texts; does anyone else notice?

    python -m aisle.benchmarks.drills.oversize --repo REPO [--text-mb 10] [--duration 10] [--via-nginx]

Measures, in one run, the latency of an ordinary client's embed_query requests alone, beside a
second client of ordinary queries (the same contention without the size), and while a second
client sends multi-MB texts back to back (goal: p99 within 2x of alone; both second clients run
in processes of their own, as other applications would), what the flood's
own requests cost, and how long a rank request carrying 100,000 candidate or history ids takes to
be refused. Texts are cut to ServingLimits.max_text_bytes before tokenizing, so a 10 MB query
costs its transfer and a few ms, not seconds of tokenizer time that every other query waits behind.

--via-nginx sends every client's requests through nginx in front of the server (what an ingress
does), capped at the repository's ServingLimits.max_request_bytes: a text flood larger than the
largest useful request is refused there (RESOURCE_EXHAUSTED) and never reaches Triton.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from aisle.benchmarks.cpu import process_tree_cpu_s
from aisle.benchmarks.drills.proxy import NginxGrpcProxy, ProxyConfig
from aisle.benchmarks.drills.traffic import ClientProcess, ClosedLoop, Sent, percentile_ms, send
from aisle.export.repo_format import catalog_dir, read_item_ids
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports
from aisle.schema import CANDIDATE_IDS, EMBED_QUERY, QUERY, RANK, USER_HISTORY_IDS

#: Ordinary queries the measured client cycles through.
ORDINARY_QUERIES = (
    "running shoes",
    "waterproof hiking jacket",
    "coffee grinder",
    "wireless earbuds noise cancelling",
    "kids rain boots",
    "stainless steel water bottle 1l",
)
#: Ids in the oversized rank requests (the issue's figure).
HUGE_ID_COUNT = 100_000


@dataclass(frozen=True)
class OversizeResult:
    text_mb: float
    duration_s: float
    alone_requests: int
    alone_p50_ms: float
    alone_p99_ms: float
    paired_p99_ms: float
    #: CPU cores the server (tritonserver and its stubs) used in each window: what the flood costs
    #: the server itself, whoever else (a proxy, the flooding client) shares the machine.
    alone_server_cores: float
    paired_server_cores: float
    flooded_server_cores: float
    flooded_requests: int
    flooded_p50_ms: float
    flooded_p99_ms: float
    ordinary_failures: int
    flood_requests: int
    #: Flood requests answered OK inside the flooded window (those the server worked on).
    flood_in_window: int
    flood_p50_ms: float
    flood_statuses: dict[str, int]
    huge_ids: dict[str, dict]

    @property
    def p99_ratio(self) -> float:
        return self.flooded_p99_ms / self.alone_p99_ms

    @property
    def paired_ratio(self) -> float:
        """Flooded p99 over the p99 beside a second client of ordinary queries: what the size costs,
        apart from there being a second client on the same cores."""
        return self.flooded_p99_ms / self.paired_p99_ms

    @property
    def flood_server_cpu_ms(self) -> float | None:
        """Server CPU per flood request, estimated: the flooded window's server CPU less what its
        ordinary requests cost alone (per request), over the flood requests answered in the window."""
        if not self.flood_in_window or not self.alone_requests:
            return None
        ordinary_s = self.alone_server_cores * self.duration_s / self.alone_requests * self.flooded_requests
        return (self.flooded_server_cores * self.duration_s - ordinary_s) / self.flood_in_window * 1e3

    @property
    def met_goal(self) -> bool:
        return self.p99_ratio <= 2.0 and self.ordinary_failures == 0

    def summary(self) -> str:
        ids = ", ".join(f"{k}: {v['status']} in {v['ms']:.0f} ms" for k, v in self.huge_ids.items())
        cpu = self.flood_server_cpu_ms
        each = f", ~{cpu:.0f} ms of server CPU each" if cpu is not None else ""
        return (
            f"ordinary embed_query p50/p99 alone {self.alone_p50_ms:.1f}/{self.alone_p99_ms:.1f} ms "
            f"({self.alone_requests} requests), p99 {self.paired_p99_ms:.1f} ms beside a second ordinary client; "
            f"while another client sent {self.text_mb:g} MB texts "
            f"{self.flooded_p50_ms:.1f}/{self.flooded_p99_ms:.1f} ms ({self.flooded_requests} requests, "
            f"{self.ordinary_failures} failed): p99 ratio {self.p99_ratio:.2f} to alone, "
            f"{self.paired_ratio:.2f} to paired (goal <= 2 to alone: "
            f"{'met' if self.met_goal else 'NOT met'}); server cores alone / paired / flooded "
            f"{self.alone_server_cores:.2f} / {self.paired_server_cores:.2f} / {self.flooded_server_cores:.2f}; "
            f"the flood: {self.flood_requests} requests, "
            f"p50 {self.flood_p50_ms:.0f} ms, {self.flood_statuses}{each}; {HUGE_ID_COUNT:,} ids: {ids}"
        )


def ordinary(i: int) -> tuple[str, dict[str, np.ndarray]]:
    text = ORDINARY_QUERIES[i % len(ORDINARY_QUERIES)].encode()
    return EMBED_QUERY, {QUERY: np.array([[text]], dtype=object)}


def huge_text(megabytes: float) -> bytes:
    """A text of `megabytes` MB of ordinary words (the worst case for the old tokenizer: all tokens)."""
    unit = b"trail running shoes with extra cushioning "
    return (unit * (int(megabytes * 2**20) // len(unit) + 1))[: int(megabytes * 2**20)]


def huge_id_requests(repo: Path) -> dict[str, dict[str, np.ndarray]]:
    """rank requests with HUGE_ID_COUNT candidate ids, and with HUGE_ID_COUNT history ids."""
    ids = read_item_ids(catalog_dir(repo)).astype(np.int64)
    many = np.resize(ids, HUGE_ID_COUNT)[None]
    query = np.array([[b"running shoes"]], dtype=object)
    return {
        "candidates": {QUERY: query, CANDIDATE_IDS: many, USER_HISTORY_IDS: ids[None, :3]},
        "history": {QUERY: query, CANDIDATE_IDS: ids[None, :10], USER_HISTORY_IDS: many},
    }


@dataclass(frozen=True)
class Window:
    """The measured client's requests sent in [start, end) and the server's CPU cores meanwhile."""

    sent: list[Sent]
    server_cores: float
    start: float
    end: float


def _timed_window(loop: ClosedLoop, duration_s: float, server_pid: int) -> Window:
    cpu, start = process_tree_cpu_s(server_pid), time.monotonic()
    time.sleep(duration_s)
    end = time.monotonic()
    return Window(loop.between(start, end), (process_tree_cpu_s(server_pid) - cpu) / (end - start), start, end)


def run_oversize(
    server: TritonServer, *, text_mb: float = 10.0, duration_s: float = 10.0, url: str | None = None
) -> OversizeResult:
    """Ordinary traffic for `duration_s` each: alone, beside a second client of ordinary queries,
    and beside a client sending `text_mb` MB texts back to back; every client talks to `url` (a
    proxy in front of `server`), or to the server itself."""
    url = url or server.grpc_url
    # The other clients run in processes of their own (other applications) and send requests
    # serialised once: the flood stands for a remote client, not for this machine's CPU.
    others = [ordinary(i + 3) for i in range(len(ORDINARY_QUERIES))]
    flood_request = (EMBED_QUERY, {QUERY: np.array([[huge_text(text_mb)]], dtype=object)})
    with ClosedLoop(url, ordinary) as loop:
        time.sleep(1.0)  # warm-up: first requests pay connection set-up
        alone = _timed_window(loop, duration_s, server.pid)
        with ClientProcess(url, others):
            paired = _timed_window(loop, duration_s, server.pid)
        with ClientProcess(url, [flood_request]) as flood:
            time.sleep(0.5)  # let the flood reach a steady state
            flooded = _timed_window(loop, duration_s, server.pid)
    with grpcclient.InferenceServerClient(url) as client:
        huge = {name: send(client, RANK, arrays) for name, arrays in huge_id_requests(Path(server.config.repo)).items()}
    return OversizeResult(
        text_mb=text_mb,
        duration_s=duration_s,
        alone_requests=len(alone.sent),
        alone_p50_ms=percentile_ms(alone.sent, 50),
        alone_p99_ms=percentile_ms(alone.sent, 99),
        paired_p99_ms=percentile_ms(paired.sent, 99),
        alone_server_cores=alone.server_cores,
        paired_server_cores=paired.server_cores,
        flooded_server_cores=flooded.server_cores,
        flooded_requests=len(flooded.sent),
        flooded_p50_ms=percentile_ms(flooded.sent, 50),
        flooded_p99_ms=percentile_ms(flooded.sent, 99),
        ordinary_failures=sum(not s.ok for s in alone.sent + flooded.sent),
        flood_requests=len(flood.sent),
        flood_in_window=sum(s.ok and flooded.start <= s.done_at < flooded.end for s in flood.sent),
        flood_p50_ms=percentile_ms(flood.sent, 50),
        flood_statuses=dict(Counter(s.status for s in flood.sent)),
        huge_ids={name: {"status": s.status, "ms": s.latency_s * 1e3} for name, s in huge.items()},
    )


def capped_proxy(server: TritonServer) -> NginxGrpcProxy:
    """nginx in front of `server`, refusing bodies over the repository's max_request_bytes."""
    return NginxGrpcProxy([server.grpc_url], ProxyConfig.for_repository(Path(server.config.repo)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="rendered model repository (embedded target)")
    parser.add_argument("--text-mb", type=float, default=10.0, help="size of each flood text in MB")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured alone and flooded")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--via-nginx", action="store_true", help="send through nginx capped at the repository's max_request_bytes"
    )
    args = parser.parse_args(argv)
    grpc_port, http_port, metrics_port = free_ports(3)
    config = ServerConfig(args.repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    with TritonServer(config) as server:
        if args.via_nginx:
            with capped_proxy(server) as proxy:
                result = run_oversize(server, text_mb=args.text_mb, duration_s=args.duration, url=proxy.url)
        else:
            result = run_oversize(server, text_mb=args.text_mb, duration_s=args.duration)
    print(result.summary())
    derived = ("p99_ratio", "paired_ratio", "flood_server_cpu_ms")
    payload = asdict(result) | {name: getattr(result, name) for name in derived}
    print(json.dumps(payload, indent=2))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if result.met_goal else 1


if __name__ == "__main__":
    sys.exit(main())
