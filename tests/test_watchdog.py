"""The stub watchdog's mechanics without Triton: a fake server process whose children look like
python stubs (`triton_python_backend_stub <repo>/<model>/1/model.py`), and a fake control API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aisle.model_repository.watchdog import (
    DEATH_SETTLE_S,
    SHM_DIR,
    STUB_NAME,
    StubWatchdog,
    server_stubs,
    stub_count,
    stub_model,
)

MODELS = ("query_encoder", "item_store", "catalog_search")


class FakeControl:
    """Records unload/load calls in order; the fake server starts no new stub, and reports no
    READY model (so the census has nothing to count)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def unload(self, model: str) -> None:
        self.calls.append(("unload", model))

    def load(self, model: str) -> None:
        self.calls.append(("load", model))

    def ready_models(self) -> list[str]:
        return []

    def config(self, model: str) -> dict:
        raise AssertionError(f"config({model!r}) asked of a server with no READY model")


class CensusControl(FakeControl):
    """Reports READY models with the python instances their configs declare. Like Triton, an
    unload ends the model's stubs; the fake server cannot start new ones, so a loaded model comes
    back declaring none."""

    def __init__(self, server_pid: int, instances: dict[str, int]) -> None:
        super().__init__()
        self.server_pid = server_pid
        self.instances = dict(instances)

    def unload(self, model: str) -> None:
        super().unload(model)
        for pid in [pid for pid, m in server_stubs(self.server_pid).items() if m == model]:
            os.kill(pid, signal.SIGKILL)

    def load(self, model: str) -> None:
        super().load(model)
        self.instances[model] = 0

    def ready_models(self) -> list[str]:
        return [*self.instances, "embed_query"]

    def config(self, model: str) -> dict:
        if model == "embed_query":
            return {"name": model, "platform": "ensemble", "backend": ""}
        group = {"count": self.instances[model], "kind": "KIND_CPU"}
        return {"name": model, "backend": "python", "instance_group": [group]}


#: The region prefix of the fake servers' stubs (a real server's is TritonServer.shm_prefix).
FAKE_SHM_PREFIX = f"aisle_test_{os.getpid()}_"


def fake_region(stubs: tuple[str, ...], index: int) -> Path:
    """The shared-memory file a fake server's stub `index` is started with (created with it)."""
    return SHM_DIR / f"{FAKE_SHM_PREFIX}{stubs[index]}_{index}"


def spawn_fake_server(tmp_path: Path, stubs: tuple[str, ...]) -> Iterator[subprocess.Popen]:
    """A process with one sleeping 'stub' child per entry of `stubs` (a model named twice has two
    instances), each given its own file in /dev/shm as a real stub is given its region."""
    stub = tmp_path / STUB_NAME
    stub.symlink_to(sys.executable)
    for model in set(stubs):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "model.py").write_text("import time\ntime.sleep(120)\n")
    regions = [fake_region(stubs, k) for k in range(len(stubs))]
    for region in regions:
        region.write_bytes(b"")
    spawn = (
        "import subprocess, sys, time\n"
        f"stubs = [subprocess.Popen([{str(stub)!r}, {str(tmp_path)!r} + f'/{{m}}/1/model.py', r])"
        f" for m, r in zip({stubs!r}, {[r.name for r in regions]!r})]\n"
        "time.sleep(120)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.monotonic() + 20
        while len(server_stubs(server.pid)) < len(stubs) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield server
    finally:
        for pid in server_stubs(server.pid):
            os.kill(pid, signal.SIGKILL)
        server.kill()
        server.wait()
        for region in regions:
            region.unlink(missing_ok=True)


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """One stub per model in MODELS."""
    yield from spawn_fake_server(tmp_path, MODELS)


@pytest.fixture
def two_instance_server(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """query_encoder with two instances (two stubs), item_store with one."""
    yield from spawn_fake_server(tmp_path, ("query_encoder", "query_encoder", "item_store"))


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@contextmanager
def watching(server: subprocess.Popen, control: FakeControl, **options) -> Iterator[StubWatchdog]:
    """A started watchdog of `server` that has seen every stub; stopped after the block."""
    watchdog = StubWatchdog(server.pid, control, rescan_interval_s=0.1, on_event=lambda message: None, **options)
    watchdog.start()
    try:
        assert wait_for(lambda: watchdog.watched_models == sorted(MODELS))
        yield watchdog
    finally:
        watchdog.stop()


def test_stub_model_reads_the_model_from_the_stub_command_line() -> None:
    assert stub_model([f"/x/{STUB_NAME}", "/repo/query_encoder/1/model.py", "shm", "1048576"]) == "query_encoder"
    assert stub_model(["/usr/bin/python3", "/repo/query_encoder/1/model.py"]) is None
    assert stub_model([STUB_NAME]) is None


def test_server_stubs_finds_each_stub_child_and_its_model(fake_server: subprocess.Popen) -> None:
    assert sorted(server_stubs(fake_server.pid).values()) == sorted(MODELS)


def test_a_killed_stub_is_noticed_at_once_and_its_model_unloaded_then_loaded(fake_server: subprocess.Popen) -> None:
    control = FakeControl()
    with watching(fake_server, control, shm_prefix=FAKE_SHM_PREFIX) as watchdog:
        pid = next(p for p, m in server_stubs(fake_server.pid).items() if m == "item_store")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: ("load", "item_store") in control.calls)
        assert control.calls == [("unload", "item_store"), ("load", "item_store")]
        (recovery,) = watchdog.recoveries
        assert recovery.model == "item_store" and recovery.pid == pid and recovery.attempts == 1
        assert recovery.died_at - killed_at < 0.5  # pidfd: no polling delay
        # The dead stub's shared memory is removed (a killed stub's would stay), the live ones' kept.
        assert wait_for(lambda: not fake_region(MODELS, MODELS.index("item_store")).exists())
        assert [fake_region(MODELS, k).exists() for k in range(len(MODELS))] == [m != "item_store" for m in MODELS]


def test_the_servers_own_exit_ends_the_watch_without_a_recovery(fake_server: subprocess.Popen) -> None:
    """A server that dies takes its stubs with it: no model to unload or load on a dead server."""
    control = FakeControl()
    with watching(fake_server, control) as watchdog:
        stubs = list(server_stubs(fake_server.pid))
        fake_server.kill()
        fake_server.wait()  # gone before its stubs, as a real server's stubs notice its death later
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not watchdog._thread.is_alive())
        assert control.calls == [] and watchdog.recoveries == []


