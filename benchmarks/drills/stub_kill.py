"""Drill: `kill -9` one python-backend stub under load; measure readiness and failed requests.

    python -m aisle.benchmarks.drills.stub_kill --repo REPO [--model query_encoder] [--clients 2]
        [--probe launcher|triton]

Starts the embedded server on REPO (with the launcher's stub watchdog, as `aisle serve` runs it),
sends closed-loop traffic through an ensemble that uses the model, probes readiness every 20 ms
like a balancer (the launcher's /ready, as deploy/ does, or Triton's /v2/health/ready), SIGKILLs
the model's stub and reports:

- kill -> not ready, kill -> ready again (goal: a few seconds, and within 30 s);
- failed requests by when they were sent: while the server still said ready (the window a
  balancer cannot avoid), while it said not ready (a balancer routes those elsewhere), and after
  it said ready again (goal: none);
- readiness flips after recovery (goal: none) and what the watchdog did.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aisle.benchmarks.drills.traffic import ClosedLoop, ReadinessProbe, Request, Sent
from aisle.client.requests import embed_request, rank_cold_request, rank_request, search_request
from aisle.export.repo_format import RepoManifest, catalog_dir, read_item_ids
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports
from aisle.model_repository.watchdog import server_stubs
from aisle.schema import EMBED_ITEM, EMBED_QUERY, ITEM_FEATURES, QUERY_ENCODER, RANK, RANK_COLD, SEARCH, Schema

#: Ensembles the drill can send traffic through, in order of preference.
DRILL_ENSEMBLES = (EMBED_QUERY, EMBED_ITEM, RANK, SEARCH, RANK_COLD)


@dataclass(frozen=True)
class StubKillResult:
    model: str
    ensemble: str
    clients: int
    #: The readiness endpoint probed: the launcher's /ready when the server answers one, else Triton's.
    probed: str
    kill_to_not_ready_s: float | None
    kill_to_ready_s: float | None
    requests: int
    failed_in_flight_at_kill: int
    failed_while_ready: int
    failed_while_not_ready: int
    failed_after_ready: int
    flips_after_ready: int
    statuses: dict[str, int]
    watchdog: list[dict]
    #: (seconds after the kill, answer) at each change of the readiness probe's answer, from the kill
    #: on: what to read when a run misses its goals.
    readiness: list[tuple[float, bool]]

    @property
    def met_goals(self) -> bool:
        """Not ready within 5 s, ready again within 30 s, no failure or flip after that."""
        return (
            self.kill_to_not_ready_s is not None
            and self.kill_to_not_ready_s <= 5.0
            and self.kill_to_ready_s is not None
            and self.kill_to_ready_s <= 30.0
            and self.failed_after_ready == 0
            and self.flips_after_ready == 0
        )

    def summary(self) -> str:
        def s(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f} s"

        return (
            f"kill -9 {self.model} stub, {self.clients} client(s) on {self.ensemble}, probing {self.probed}: "
            f"not ready after {s(self.kill_to_not_ready_s)}, ready again after {s(self.kill_to_ready_s)}; "
            f"{self.requests} requests, failed: {self.failed_while_ready} while still ready, "
            f"{self.failed_while_not_ready} while not ready, {self.failed_after_ready} after ready again "
            f"({self.failed_in_flight_at_kill} in flight at the kill); "
            f"readiness flips after recovery: {self.flips_after_ready}; "
            f"goals {'met' if self.met_goals else 'NOT met'}"
            + ("" if self.met_goals else f"; readiness changes {self.readiness}; watchdog {self.watchdog}")
        )


def drill_ensemble(schema: Schema, model: str) -> str:
    """The first of DRILL_ENSEMBLES that runs `model` in one of its steps."""
    for name in DRILL_ENSEMBLES:
        if any(step.model == model for step in schema.ensemble(name).steps):
            return name
    raise ValueError(f"no drill ensemble ({', '.join(DRILL_ENSEMBLES)}) uses model {model!r}")


def sample_request(ensemble: str, repo: Path) -> Request:
    """An ordinary request to `ensemble`, built by the client SDK (the first catalog items as
    candidates and history; two new items with unknown features for rank_cold)."""
    ids = read_item_ids(catalog_dir(repo))[:10].astype(np.int64)
    query, item = "running shoes", "Trail running shoe, waterproof, size 42"
    unknown_features = np.full((2, len(ITEM_FEATURES)), np.nan)
    requests = {
        EMBED_QUERY: lambda: embed_request(EMBED_QUERY, [query]),
        EMBED_ITEM: lambda: embed_request(EMBED_ITEM, [item]),
        RANK: lambda: rank_request(query, ids, ids[:3], None),
        RANK_COLD: lambda: rank_cold_request(query, [item, "Hiking sock"], unknown_features, ids[:3], None),
        SEARCH: lambda: search_request(query, ids[:3], 10, None),
    }
    (call,) = requests[ensemble]().calls(RepoManifest.load(repo).schema(), "drill")
    return call.inputs


def stub_pid(server: TritonServer, model: str, timeout_s: float = 10.0) -> int:
    """The PID of `model`'s python stub (waits for it: right after a reload it may not exist yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [pid for pid, name in server_stubs(server.pid).items() if name == model]
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise RuntimeError(f"no python stub of model {model!r} under tritonserver pid {server.pid}")


