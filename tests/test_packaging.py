"""The package is a library: the wheel carries presets and Hydra configs, and works outside the repository.

Builds the wheel from this checkout (no build isolation: nothing is downloaded), installs it with
``--no-deps`` into an empty folder, and from a directory outside the repository, with only that
folder and the test environment's dependencies on the path, makes every preset and runs an
evaluation entry point. The Numba cache lands beside the installed kernels, so the first call
compiles (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from envs.scenario import list_presets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel file, folder it is installed into)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("budgetshift-*.whl")
    site = tmp / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return wheel, site


def _run_outside(site: Path, cwd: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_wheel_ships_every_preset_and_config(installed) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert in_tree, "no configs found in the source tree"
    assert in_tree <= names, f"missing from the wheel: {sorted(in_tree - names)[:10]}"
    # conf/hydra/launcher/submitit_slurm.yaml's launcher: Hydra loads launchers from hydra_plugins only.
    assert "hydra_plugins/budgetshift_slurm_launcher/slurm_launcher.py" in names


@pytest.mark.slow
def test_installed_wheel_makes_every_preset_and_evaluates_outside_the_repository(installed, tmp_path: Path) -> None:
    _, site = installed
    presets = list_presets()
    check = _run_outside(
        site,
        tmp_path,
        [
            "-c",
            "import gymnasium as gym, envs, experiments, conf; "
            f"assert envs.__file__.startswith({str(site)!r}), envs.__file__; "
            f"assert experiments.__file__.startswith({str(site)!r}), experiments.__file__; "
            f"[gym.make('BudgetShift-v0', scenario=p).reset(seed=0) for p in {presets!r}]; "
            f"print('made', {len(presets)})",
        ],
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert f"made {len(presets)}" in check.stdout

    run = _run_outside(
        site,
        tmp_path,
        ["-m", "experiments.evaluate", "agent=uniform", "env=small", "episodes=1", "hydra.run.dir=out"],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.slow
def test_installed_wheel_allocates_with_the_shipped_generalist(installed, tmp_path: Path) -> None:
    """`python -m agents.allocator generalist ...` on a fresh install, without training: the bundle ships
    in the wheel and loads against its pinned digest."""
    _, site = installed
    example = ROOT / "agents" / "bundles" / "generalist" / "example_stats.csv"
    run = _run_outside(
        site, tmp_path, ["-m", "agents.allocator", "generalist", str(example), "--budget", "36000", "--hour", "14"]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    allocation = json.loads(run.stdout)
    assert abs(sum(p["share"] for p in allocation["plans"]) - 1.0) < 1e-6
