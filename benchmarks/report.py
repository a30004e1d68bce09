"""Write a suite's results: summary.json, results.json, CSVs, PNG plots and a markdown summary.

summary.json is the contract other tools read: {"targets": [{name, measured, goal, unit, pass,
...}], "environment": {...}}. Everything else is for people: summary.md (targets table,
environment, CPU-sharing caveat, every load point), latency_vs_throughput.png and
step_breakdown.png.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from aisle.benchmarks.search_stages import stages_table

SUMMARY = "summary.json"
RESULTS = "results.json"
POINTS_CSV = "points.csv"
ORT_CSV = "ort.csv"
MARKDOWN = "summary.md"
LATENCY_PLOT = "latency_vs_throughput.png"
BREAKDOWN_PLOT = "step_breakdown.png"

POINT_COLUMNS = (
    "system",
    "generator",
    "workload",
    "mode",
    "level",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "errors",
    "stable",
    "server_ms",
    "client_cpu_cores",
    "server_cpu_cores",
    "other_cpu_cores",
)


def _flat(point: dict) -> dict:
    row = {key: point.get(key) for key in POINT_COLUMNS}
    row.update({key: point["latency"][key] for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms")})
    return row


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _per_core(rate: float, cores: float | None) -> float | None:
    return rate / cores if cores else None


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[passed]


def targets_table(targets: list[dict]) -> str:
    """The markdown table of targets (also printed by `aisle bench`)."""
    lines = ["| target | measured | goal | result |", "| --- | --- | --- | --- |"]
    for t in targets:
        lines.append(
            f"| {t['name']} | {_fmt(t['measured'])} {t['unit']} | {t['comparator']} {t['goal']:g} {t['unit']} "
            f"| {_verdict(t['pass'])} |"
        )
    return "\n".join(lines)


def points_table(points: list[dict]) -> str:
    lines = [
        "| system | generator | workload | mode | level | req/s | p50 ms | p90 ms | p99 ms | errors | stable "
        "| server ms | CPU client/server/other |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lat = p["latency"]
        cpu = "/".join(_fmt(p.get(k)) for k in ("client_cpu_cores", "server_cpu_cores", "other_cpu_cores"))
        lines.append(
            f"| {p['system']} | {p['generator']} | {p['workload']} | {p['mode']} | {p['level']:g} "
            f"| {p['throughput_rps']:.1f} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} "
            f"| {p['errors']} | {p['stable']} | {_fmt(p.get('server_ms'))} | {cpu} |"
        )
    return "\n".join(lines)


def pairs_table(pairs: list[dict]) -> str:
    """The latency pairs (aisle.benchmarks.suite.LATENCY_PAIR) behind search's p50 goal, one row each."""
    from aisle.benchmarks.suite import LATENCY_PAIR
    from aisle.benchmarks.targets import pair_ratio

    lines = [
        "| pair | embed_query p50 ms | search p50 ms | search / embed_query | other cores (embed_query / search) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for index, pair in enumerate(pairs, start=1):
        p50 = " | ".join(_fmt(pair[name]["latency"]["p50_ms"]) if name in pair else "n/a" for name in LATENCY_PAIR)
        other = " / ".join(_fmt(pair[name].get("other_cpu_cores")) if name in pair else "n/a" for name in LATENCY_PAIR)
        lines.append(f"| {index} | {p50} | {_fmt(pair_ratio(pair))} | {other} |")
    return "\n".join(lines)


def ort_table(ort: list[dict], machine: dict) -> str:
    lines = [
        "| run | batch | padding | seq/s | p50 ms/batch | real tokens | padded tokens | GFLOP/s real "
        "| GFLOP/s executed | CPU cores used | seq/s per core | other CPU cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ort:
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {r['padding']} | {r['throughput_seqs']:.1f} "
            f"| {r['latency']['p50_ms']:.2f} | {r['mean_tokens']:.1f} | {r['mean_padded_tokens']:.1f} "
            f"| {r['useful_gflops']:.1f} | {r['executed_gflops']:.1f} | {_fmt(r.get('cpu_cores'))} "
            f"| {_fmt(_per_core(r['throughput_seqs'], r.get('cpu_cores')), 1)} | {_fmt(r.get('other_cpu_cores'))} |"
        )
    threads = ort[0]["threads"] if ort else "?"
    lines.append(
        f"\nMeasured fp32 GEMM rate (torch, {threads} threads): {machine['gemm_gflops']:.1f} GFLOP/s, while the "
        f"rest of the machine used {_fmt(machine.get('other_cpu_cores'))} cores"
    )
    return "\n".join(lines)


def _flags(flags: dict) -> str:
    return " ".join(f"`{k}`" if v is None else f"`{k} {v}`" for k, v in flags.items())


def peers_table(results: dict) -> str:
    """Who the peers are (version, flags, agreement with aisle) and embed_query side by side with aisle.

    aisle's rows are its SDK points (the Python generator the servers get too); the library rows are
    sentence-transformers in-process at batch = concurrency, where latency is per batch.
    """
    peers = results.get("peers", {})
    lines = ["| peer | version | flags | min cosine vs aisle | status |", "| --- | --- | --- | --- | --- |"]
    for system, info in peers.items():
        cosine = info.get("min_cosine")
        lines.append(
            f"| {system} | {info.get('version', 'n/a')} | {_flags(info.get('flags', {}))} "
            f"| {_fmt(cosine, 6)} | {info['status']} |"
        )
    rows = [
        ("aisle (SDK)" if p["system"] == "triton" else p["system"], p["level"], p["throughput_rps"], p["latency"],
         p.get("server_cpu_cores"))
        for p in results["points"]
        if p["workload"] == "embed_query" and p["generator"] == "python" and p["mode"] == "concurrency"
        and (p["system"] == "triton" or p["system"] in peers)
    ]  # fmt: skip
    rows += [(f"{r['system']} (batch)", r["batch_size"], r["throughput_seqs"], r["latency"], None)
             for r in results.get("peer_library", [])]  # fmt: skip
    lines += [
        "",
        "| system | concurrency / batch | req/s (seq/s) | p50 ms | p99 ms | server CPU cores |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for system, level, rate, lat, cores in sorted(rows, key=lambda r: (r[1], r[0])):
        lines.append(
            f"| {system} | {level:g} | {rate:.1f} | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {_fmt(cores)} |"
        )
    return "\n".join(lines)


def _grid(plt, panels: int, columns: int = 3):
    """A figure with `panels` axes in rows of `columns`; unused axes are hidden."""
    rows = max(1, -(-panels // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def plot_latency(points: list[dict], path: Path) -> None:
    """p50/p99 latency vs throughput per workload, each closed-loop level annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for p in points:
        if p["mode"] == "concurrency":
            series.setdefault(p["workload"], []).append(p)
    workloads = sorted(series)
    fig, axes = _grid(plt, len(workloads))
    for ax, workload in zip(axes, workloads):
        lines: dict[tuple[str, str], list[dict]] = {}
        for p in series[workload]:
            lines.setdefault((p["system"], p["generator"]), []).append(p)
        for (system, generator), line in sorted(lines.items()):
            line.sort(key=lambda p: p["level"])
            x = [p["throughput_rps"] for p in line]
            for key, style in (("p50_ms", "-o"), ("p99_ms", "--x")):
                ax.plot(x, [p["latency"][key] for p in line], style, label=f"{system}/{generator} {key[:3]}")
            for p in line:
                ax.annotate(f"c{p['level']:g}", (p["throughput_rps"], p["latency"]["p50_ms"]), fontsize=7)
        ax.set_title(workload)
        ax.set_xlabel("throughput (req/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(points: list[dict], path: Path) -> None:
    """Stacked queue/compute per composing model, for each workload's highest perf_analyzer level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen: dict[str, dict] = {}
    for p in points:
        if p["generator"] == "perf_analyzer" and p["mode"] == "concurrency" and p.get("steps"):
            if p["workload"] not in chosen or p["level"] > chosen[p["workload"]]["level"]:
                chosen[p["workload"]] = p
    fig, axes = _grid(plt, len(chosen))
    for ax, (workload, p) in zip(axes, sorted(chosen.items())):
        models = [step["model"] for step in p["steps"]]
        queue = [step["queue_ms"] for step in p["steps"]]
        ax.bar(models, queue, label="queue")
        ax.bar(models, [step["compute_ms"] for step in p["steps"]], bottom=queue, label="compute")
        ax.set_title(f"{workload}, concurrency {p['level']:g}")
        ax.set_ylabel("ms per request")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("Server-side time per composing model (Triton statistics)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_sharing(results: dict) -> str:
    """Whether the load generator shared the server's cores, as the points' CPU readings show."""
    env = results["environment"]
    triton = [p for p in results["points"] if p["system"] == "triton"]
    if any(p.get("server_cpu_cores") is not None for p in triton):
        return (
            "- **The load generator and the server share the same cores.** Every point records the CPU cores used\n"
            "  by the generator (Python or perf_analyzer), by the server process tree, and by the rest of the\n"
            f"  machine: throughput on these {env['cpus_usable']} usable cores is bounded by all three together."
        )
    return (
        f"- **The server ({env['target']} target) ran outside this machine's view:** its CPU use is not in the\n"
        "  points; the load generator's and the rest of this machine's are."
    )


def markdown(results: dict) -> str:
    env = results["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    notes = "\n".join(f"- **{t['name']}**: {t['note']}" for t in results["targets"] if t["note"])
    failures = "\n".join(f"- {f}" for f in results["failures"]) or "none"
    peers = f"## Peers (same queries, same load generator)\n\n{peers_table(results)}\n" if "peers" in results else ""
    stages = results.get("search_stages")
    stages_md = (
        "## Search stages (in-process, one request at a time)\n\n"
        f"Stage 1 = filters + retrieval, stage 2 = fusion head + top-K.\n\n{stages_table(stages)}\n"
        if stages
        else ""
    )
    pairs = results.get("latency_pairs")
    pairs_md = (
        f"## Search against embed_query at concurrency 1, back to back (perf_analyzer)\n\n{pairs_table(pairs)}\n"
        if pairs
        else ""
    )
    return f"""# aisle benchmark

## Targets

{targets_table(results["targets"])}

{notes}

## Environment

- CPU: {env["cpu_model"]}, {env["cpu_count"]} cores ({env["cpus_usable"]} usable); load average at start
  {", ".join(f"{v:.2f}" for v in env["load_average_at_start"])}
- target: {env["target"]} (query encoder backend `{env["encoder_backend"]}`), tritonserver {env["server_version"]}
- perf_analyzer: {env["perf_analyzer"]}
- versions: {versions}
{_cpu_sharing(results)}

## Raw ONNX Runtime and the machine

{ort_table(results["ort"], results["machine"])}

{peers}
{stages_md}
{pairs_md}
## Load points

{points_table(results["points"])}

Failures: {failures}

![latency vs throughput]({LATENCY_PLOT})
![per-step breakdown]({BREAKDOWN_PLOT})
"""


def write_report(results: dict, out: Path) -> dict[str, Path]:
    """Write every output file into `out`; returns their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": out / SUMMARY,
        "results": out / RESULTS,
        "points_csv": out / POINTS_CSV,
        "ort_csv": out / ORT_CSV,
        "markdown": out / MARKDOWN,
        "latency_plot": out / LATENCY_PLOT,
        "breakdown_plot": out / BREAKDOWN_PLOT,
    }
    summary = {"targets": results["targets"], "environment": results["environment"], "failures": results["failures"]}
    summary |= {key: results[key] for key in ("peers", "peer_library") if key in results}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    with paths["points_csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=POINT_COLUMNS)
        writer.writeheader()
        writer.writerows(_flat(p) for p in results["points"])
    with paths["ort_csv"].open("w", newline="") as handle:
        fields = ("name", "batch_size", "padding", "threads", "throughput_seqs", "mean_tokens", "mean_padded_tokens")
        writer = csv.DictWriter(handle, fieldnames=(*fields, "useful_gflops", "executed_gflops"), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["ort"])
    plot_latency(results["points"], paths["latency_plot"])
    plot_breakdown(results["points"], paths["breakdown_plot"])
    paths["markdown"].write_text(markdown(results))
    return paths
