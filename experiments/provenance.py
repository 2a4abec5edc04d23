"""What a run needs to be repeated: command line, seed, library versions, git commit and dirty flag.

Every entry point writes :func:`collect` into its run folder (``provenance.json``): one record
(:func:`write`), or for training, whose runs resume, one record per session in a list (:func:`append`).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = (
    "budgetshift",
    "numpy",
    "numba",
    "gymnasium",
    "stable-baselines3",
    "sb3-contrib",
    "torch",
    "hydra-core",
    "omegaconf",
    "optuna",
    "onnx",
    "onnxruntime",
    "pandas",
    "scipy",
)


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit checked out and whether tracked files differ from it (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def collect(seed: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "command": [sys.executable, *sys.argv],
        "seed": seed,
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "git": git_state(),
        **(extra or {}),
    }


def write(run_dir: Path, seed: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    path = Path(run_dir) / "provenance.json"
    path.write_text(json.dumps(collect(seed, extra), indent=2))
    return path


def append(run_dir: Path, seed: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Add this session's record to the run's list of records (a single record from before becomes the first)."""
    path = Path(run_dir) / "provenance.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    if isinstance(records, dict):
        records = [records]
    path.write_text(json.dumps([*records, collect(seed, extra)], indent=2))
    return path
