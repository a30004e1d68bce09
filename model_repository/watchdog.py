"""Notice a dead python-backend stub and bring its model back, so readiness tells the truth.

Why: tritonserver 2.51 does not notice when a model's stub process dies (OOM killer, segfault in
a native library, `kill -9`): every request to the model fails with `Stub process '<model>_0_0' is
not healthy` while `/v2/health/ready` keeps answering 200, so a balancer routing on readiness keeps
sending traffic to a replica that fails every call, and nothing restarts the stub.

What this does: a thread watches every `triton_python_backend_stub` child of the server through a
pidfd (Linux >= 5.3), so a death is seen the moment it happens, not at the next poll. It then
unloads the dead stub's model and loads it again through the model-control API (explicit mode):

- Measured on 2.51: unloading a composing model also unloads every ensemble built on it, and while
  the model is UNLOADING/LOADING the server's strict readiness is false (`/v2/health/ready` answers
  400 from the unload request on); loading it again starts a new stub and reloads those ensembles
  with it, after which readiness is true again. Requests to the ensembles meanwhile fail fast with
  NOT_FOUND instead of INTERNAL, which is what a balancer needs: readiness false while the replica
  cannot serve. Drill figures: README, "Robustness and failure drills".
- A plain `load` of the still-loaded model is refused ("failed to poll from model repository") and
  leaves readiness true, hence unload first.
- A stub can also die before the watchdog has ever seen it (between its start and the next scan,
  e.g. right after a load): a reaped or zombie stub leaves no command line to read, so no pidfd can
  be opened for it. Each scan therefore also takes a census: every READY python model must have as
  many live stubs as its config has instances, and a model short of them is recovered like a
  death seen directly. Without it such a model stays READY while every call to it fails.
- A killed stub leaves its shared-memory region behind (the backend does not remove it when the
  instance it cannot reach is unloaded): memory in /dev/shm, as large as the region had grown.
  Given the server's region prefix, the watchdog removes, once its reloads are done, every region
  under it that no live stub names on its command line. Nothing else loads models on a server the
  launcher runs (explicit mode, everything loaded before the watchdog starts), so no region of a
  stub still starting is taken for a dead one's.
- Requests that fail between the death and the unload (a few ms) cannot be helped: the stub is
  already gone. A load that fails is retried with a growing pause (RELOAD_BACKOFF_S) until the
  watchdog is stopped.

The control API is restricted by the launcher (a per-start header token, see ControlApi), so only
it can unload models; the watchdog is stopped before the launcher drains and stops the server,
whose own unloads end every stub.
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: The python backend's stub executable, as it appears in /proc/<pid>/cmdline.
STUB_NAME = "triton_python_backend_stub"
#: Where the python backend's shared-memory regions live (boost's shm_open on Linux).
SHM_DIR = Path("/dev/shm")
#: How often the stub list is rescanned (a reload starts new stubs); deaths are seen at once.
RESCAN_INTERVAL_S = 0.5
#: Seconds a control call may take: unload and index answer at once, a load once the model's
#: initialize() has run (the encoders warm up in every bucket).
CONTROL_TIMEOUT_S = 10.0
LOAD_TIMEOUT_S = 300.0
#: After a death, how long to wait for more (an OOM kill or a crash often takes several stubs).
DEATH_SETTLE_S = 0.1
#: Pauses between attempts to load a model again after its stub died (the last one repeats).
RELOAD_BACKOFF_S = (0.0, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ControlApi:
    """Triton's model-repository API over HTTP, with the header that unlocks it.

    The launcher starts tritonserver with `--http-restricted-api=model-repository:<header>=<token>`
    (and the gRPC equivalent): a request without the header is refused (HTTP 403), so no client,
    local or remote, can unload models, only the launcher that knows the per-start token.
    """

    http_url: str
    header: str
    token: str

    def post(self, path: str, body: dict | None = None, *, timeout_s: float = CONTROL_TIMEOUT_S) -> object:
        return self._send(path, json.dumps(body or {}).encode(), timeout_s)

    def _send(self, path: str, data: bytes | None, timeout_s: float) -> object:
        """POST `data` to `path` (GET when None) with the header; the JSON answer, if any."""
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data, headers={self.header: self.token})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def unload(self, model: str) -> None:
        """Unload `model` only (Triton still unloads the ensembles built on it, measured on 2.51).

        Answers at once (measured: 17 ms with a request in flight); in-flight requests finish after.
        """
        self.post(f"/v2/repository/models/{model}/unload", {"parameters": {"unload_dependents": False}})

    def load(self, model: str) -> None:
        self.post(f"/v2/repository/models/{model}/load", timeout_s=LOAD_TIMEOUT_S)

    def index(self) -> list[dict]:
        return list(self.post("/v2/repository/index") or [])  # type: ignore[arg-type]

    def config(self, model: str) -> dict:
        """The model's configuration as the server holds it (instance groups filled in)."""
        return dict(self._send(f"/v2/models/{model}/config", None, CONTROL_TIMEOUT_S) or {})  # type: ignore[call-overload]

    def ready_models(self) -> list[str]:
        """Names of the models the server reports READY."""
        return [entry["name"] for entry in self.index() if entry.get("state") == "READY"]