def test_stubs_killed_together_are_all_unloaded_before_any_is_loaded(fake_server: subprocess.Popen) -> None:
    control = FakeControl()
    with watching(fake_server, control):
        for pid in server_stubs(fake_server.pid):
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: sum(call == "load" for call, _ in control.calls) == len(MODELS))
        assert [call for call, _ in control.calls] == ["unload"] * len(MODELS) + ["load"] * len(MODELS)
        assert sorted(model for _, model in control.calls[: len(MODELS)]) == sorted(MODELS)


def test_a_stopped_watchdog_leaves_exiting_stubs_alone(fake_server: subprocess.Popen) -> None:
    control = FakeControl()
    watchdog = StubWatchdog(fake_server.pid, control, rescan_interval_s=0.1, on_event=lambda message: None)
    watchdog.start()
    assert wait_for(lambda: watchdog.watched_models == sorted(MODELS))
    watchdog.stop()
    for pid in server_stubs(fake_server.pid):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    assert control.calls == []


class SlowUnloadControl(FakeControl):
    """Like Triton's unload, ends every stub of the model, here well after DEATH_SETTLE_S (as a
    stub busy on a loaded machine exits late)."""

    def __init__(self, server_pid: int, delay_s: float) -> None:
        super().__init__()
        self.server_pid = server_pid
        self.delay_s = delay_s

    def unload(self, model: str) -> None:
        super().unload(model)
        pids = [pid for pid, m in server_stubs(self.server_pid).items() if m == model]
        threading.Timer(self.delay_s, lambda: [os.kill(pid, signal.SIGKILL) for pid in pids]).start()


def test_the_stubs_an_unload_ends_are_not_taken_for_new_deaths(two_instance_server: subprocess.Popen) -> None:
    """One instance killed: the model is unloaded and loaded once, though its other stub exits
    (ended by the unload) only after the model is back."""
    control = SlowUnloadControl(two_instance_server.pid, delay_s=DEATH_SETTLE_S + 0.4)
    watchdog = StubWatchdog(two_instance_server.pid, control, rescan_interval_s=0.1, on_event=lambda message: None)
    watchdog.start()
    try:
        assert wait_for(lambda: len(watchdog._watched) == 3)
        first = next(p for p, m in server_stubs(two_instance_server.pid).items() if m == "query_encoder")
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: ("load", "query_encoder") in control.calls)
        assert wait_for(lambda: "query_encoder" not in server_stubs(two_instance_server.pid).values())
        time.sleep(0.5)  # the sibling's exit has been seen by now, were it still watched
        assert control.calls == [("unload", "query_encoder"), ("load", "query_encoder")]
        assert [r.pid for r in watchdog.recoveries] == [first]
        assert watchdog.watched_models == ["item_store"]
    finally:
        watchdog.stop()


def test_a_stub_that_died_before_any_scan_saw_it_is_found_by_the_census(two_instance_server: subprocess.Popen) -> None:
    """A dead stub leaves no command line to read, so no pidfd can watch it; the model must still
    be recovered (READY with fewer stubs than instances), once, and the healthy ones left alone."""
    first = next(p for p, m in server_stubs(two_instance_server.pid).items() if m == "query_encoder")
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: first not in server_stubs(two_instance_server.pid))
    control = CensusControl(two_instance_server.pid, {"query_encoder": 2, "item_store": 1})
    watchdog = StubWatchdog(two_instance_server.pid, control, rescan_interval_s=0.1, on_event=lambda message: None)
    watchdog.start()
    try:
        assert wait_for(lambda: ("load", "query_encoder") in control.calls)
        time.sleep(0.5)  # several more censuses: the model is back with its stubs, item_store never short
        assert control.calls == [("unload", "query_encoder"), ("load", "query_encoder")]
        (recovery,) = watchdog.recoveries
        assert recovery.model == "query_encoder" and recovery.pid is None and recovery.attempts == 1
    finally:
        watchdog.stop()


def test_stub_count_is_one_per_python_instance_and_none_for_other_models() -> None:
    python = {"backend": "python", "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}
    assert stub_count(python) == 2
    assert stub_count({"backend": "python", "instance_group": [{"count": 1, "kind": "KIND_GPU", "gpus": [0, 1]}]}) == 2
    assert stub_count({"backend": "onnxruntime", "instance_group": [{"count": 2}]}) == 0
    assert stub_count({"platform": "ensemble", "backend": ""}) == 0
