"""Per-second successes and failures of a drill or soak, its events, and the PNG of it.

Why per second: the questions a drill answers are about time — did any request fail while a
replica died, how long until throughput came back — which a single averaged load point hides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aisle.benchmarks.load import Completion


@dataclass(frozen=True)
class Event:
    """Something the drill did, `at_s` seconds after the load started."""

    at_s: float
    label: str


@dataclass
class Timeline:
    """Requests completed in each second of a run (by completion time): successes and failures."""

    ok: list[int]
    errors: list[int]
    events: list[Event] = field(default_factory=list)

    @classmethod
    def of(cls, completions: Sequence[Completion], t0: float, events: Sequence[Event] = ()) -> Timeline:
        """Bucket `completions` (perf_counter times) into whole seconds after `t0`."""
        seconds = int(max((c.end for c in completions), default=t0) - t0) + 1
        ok = np.zeros(seconds, dtype=np.int64)
        errors = np.zeros(seconds, dtype=np.int64)
        for c in completions:
            bucket = int(c.end - t0)
            (ok if c.error is None else errors)[bucket] += 1
        return cls(ok.tolist(), errors.tolist(), list(events))

    def rate(self, start_s: float, end_s: float) -> float:
        """Mean successful requests/s over the whole seconds in [start_s, end_s)."""
        window = self.ok[int(np.ceil(start_s)) : int(end_s)]
        return float(np.mean(window)) if window else float("nan")

    def to_dict(self) -> dict:
        return {"ok_per_s": self.ok, "errors_per_s": self.errors, "events": [asdict(e) for e in self.events]}

    def plot(self, path: Path, title: str) -> None:
        """Requests/s and errors/s against time, with the events as vertical lines."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4))
        t = np.arange(len(self.ok)) + 0.5
        ax.plot(t, self.ok, label="successful requests/s", color="tab:blue")
        ax.bar(t, self.errors, width=1.0, color="tab:red", alpha=0.7, label=f"errors/s (total {sum(self.errors)})")
        for k, event in enumerate(self.events):
            ax.axvline(event.at_s, color="gray", linestyle="--", linewidth=1)
            ax.annotate(event.label, (event.at_s, 0), xytext=(3, 12 + 12 * (k % 3)), textcoords="offset points")
        ax.set_xlabel("seconds since load start")
        ax.set_ylabel("requests per second")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
