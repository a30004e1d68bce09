"""The served catalog as every python model reads it: one set of memory-mapped files, one version.

item_store (rank), user_profile (rank_cold) and catalog_search (search) each run in their own stub
process. They all open the same catalog directory with memory maps, so the embeddings and features
exist once in memory (the page cache's) however many stubs read them.

Live catalog (`aisle catalog upsert|delete|rollback`): a new catalog version is a new directory
and REPO/item_store/1/catalog_versions/served.json names the served one (export/repo_format.py).
Every catalog-reading model runs its logic through `FollowsServedCatalog`, which checks that file's
fingerprint (one stat) before each dynamic batch and, when it changed, opens the new version and
swaps its logic object in one assignment. A python stub executes one batch at a time, so a batch
(and every request in it) runs entirely on one version; the old version's arrays and index are
released with the old logic object (its memory maps close, so its pages leave the stub's RSS).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aisle.export.repo_format import Catalog, ServedCatalog, served_catalog_dir, served_state_key
from aisle.model_repository.batching import Logic, Outcome, Tensors
from aisle.model_repository.context import ModelContext
from aisle.model_repository.validation import CatalogIndex


@dataclass(frozen=True)
class CatalogStore:
    """Catalog rows (ids ascending, embeddings, raw features) and the id -> row lookup."""

    directory: Path
    catalog: Catalog
    rows: CatalogIndex

    @classmethod
    def open(cls, directory: Path) -> CatalogStore:
        catalog = Catalog.load(directory)
        return cls(Path(directory), catalog, CatalogIndex.of(catalog))

    @classmethod
    def from_context(cls, context: ModelContext) -> CatalogStore:
        """The catalog version the repository serves now (served.json; the rendered one without it)."""
        return cls.open(served_catalog_dir(context.repo))


#: Where catalog readers report a served version they could not open, one file per stub process
#: (`<model>-<pid>.failed`, its text the reason); set by the launcher (aisle serve), which counts
#: such a replica as not ready (TritonServer.not_ready_reason). Unset (bare tritonserver): no reports.
CATALOG_STATE_ENV = "AISLE_CATALOG_STATE_DIR"
FAILED_SUFFIX = ".failed"


def failed_catalog_switches(directory: Path) -> list[str]:
    """The reasons reported by live stub processes whose served catalog version did not open."""
    reasons = []
    for path in sorted(Path(directory).glob(f"*{FAILED_SUFFIX}")):
        if _alive(path.stem.rpartition("-")[2]):  # a dead stub's report is void (a reload replaced it)
            reasons.append(path.read_text(errors="replace").strip())
    return reasons


def _alive(pid: str) -> bool:
    """Whether `pid` runs and is a python process (a stub, or the test calling a reader in-process),
    not some later process that was given a dead stub's number."""
    try:
        return pid.isdigit() and b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class SwitchReport:
    """This stub's `<model>-<pid>.failed` file in the launcher's state directory, if there is one."""

    def __init__(self, model: str) -> None:
        directory = os.environ.get(CATALOG_STATE_ENV)
        self.path = Path(directory) / f"{model}-{os.getpid()}{FAILED_SUFFIX}" if directory else None
        self.model = model

    def failed(self, reason: str) -> None:
        if self.path is not None:
            staging = self.path.with_suffix(".tmp")
            staging.write_text(f"{self.model}: {reason}\n")
            staging.replace(self.path)

    def cleared(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


#: The server's /metrics gauges of every catalog reader instance (model and instance labels), set
#: from its ReaderState (adapter.CatalogGauges).
CATALOG_VERSION_METRIC = "aisle_catalog_version"
CATALOG_SWITCH_FAILED_METRIC = "aisle_catalog_switch_failed"
CATALOG_OPEN_SECONDS_METRIC = "aisle_catalog_open_seconds"


@dataclass(frozen=True)
class ReaderState:
    """What one catalog reader serves, for the server's metrics (adapter.CatalogGauges)."""

    version: int  # the catalog version it answers from
    switch_failed: bool  # the served version did not open: it answers from an older one
    open_s: float  # seconds it took to open that version (the batch that switched waited as long)


class FollowsServedCatalog:
    """A catalog reader's logic, rebuilt on the served catalog version whenever that changes.

    Why per batch and in the model rather than a new Triton model version: switching is one stat
    per batch plus opening memory maps once per version (no stub restart, no second copy of the
    model's other state, no ensemble reload), and "after `aisle catalog upsert` returns, the next
    request sees the new version" holds without any signal to the server.

    A served version that cannot be opened (a damaged file, memory) leaves the open version
    answering, but this replica no longer serves what the catalog says (a deleted item could still
    be found here), so the stub reports it (SwitchReport: the launcher's readiness turns false and
    a balancer stops sending traffic) and a thread of its own tries again every RETRY_S, without
    waiting for requests that a not-ready replica no longer gets; the next success clears the report.
    """

    #: Seconds between attempts to open a served version that failed to open. Batches never retry
    #: it themselves: opening a large version (a 1M-item IVF index) takes seconds, and every request
    #: would wait for it.
    RETRY_S = 10.0

    def __init__(self, context: ModelContext, build: Callable[[ModelContext], Logic]) -> None:
        self.context = context
        self.build = build
        self.key = served_state_key(context.repo)
        self.version = ServedCatalog.read(context.repo).version
        self.logic, self.open_s = self._open()
        self.report = SwitchReport(context.decl.name)
        #: Called with the reader's state at every change (and by whoever registers, at once).
        self.observers: list[Callable[[ReaderState], None]] = []
        self.failed_key: object = None  # the served state that failed to open; None when none did
        self.lock = threading.Lock()
        self.retrying: threading.Thread | None = None

    def current(self) -> Logic:
        """The logic of the served version, opened now if the served state changed since last batch."""
        key = served_state_key(self.context.repo)
        if key != self.key and key != self.failed_key:
            self._switch(key)
        return self.logic

    def observe(self, observer: Callable[[ReaderState], None]) -> None:
        self.observers.append(observer)
        observer(self.state())

    def state(self) -> ReaderState:
        return ReaderState(self.version, self.failed_key is not None, self.open_s)

    def _notify(self) -> None:
        state = self.state()
        for observer in self.observers:
            observer(state)

    def _open(self) -> tuple[Logic, float]:
        """The logic of the served version, built now, and the seconds its build took."""
        started = time.perf_counter()
        logic = self.build(self.context)
        return logic, time.perf_counter() - started

    def _switch(self, key: object) -> None:
        version = ServedCatalog.read(self.context.repo).version
        try:
            logic, open_s = self._open()
        except Exception as e:  # noqa: BLE001 - keep serving the open version; the retry thread tries again
            reason = f"catalog version {served_catalog_dir(self.context.repo).name!r} did not open: {e!r}"
            retrying = f"still serving the open version, retrying every {self.RETRY_S:.0f} s"
            print(f"aisle: {reason}; {retrying}", file=sys.stderr, flush=True)
            with self.lock:
                self.failed_key = key
            self.report.failed(reason)
            self._notify()
            self._retry_in_background()
            return
        with self.lock:
            # Built first, then swapped: no batch ever sees a half-opened version. A retry that
            # finishes after a newer version was served must not swap an older one back in.
            if key != served_state_key(self.context.repo):
                return
            self.logic, self.key, self.version, self.failed_key, self.open_s = logic, key, version, None, open_s
            self.report.cleared()
        self._notify()

    def _retry_in_background(self) -> None:
        if self.retrying is None or not self.retrying.is_alive():
            self.retrying = threading.Thread(target=self._retry, name="aisle-catalog-retry", daemon=True)
            self.retrying.start()

    def _retry(self) -> None:
        while self.failed_key is not None:
            time.sleep(self.RETRY_S)
            key = served_state_key(self.context.repo)
            if key == self.key:  # served.json went back to the open version (a rollback)
                with self.lock:
                    self.failed_key = None
                    self.report.cleared()
                self._notify()
            elif self.failed_key is not None:
                self._switch(key)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        return self.current()(requests)


def follows_served_catalog(build: Callable[[ModelContext], Logic]) -> Callable[[ModelContext], Logic]:
    """`build` wrapped so its logic follows the served catalog version (for model.py's `build`)."""
    return lambda context: FollowsServedCatalog(context, build)