def stub_count(config: dict) -> int:
    """Python stubs a loaded model runs: one per instance (0 for other backends and ensembles)."""
    if config.get("backend") != "python":
        return 0
    return sum(int(g.get("count", 1)) * max(1, len(g.get("gpus", []))) for g in config.get("instance_group", []))


def stub_model(cmdline: list[str]) -> str | None:
    """The model a stub serves, from its command line (`<stub> <repo>/<model>/<version>/model.py ...`)."""
    if len(cmdline) < 2 or Path(cmdline[0]).name != STUB_NAME:
        return None
    return Path(cmdline[1]).parent.parent.name


def stub_region(pid: int) -> str | None:
    """The shared-memory region a live stub was started with (its second argument), or None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    cmdline = [part.decode(errors="replace") for part in raw if part]
    if stub_model(cmdline) is None or len(cmdline) < 3 or "/" in cmdline[2]:
        return None
    return cmdline[2]


def server_stubs(server_pid: int) -> dict[int, str]:
    """PID -> model of every live python stub whose parent is `server_pid` (read from /proc)."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Field 4 (ppid) follows the parenthesised command name, which may itself hold spaces.
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid != server_pid:
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked, or not ours to read
        model = stub_model([part.decode(errors="replace") for part in cmdline if part])
        if model is not None:
            stubs[int(entry.name)] = model
    return stubs


@dataclass
class Recovery:
    """One stub death and what the watchdog did about it (monotonic seconds)."""

    model: str
    pid: int | None  # None: found short of stubs by the census, its stub never seen alive
    died_at: float
    unloaded_at: float | None = None
    ready_at: float | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


