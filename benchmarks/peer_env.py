"""The peers' own virtual environment: infinity-emb and sentence-transformers, apart from aisle's.

Why a separate venv: infinity-emb pins its own transformers/optimum/onnxruntime ranges, which must
not move aisle's (the exporter and the parity gate are validated against aisle's versions). The
suite creates it once under the artifacts folder and reuses it while its completion stamp names
the same pins; a half-finished install has no stamp and is rebuilt.

Why a constraints file: pip resolves infinity-emb[torch] and sentence-transformers against torch,
and without `torch==X+cpu` in force a resolver step can pull the multi-GB CUDA build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from aisle.benchmarks.errors import BenchmarkError

#: Where `aisle bench` keeps the peers' venv unless told otherwise (relative to the working directory,
#: like every artifacts path of the Makefile).
DEFAULT_VENV = Path("artifacts/peers-venv")

#: The torch the peers run on: the CPU wheel of the same release aisle's Makefile installs.
TORCH_CPU = "torch==2.13.0+cpu"

#: What the peers' venv holds (infinity 0.0.78: the release whose offline recipe is checked here).
PEER_REQUIREMENTS = (
    "infinity-emb[server,torch,optimum]==0.0.78",
    "sentence-transformers>=3.2",  # backend="onnx" arrived in 3.2; infinity 0.0.78 caps it below 4
)

#: Distributions whose versions are recorded with every peer result.
PEER_PACKAGES = ("infinity-emb", "sentence-transformers", "optimum", "onnxruntime", "torch", "transformers")

STAMP = "aisle-peers.json"
LOG = "install.log"


@dataclass(frozen=True)
class PeerEnv:
    """A venv at `path` built from `requirements` with torch held to `torch` by a constraints file."""

    path: Path = DEFAULT_VENV
    requirements: tuple[str, ...] = PEER_REQUIREMENTS
    torch: str = TORCH_CPU

    @property
    def python(self) -> Path:
        return self.bin("python")

    def bin(self, name: str) -> Path:
        """An entry point installed into the venv (e.g. infinity_emb, optimum-cli); absolute, because the
        peers run from inside their model folder."""
        return (self.path / "bin" / name).absolute()

    def wanted(self) -> dict:
        """What the stamp must say for the venv to be reused."""
        return {"requirements": list(self.requirements), "torch": self.torch}

    def stamp(self) -> dict | None:
        try:
            return json.loads((self.path / STAMP).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def complete(self) -> bool:
        """True when a finished install with the same pins is there (the stamp is written last)."""
        stamp = self.stamp()
        return bool(stamp) and {k: stamp.get(k) for k in self.wanted()} == self.wanted() and self.python.exists()

    def versions(self) -> dict[str, str]:
        """Installed versions of PEER_PACKAGES, as recorded in the stamp at install time."""
        stamp = self.stamp()
        if not stamp:
            raise BenchmarkError(f"peers venv {self.path} is not installed (no {STAMP}); run ensure() first")
        return dict(stamp["versions"])

    def install_steps(self, constraints: Path) -> list[tuple[str, list[str]]]:
        """(label, command) of each install step, in order."""
        pip = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
        return [
            ("create venv", [sys.executable, "-m", "venv", str(self.path)]),
            ("CPU torch", [*pip, self.torch]),
            ("infinity-emb, sentence-transformers", [*pip, *self.requirements]),
        ]

    def ensure(self, *, progress: bool = True) -> PeerEnv:
        """Build the venv unless a complete one is there; raise naming the failed step and the log."""
        if self.complete():
            return self
        from tqdm import tqdm

        if self.path.exists():
            shutil.rmtree(self.path)  # no stamp: an interrupted or outdated install, start clean
        self.path.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.path.parent / f"{self.path.name}-{LOG}"
        constraints = self.path.parent / f"{self.path.name}-constraints.txt"
        constraints.write_text(self.torch + "\n")
        steps = self.install_steps(constraints)
        env = {**os.environ, "PIP_PROGRESS_BAR": "off"}
        with log_path.open("w") as log, tqdm(steps, desc="peers venv", unit="step", disable=not progress) as bar:
            for label, command in bar:
                bar.set_postfix_str(label)
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                if result.returncode != 0:
                    tail = log_path.read_text(errors="replace")[-2500:]
                    raise BenchmarkError(
                        f"installing the benchmark peers failed at step {label!r} (exit {result.returncode}); "
                        f"the venv {self.path} is left without its stamp and is rebuilt next run. Full log: "
                        f"{log_path}; it ends with:\n{tail}\nFix the cause (network to the package index, disk "
                        "space) or run without peers (aisle bench --no-peers)."
                    )
        versions = self._installed_versions()
        (self.path / STAMP).write_text(json.dumps({**self.wanted(), "versions": versions}, indent=2) + "\n")
        return self

    def _installed_versions(self) -> dict[str, str]:
        """Ask the venv's own interpreter (aisle's importlib sees aisle's venv, not this one)."""
        script = (
            "import json, sys\nfrom importlib import metadata\n"
            "def v(p):\n    try:\n        return metadata.version(p)\n    except metadata.PackageNotFoundError:\n"
            "        return 'not installed'\n"
            "print(json.dumps({'python': sys.version.split()[0], **{p: v(p) for p in sys.argv[1:]}}))"
        )
        result = subprocess.run(
            [str(self.python), "-c", script, *PEER_PACKAGES], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BenchmarkError(f"peers venv {self.path}: cannot read installed versions: {result.stderr[-1000:]}")
        return json.loads(result.stdout)

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}
