"""CPU use of the load generator, the server process tree and everything else, from /proc (Linux).

Why: on a small machine the load generator and the server share the same cores, so a throughput
number is only honest next to how much CPU each side took. Cores used = CPU seconds / wall seconds;
"other" is the rest of the machine's busy time (other users, the kernel), which distorts too.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it start behind the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _process_table() -> dict[int, list[str]]:
    """pid -> its /proc stat fields (after the command name), for every live process."""
    table = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                table[int(entry.name)] = fields
    return table


def process_tree(root_pid: int, table: dict[int, list[str]] | None = None) -> set[int]:
    """`root_pid` and all its live descendants (a server and its python stubs)."""
    table = _process_table() if table is None else table
    parents = {pid: int(fields[1]) for pid, fields in table.items()}
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def process_tree_cpu_s(root_pid: int) -> float:
    """user + system CPU seconds of `root_pid` and all its live descendants (threads included)."""
    table = _process_table()
    ticks = {pid: int(fields[11]) + int(fields[12]) for pid, fields in table.items()}
    return sum(ticks.get(pid, 0) for pid in process_tree(root_pid, table)) / CLOCK_TICKS


def process_tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of `root_pid` and its live descendants (a tritonserver and its python stubs).

    A page two processes map (a memory-mapped catalog) counts once per process, as `ps` shows it.
    """
    table = _process_table()
    return sum(int(table[pid][21]) for pid in process_tree(root_pid, table) if pid in table) * PAGE_BYTES


def process_tree_pss_bytes(root_pid: int, field: str = "Pss") -> int:
    """Proportional memory of `root_pid` and its live descendants: a page shared by n of them (a
    catalog file every catalog reader maps) counts 1/n in each, so the sum counts it once. The
    measure for a server whose stubs map the same files, where the RSS sum counts them per stub.
    field: a line of /proc/<pid>/smaps_rollup, e.g. "Pss_Anon" for the private heap a leak grows
    (file pages are the page cache's, and a mapped file counts pages the kernel maps around each
    one touched, more of them the more of the file is cached)."""
    total_kib = 0
    for pid in process_tree(root_pid, _process_table()):
        try:
            rollup = (PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:  # it exited meanwhile
            continue
        total_kib += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith(f"{field}:"))
    return total_kib * 1024


def mapped_files(pid: int) -> set[Path]:
    """The files `pid` maps now (empty if it exited)."""
    try:
        lines = (PROC / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return set()
    fields = (line.split(maxsplit=5) for line in lines)  # address perms offset device inode path
    return {Path(parts[5]) for parts in fields if len(parts) == 6 and parts[5].startswith("/")}


def find_server_pid(grpc_port: int) -> int | None:
    """The pid of a local tritonserver started with --grpc-port=`grpc_port`, if any."""
    flag = f"--grpc-port={grpc_port}".encode()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"tritonserver") and flag in argv:
            return int(entry.name)
    return None


def _own_cpu_s() -> float:
    """This process (all threads) plus its finished children, e.g. a perf_analyzer run."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine_busy_s() -> float:
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuUse:
    """Cores used on average over a measured interval."""

    client_cores: float
    server_cores: float | None
    other_cores: float
    wall_s: float


class CpuMeter:
    """`with CpuMeter(server_pid) as meter: ...`; then `meter.result` holds the CpuUse.

    The client side is this process and the children it waited for (perf_analyzer), so measure
    while nothing else runs in this process.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.result: CpuUse | None = None

    def _server_s(self) -> float | None:
        return process_tree_cpu_s(self.server_pid) if self.server_pid else None

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), _own_cpu_s(), self._server_s(), _machine_busy_s())
        return self

    def __exit__(self, *exc) -> None:
        wall0, own0, server0, busy0 = self._start
        wall = time.perf_counter() - wall0
        own = _own_cpu_s() - own0
        server_after = self._server_s()
        server = server_after - server0 if server_after is not None and server0 is not None else None
        busy = _machine_busy_s() - busy0
        other = max(0.0, busy - own - (server or 0.0))
        self.result = CpuUse(own / wall, server / wall if server is not None else None, other / wall, wall)