class StubWatchdog:
    """A daemon thread that reloads the model of any python stub of `server_pid` that dies.

    `recoveries` records every death and its recovery, for the launcher's log, drills and tests.
    """

    def __init__(
        self,
        server_pid: int,
        control: ControlApi,
        *,
        rescan_interval_s: float = RESCAN_INTERVAL_S,
        on_event: Callable[[str], None] | None = None,
        shm_prefix: str | None = None,
    ) -> None:
        self.server_pid = server_pid
        self.control = control
        self.shm_prefix = shm_prefix  # the server's python-backend region prefix; None: leave /dev/shm alone
        self.rescan_interval_s = rescan_interval_s
        self.on_event = on_event or log.warning
        self.recoveries: list[Recovery] = []
        self._stop = threading.Event()
        self._watched: dict[int, tuple[int, str]] = {}  # pidfd -> (pid, model)
        self._server = -1  # a pidfd of the server while the thread runs
        self._retired: set[int] = set()  # stubs our unloads are ending: never watched again
        self._stub_counts: dict[str, int] = {}  # model -> stubs its config runs, read once per load
        self._thread = threading.Thread(target=self._run, name="aisle-stub-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching (before the server unloads models itself); an ongoing reload finishes first."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def watched_models(self) -> list[str]:
        return sorted({model for _, model in self._watched.values()})

    def _run(self) -> None:
        # The server's own exit ends the watch: its stubs die with it, and those are no deaths to
        # recover from (loads would fail until stop(); the launcher reports the exit).
        try:
            self._server = os.pidfd_open(self.server_pid)
        except ProcessLookupError:
            return
        try:
            while not self._stop.is_set() and not self._server_gone():
                dead = self._census()
                if not dead and not self._watched:
                    self._stop.wait(self.rescan_interval_s)
                    continue
                dead = dead or self._dead(self.rescan_interval_s)
                if dead and not self._stop.is_set() and not self._server_gone():
                    self._recover(dead)
        finally:
            os.close(self._server)
            for fd in list(self._watched):
                self._forget(fd)

    def _rescan(self) -> None:
        """Open a pidfd for every stub not yet watched (new ones appear after each reload)."""
        known = {pid for pid, _ in self._watched.values()}
        stubs = server_stubs(self.server_pid)
        self._retired &= stubs.keys()  # gone for good: its pid may be reused
        for pid, model in stubs.items():
            if pid in known or pid in self._retired:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # died between the scan and now: its model is reloaded by the next death seen
            self._watched[fd] = (pid, model)

    def _server_gone(self) -> bool:
        """Whether the server has exited (its pidfd turns readable then)."""
        return bool(select.select([self._server], [], [], 0)[0])

    def _census(self) -> list[tuple[int | None, str]]:
        """Rescan, then (None, model) for each READY python model with fewer live stubs than its
        instances: a stub that died before any scan saw it.

        The READY list is read before the scan: a model that turns READY in between has started
        its stubs before it did, so the scan finds them and no healthy model is taken for short.
        """
        try:
            ready = self.control.ready_models()
        except (urllib.error.URLError, OSError, ValueError):
            ready = []  # the server is stopping or busy: the pidfds still see every watched death
        self._rescan()
        live = Counter(model for _, model in self._watched.values())
        return [(None, model) for model in ready if live[model] < self._expected_stubs(model)]

    def _expected_stubs(self, model: str) -> int:
        if model not in self._stub_counts:
            try:
                self._stub_counts[model] = stub_count(self.control.config(model))
            except (urllib.error.URLError, OSError, ValueError):
                return 0  # unknown this time: asked again at the next scan
        return self._stub_counts[model]

    def _dead(self, timeout_s: float) -> list[tuple[int, str]]:
        """(pid, model) of the watched stubs that have exited, waiting up to `timeout_s` for one."""
        if not self._watched:
            return []
        readable, _, _ = select.select(list(self._watched), [], [], timeout_s)
        return [self._forget(fd) for fd in readable]

    def _forget(self, fd: int) -> tuple[int, str]:
        pid, model = self._watched.pop(fd)
        os.close(fd)
        return pid, model

    def _recover(self, dead: list[tuple[int | None, str]]) -> None:
        """Unload every dead stub's model first (readiness false at once), then load them again.

        Stubs that die within DEATH_SETTLE_S of the last death seen (several killed in a row) are
        unloaded before any load starts, so the server does not report ready again while one of
        them is still gone; a later death is recovered in the next round.
        """
        records: dict[str, Recovery] = {}
        while dead:
            now = time.monotonic()
            for pid, model in dead:
                if model in records:
                    continue
                what = (
                    f"python stub of model {model!r} (pid {pid}) died"
                    if pid is not None
                    else f"model {model!r} runs fewer python stubs than its instances (one died unseen)"
                )
                self.on_event(f"{what}: unloading and loading it again")
                records[model] = Recovery(model, pid, now)
                self._unload(records[model])
            dead = self._dead(DEATH_SETTLE_S)
        self.recoveries.extend(records.values())
        for record in records.values():
            self._reload(record)
        self._remove_dead_regions()

    def _remove_dead_regions(self) -> None:
        """Remove the server's shared-memory regions that no live stub names (those of dead stubs)."""
        if self.shm_prefix is None or self._stop.is_set():
            return
        live = {stub_region(pid) for pid in server_stubs(self.server_pid)}
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            if region.name not in live:
                region.unlink(missing_ok=True)

    def _unload(self, record: Recovery) -> None:
        # Unloading ends every stub of the model (its other instances too): those exits are the
        # watchdog's own doing, not deaths to recover from, so those stubs are retired (never
        # watched again, however long they take to exit). Watched, a sibling that exited after
        # DEATH_SETTLE_S was taken for a new death once the model was back, and unloading the
        # fresh model for it ended the new stubs in turn: a reload loop (seen in the stub-kill
        # drill under CPU contention: query_encoder's two instances reloaded eight times in 18 s).
        for fd in [fd for fd, (_, model) in self._watched.items() if model == record.model]:
            self._retired.add(self._forget(fd)[0])
        try:
            self.control.unload(record.model)
        except (urllib.error.URLError, OSError) as e:
            record.errors.append(f"unload: {e}")
        record.unloaded_at = time.monotonic()

    def _reload(self, record: Recovery) -> None:
        self._stub_counts.pop(record.model, None)  # a load reads the config from disk again
        for attempt, pause_s in enumerate(_backoff()):
            if self._stop.wait(pause_s) or self._server_gone():
                return
            record.attempts = attempt + 1
            try:
                self.control.load(record.model)
            except (urllib.error.URLError, OSError) as e:
                record.errors.append(f"load attempt {attempt + 1}: {e}")
                self.on_event(f"loading model {record.model!r} again failed ({e}); retrying")
                continue
            record.ready_at = time.monotonic()
            self.on_event(
                f"model {record.model!r} is back after {record.ready_at - record.died_at:.1f} s (new python stub)"
            )
            return


def _backoff():
    """RELOAD_BACKOFF_S, then its last pause forever."""
    yield from RELOAD_BACKOFF_S
    while True:
        yield RELOAD_BACKOFF_S[-1]
