"""An evaluation sweep's run folders as data: who ran (env, agent, seed), what came out, what is missing.

A run folder is one ``experiments.evaluate`` job (``.hydra/``, ``config.yaml``, ``metrics.json``,
``steps.parquet`` or ``.csv``). Failed runs (no ``metrics.json``; ``error.txt`` gives the reason) and
missing ones (an env x agent x seed combination of the sweep grid with no folder) are kept, so the
report can list them.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from agents.config import HEURISTIC_NAMES


@dataclass
class Run:
    """One run folder of the sweep: its identity, and its metrics or why it has none."""

    path: Path
    env: str | None
    agent: str | None
    seed: int | None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    steps_path: Path | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.metrics is not None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _error_summary(run_dir: Path) -> str:
    error_file = run_dir / "error.txt"
    if error_file.exists():
        lines = [ln for ln in error_file.read_text().strip().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "failed (empty error.txt)"
    return "no metrics.json (the run did not finish)"


def load_run(run_dir: Path) -> Run:
    """One run folder: its identity (env, agent, seed), metrics or failure reason."""
    cfg = _load_yaml(run_dir / "config.yaml") or _load_yaml(run_dir / ".hydra" / "config.yaml") or {}
    hydra_cfg = _load_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = (hydra_cfg.get("hydra") or {}).get("runtime", {}).get("choices", {}) or {}
    env = choices.get("env") or (cfg.get("env") or {}).get("name")
    agent = choices.get("agent") or (cfg.get("agent") or {}).get("name")
    seed = cfg.get("seed")
    run = Run(
        path=run_dir,
        env=env,
        agent=agent,
        seed=int(seed) if isinstance(seed, int) else None,
        overrides=_load_yaml(run_dir / ".hydra" / "overrides.yaml") or [],
    )
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        try:
            run.metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as exc:
            run.error = f"unreadable metrics.json: {exc}"
    else:
        run.error = _error_summary(run_dir)
    for name in ("steps.parquet", "steps.csv"):
        if (run_dir / name).exists():
            run.steps_path = run_dir / name
    return run


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run folder (one with ``.hydra/config.yaml``) under ``sweep_dir``."""
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml") if ".submitit" not in p.parts})
    return [load_run(d) for d in dirs]


def _swept_values(sweep_dir: Path) -> dict[str, list[str]]:
    """Values of env, agent and seed the sweep asked for (from ``multirun.yaml``), if readable."""
    mr = _load_yaml(sweep_dir / "multirun.yaml")
    if not isinstance(mr, dict):
        return {}
    hydra_node = mr.get("hydra") or {}
    params = ((hydra_node.get("sweeper") or {}).get("params")) or {}
    overrides = [f"{k}={v}" for k, v in params.items()]
    overrides += list(((hydra_node.get("overrides") or {}).get("task")) or [])
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # an unparseable record only costs the missing-run check its precision
        return {}
    values: dict[str, list[str]] = {}
    for ov in parsed:
        key = ov.get_key_element()
        if key not in ("env", "agent", "seed"):
            continue
        values[key] = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
    return values


def missing_runs(runs: list[Run], sweep_dir: Path) -> list[tuple[str, str, int]]:
    """(env, agent, seed) combinations of the sweep with no run folder."""
    swept = _swept_values(sweep_dir)
    levels = {
        "env": {r.env for r in runs if r.env} | set(swept.get("env", [])),
        "agent": {r.agent for r in runs if r.agent} | set(swept.get("agent", [])),
        "seed": {r.seed for r in runs if r.seed is not None} | {int(s) for s in swept.get("seed", [])},
    }
    present = {(r.env, r.agent, r.seed) for r in runs}
    return [
        c
        for c in itertools.product(sorted(levels["env"]), ordered_agents(levels["agent"]), sorted(levels["seed"]))
        if c not in present
    ]


def ordered_agents(agents: set[str] | list[str]) -> list[str]:
    """Agents in table and plot order: the heuristics in :data:`agents.config.HEURISTIC_NAMES` order, then the rest."""
    known = [a for a in HEURISTIC_NAMES if a in agents]
    return known + sorted(set(agents) - set(known))


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per successful run: identity and its mean metrics over episodes."""
    rows = []
    for r in runs:
        if not r.ok:
            continue
        mean = r.metrics.get("mean", {})
        rows.append(
            {
                "env": r.env,
                "agent": r.agent,
                "seed": r.seed,
                "episodes": r.metrics.get("episodes"),
                **{k: (np.nan if v is None else v) for k, v in mean.items()},
            }
        )
    return pd.DataFrame(rows)


_STEP_COLUMNS = ["episode", "step", "day", "hour", "plan", "channel", "kind", "active", "share", "spend", "deep_value"]


def read_steps(path: Path, episode: int | None = None) -> pd.DataFrame:
    if path.suffix == ".parquet":
        filters = [("episode", "==", episode)] if episode is not None else None
        frame = pd.read_parquet(path, columns=_STEP_COLUMNS, filters=filters)
    else:
        frame = pd.read_csv(path, usecols=_STEP_COLUMNS)
        if episode is not None:
            frame = frame[frame["episode"] == episode]
    for col in ("channel", "kind"):
        frame[col] = frame[col].astype(str)
    return frame


def step_curves(runs: list[Run]) -> dict[str, dict[str, pd.DataFrame]]:
    """Per env and allocator: mean over episodes and seeds of value and spend by step (summed over plans)."""
    curves: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for r in runs:
        if not (r.ok and r.steps_path):
            continue
        steps = read_steps(r.steps_path)
        per_step = steps.groupby(["episode", "step"], as_index=False)[["deep_value", "spend"]].sum()
        per_step["hour"] = steps.groupby(["episode", "step"])["hour"].first().to_numpy()
        curves.setdefault(r.env, {}).setdefault(r.agent, []).append(per_step)
    return {env: {agent: pd.concat(frames) for agent, frames in by_agent.items()} for env, by_agent in curves.items()}


def env_info(runs: list[Run], env: str) -> tuple[int, float | None]:
    for r in runs:
        if r.ok and r.env == env:
            cfg = _load_yaml(r.path / "config.yaml") or {}
            env_cfg = cfg.get("env") or {}
            return int(env_cfg.get("steps_per_day", 24)), env_cfg.get("daily_budget")
    return 24, None