def _failed(sent: list[Sent]) -> int:
    return sum(not s.ok for s in sent)


def run_stub_kill(
    server: TritonServer,
    *,
    model: str = QUERY_ENCODER,
    clients: int = 2,
    warmup_s: float = 2.0,
    settle_s: float = 5.0,
    recover_timeout_s: float = 60.0,
) -> StubKillResult:
    """Kill `model`'s stub on a running server under `clients` closed-loop clients; measure."""
    repo = Path(server.config.repo)
    ensemble = drill_ensemble(RepoManifest.load(repo).schema(), model)
    request = sample_request(ensemble, repo)
    traffic = ClosedLoop(server.grpc_url, lambda i: (ensemble, request), clients)
    with ReadinessProbe(server.readiness_url) as probe, traffic as load:
        time.sleep(warmup_s)
        pid = stub_pid(server, model)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        not_ready_at = probe.wait_for(False, killed_at, timeout_s=10.0)
        ready_at = probe.wait_for(True, not_ready_at, recover_timeout_s) if not_ready_at is not None else None
        time.sleep(settle_s)
    end_not_ready = not_ready_at if not_ready_at is not None else float("inf")
    end_ready = ready_at if ready_at is not None else float("inf")
    watchdog = [asdict(r) for r in server.watchdog.recoveries] if server.watchdog else []
    for record in watchdog:  # monotonic instants -> seconds after the kill
        for key in ("died_at", "unloaded_at", "ready_at"):
            if record[key] is not None:
                record[key] = round(record[key] - killed_at, 3)
    return StubKillResult(
        model=model,
        ensemble=ensemble,
        clients=clients,
        probed=server.readiness_url,
        kill_to_not_ready_s=None if not_ready_at is None else not_ready_at - killed_at,
        kill_to_ready_s=None if ready_at is None else ready_at - killed_at,
        requests=len(load.sent),
        failed_in_flight_at_kill=_failed(load.between(0, killed_at)),
        failed_while_ready=_failed(load.between(killed_at, end_not_ready)),
        failed_while_not_ready=_failed(load.between(end_not_ready, end_ready)),
        failed_after_ready=_failed(load.between(end_ready)),
        flips_after_ready=probe.flips(end_ready) if ready_at is not None else 0,
        statuses=dict(Counter(s.status for s in load.sent)),
        watchdog=watchdog,
        readiness=probe.transitions(killed_at),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="rendered model repository (embedded target)")
    parser.add_argument("--model", default=QUERY_ENCODER, help="python model whose stub is killed")
    parser.add_argument("--clients", type=int, default=2, help="closed-loop client threads")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of traffic after recovery")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--probe",
        choices=("launcher", "triton"),
        default="launcher",
        help="readiness endpoint to probe: the launcher's /ready (what deploy/ probes) or Triton's /v2/health/ready",
    )
    args = parser.parse_args(argv)
    grpc_port, http_port, metrics_port, health_port = free_ports(4)
    config = ServerConfig(
        args.repo,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        health_port=health_port if args.probe == "launcher" else None,
    )
    with TritonServer(config) as server:
        result = run_stub_kill(server, model=args.model, clients=args.clients, settle_s=args.settle)
    print(result.summary())
    print(json.dumps(asdict(result), indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.met_goals else 1


if __name__ == "__main__":
    sys.exit(main())
