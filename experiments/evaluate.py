"""Evaluate one allocator on one scenario: ``python -m experiments.evaluate agent=thompson env=default``.

A sweep is plain Hydra (``-m agent=static,uniform,oracle seed=0,1,2 env=default,credit``, with
``hydra/launcher=joblib`` or ``submitit_local`` to run jobs in parallel). Each run folder gets:

- ``.hydra/`` (Hydra's record) and ``config.yaml``: the resolved config;
- ``metrics.json``: per-episode and mean score, value, spend, deep conversions, CPA vs target,
  billing ratio, budget utilisation, compliance-cap violations, spend on potential plans and traps;
- ``steps.parquet`` (or ``.csv``): one row per episode, step and plan (share, budget, spend and
  results), for the report's plots;
- ``provenance.json``: command, versions, git commit; ``error.txt`` with the traceback if it failed.

The per-step table and then ``metrics.json`` are written last, each to a temporary file renamed
into place, so a killed job never leaves a half-written one: a folder with an intact
``metrics.json`` (checked by :func:`experiments.sweep.load_run`) holds a finished run.

Re-running a sweep (the same command with the same explicit ``hydra.sweep.dir``) resumes it: a job
whose folder already holds a finished run of the same resolved config keeps it and logs so; a
folder with a failed, killed or damaged run is run again. A finished run of a different config is
never overwritten: the job refuses, naming the first key that differs (delete the folder, or use
another ``hydra.sweep.dir``, to run the new config). Hydra's own settings (launcher, directories)
are not part of the compared config.

:func:`evaluate_allocator` is the reusable core (training's periodic evaluation calls it too).
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.base import Allocator
from agents.registry import make_allocator
from envs.budget_env import BudgetShiftEnv
from envs.features import CHANNELS, VERTICALS
from envs.kernels import CONVERSIONS, DEEP0, SPEND
from envs.scenario import KIND_NAMES, KIND_POTENTIAL, KIND_TRAP, Scenario
from experiments import provenance
from experiments.common import agent_seed, check_run_config, episode_seeds, register_configs
from experiments.sweep import CHURN_METRICS, EPISODE_METRICS, load_run, read_yaml

log = logging.getLogger(__name__)
register_configs()

#: What a run writes; a re-run that does the work again first removes what an earlier attempt left.
RUN_OUTPUTS = ("metrics.json", "error.txt", "steps.parquet", "steps.csv")


def _finite(x: float) -> float | None:
    """JSON has no inf/NaN: undefined ratios (no deep conversion yet) are written as null."""
    return float(x) if math.isfinite(x) else None


def run_episode(
    env: BudgetShiftEnv,
    allocator: Allocator,
    env_seed: int,
    *,
    max_steps: int | None = None,
    record_steps: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """One episode of ``allocator`` in ``env`` from ``env_seed``: its metrics and (optionally) step columns."""
    sc = env.scenario
    env.reset(seed=env_seed)
    allocator.reset(sc, env.portfolio, seed=agent_seed(env_seed))
    n_steps = env.horizon if max_steps is None else min(max_steps, env.horizon)
    n = env.n_plans
    cols = {
        k: np.zeros((n_steps, n))
        for k in ("share", "budget", "spend", "impressions", "clicks", "conversions", "deep_events", "deep_value")
    }
    active_steps = np.zeros((n_steps, n), dtype=bool)
    episode_return, cap_withheld, cap_violations = 0.0, 0.0, 0
    info: dict[str, Any] = {}
    for t in range(n_steps):
        active = env.active_mask()
        shares = allocator.allocate(env.reporting_stats(), env.clock(), active)
        _, reward, terminated, _, info = env.step_shares(shares)
        episode_return += reward
        if info["cap_withheld"] > 1e-9:  # below that it is rounding in the cap's rescaling
            cap_withheld += info["cap_withheld"]
            cap_violations += 1
        active_steps[t] = active
        cols["share"][t] = info["shares"]
        for key in ("budget", "spend", "impressions", "clicks", "conversions", "deep_value"):
            cols[key][t] = info[key]
        cols["deep_events"][t] = info["deep_events"][:, 0]
        if terminated:
            break
    parts = info["score"] if "score" in info else env.settle().as_dict()

    pf = env.portfolio
    spend_by_plan = env.total[:, SPEND]
    spend = float(spend_by_plan.sum())
    conversions = env.total[:, CONVERSIONS]
    target_spend = float((conversions * pf.target_cpa).sum())
    metrics = {
        "env_seed": int(env_seed),
        "steps": n_steps,
        "complete": n_steps == env.horizon,
        **{k: _finite(v) for k, v in parts.items()},
        "cpa_ratio": _finite(parts["cpa"] / parts["cpa_target"]),
        "conversions": float(conversions.sum()),
        "deep_events_matured": float(env.total[:, DEEP0].sum()),
        # Billing ratio: actual cost per (shallow) conversion over the plans' target CPAs, pooled.
        "billing_ratio": _finite(spend / target_spend) if target_spend > 0 else None,
        "budget_utilisation": spend / (n_steps / sc.steps_per_day * sc.daily_budget),
        "cap_withheld": float(cap_withheld),  # summed share of the step budget withheld by caps
        "cap_violation_steps": int(cap_violations),
        # Analysis only (hidden plan kinds): where the money went.
        "spend_share_potential": float(spend_by_plan[pf.kind == KIND_POTENTIAL].sum() / spend) if spend else 0.0,
        "spend_share_trap": float(spend_by_plan[pf.kind == KIND_TRAP].sum() / spend) if spend else 0.0,
        "return": float(episode_return),
        **budget_churn(cols["budget"], sc.steps_per_day, int(env.sim.platform.edits[0].sum())),
    }
    if not record_steps:
        return metrics, None
    steps = np.repeat(np.arange(n_steps), n)
    plans = np.tile(np.arange(n), n_steps)
    table = {
        "step": steps,
        "day": steps // sc.steps_per_day,
        "hour": (steps % sc.steps_per_day) * sc.hours_per_step,
        "plan": plans,
        "account": pf.account[plans],
        "channel": np.asarray(CHANNELS)[env.plan_channel_vocab][plans],
        "vertical": np.asarray(VERTICALS)[env.plan_vertical_vocab][plans],
        "kind": np.asarray(KIND_NAMES)[pf.kind][plans],  # hidden truth, for analysis
        "active": active_steps.ravel(),
        **{k: v.ravel() for k, v in cols.items()},
    }
    return metrics, table


def budget_churn(budget: np.ndarray, steps_per_day: int, learning_resets: int) -> dict[str, float | int | None]:
    """:data:`experiments.sweep.CHURN_METRICS` of an episode from its step budgets ``(steps, plans)``:
    ``budget_change``, the mean over plans and consecutive whole days both funded of ``|b_d - b_{d-1}| /
    max(b_d, b_{d-1})`` (b: the plan's day budget; symmetric and in [0, 1), so a plan raised from almost
    nothing does not outweigh the rest; null with fewer than two whole days), and the platform's
    ``learning_resets`` (significant edits) of the episode."""
    days = budget.shape[0] // steps_per_day
    daily = budget[: days * steps_per_day].reshape(days, steps_per_day, budget.shape[1]).sum(axis=1)
    previous, current = daily[:-1], daily[1:]
    funded = (previous > 0) & (current > 0)
    change = np.abs(current - previous)[funded] / np.maximum(current, previous)[funded]
    return {"budget_change": float(change.mean()) if change.size else None, "learning_resets": learning_resets}


def evaluate_allocator(
    allocator: Allocator,
    scenario: str | Scenario | Any,
    seeds: Sequence[int],
    *,
    max_steps: int | None = None,
    backend: str = "numba",
    step_tables: list[pd.DataFrame] | None = None,
) -> list[dict[str, Any]]:
    """Run ``allocator`` for one episode per env seed in ``seeds``; return the per-episode metrics.

    :param scenario: a preset name, a mapping or a :class:`envs.scenario.Scenario`.
    :param seeds: env seeds, one per episode (see :func:`experiments.common.episode_seeds`); the
        allocator's own seed is derived from each (:func:`experiments.common.agent_seed`).
    :param max_steps: stop each episode after this many steps (the score is settled there).
    :param step_tables: if given, one per-step DataFrame per episode is appended to it.
    """
    env = BudgetShiftEnv(scenario, backend=backend)
    episodes = []
    for i, env_seed in enumerate(seeds):
        metrics, table = run_episode(
            env, allocator, int(env_seed), max_steps=max_steps, record_steps=step_tables is not None
        )
        episodes.append({"episode": i, **metrics})
        if step_tables is not None:
            step_tables.append(pd.DataFrame({"episode": i, **table}))
    return episodes


def summarise(episodes: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and standard deviation over episodes of every :data:`EPISODE_METRICS` entry."""
    mean, std = {}, {}
    for key in (*EPISODE_METRICS, *CHURN_METRICS):
        values = np.array([e[key] if e.get(key) is not None else np.nan for e in episodes], dtype=float)
        finite = values[np.isfinite(values)]
        mean[key] = float(finite.mean()) if len(finite) else None
        std[key] = float(finite.std(ddof=1)) if len(finite) > 1 else None
    return {"mean": mean, "std": std}


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it onto ``path``: a kill leaves the old file or none."""
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


def write_steps(tables: list[pd.DataFrame], run_dir: Path, fmt: str) -> Path | None:
    if fmt == "none" or not tables:
        return None
    frame = pd.concat(tables, ignore_index=True)
    for col in ("channel", "vertical", "kind"):
        frame[col] = frame[col].astype("category")
    path = run_dir / f"steps.{fmt}"
    if fmt == "parquet":
        replace_atomically(path, lambda p: frame.to_parquet(p, engine="pyarrow", index=False))
    else:
        replace_atomically(path, lambda p: frame.to_csv(p, index=False))
    return path


def run(cfg: DictConfig, run_dir: Path, env_source: str | None = None) -> dict[str, Any]:
    """The whole evaluation of one config into ``run_dir``; returns what ``metrics.json`` holds."""
    for name in RUN_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)
    scenario = check_run_config(cfg, env_source)  # bad values fail here, naming the field
    allocator = make_allocator(cfg.agent)
    seeds = episode_seeds(cfg.seed, cfg.episodes)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    provenance.write(run_dir, seed=cfg.seed)

    tables: list[pd.DataFrame] | None = [] if cfg.steps_table != "none" else None
    episodes = evaluate_allocator(
        allocator, scenario, seeds, max_steps=cfg.max_steps, backend=cfg.backend, step_tables=tables
    )
    metrics = {
        "agent": cfg.agent.name,
        "kind": cfg.agent.kind,
        "env": scenario.name,
        "seed": cfg.seed,
        "episodes": len(episodes),
        "episode_seeds": seeds,
        **summarise(episodes),
        "per_episode": episodes,
    }
    write_steps(tables or [], run_dir, cfg.steps_table)
    # Last: an intact metrics.json is what marks the folder as a finished run.
    replace_atomically(run_dir / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    return metrics


def first_difference(recorded: Any, current: Any, key: str = "") -> str | None:
    """The first dotted key whose value differs between two configs, with both values; None if equal."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for k in [*recorded, *(k for k in current if k not in recorded)]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in recorded or k not in current:
                return f"{sub} is only in the {'current' if k in current else 'recorded'} config"
            diff = first_difference(recorded[k], current[k], sub)
            if diff:
                return diff
        return None
    return None if recorded == current else f"{key or 'config'}: recorded {recorded!r}, now {current!r}"


class RunConflictError(RuntimeError):
    """The run folder holds a finished run of another config; overwriting it would lose it."""


def finished_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of the finished run of ``cfg`` already in ``run_dir`` (a re-run sweep), None if there is none.

    :raises RunConflictError: ``run_dir`` holds a finished run of another config.
    """
    run = load_run(run_dir)
    recorded = read_yaml(run_dir / "config.yaml")  # this run's record; .hydra/ was just rewritten by Hydra
    if not run.ok or not isinstance(recorded, dict):
        return None
    # The same round trip as config.yaml's, so that types compare like for like.
    diff = first_difference(recorded, yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True)))
    if diff:
        raise RunConflictError(
            f"{run_dir} holds a finished run of another config ({diff}); delete that folder or choose "
            "another hydra.sweep.dir / hydra.run.dir to run this config"
        )
    return run.metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    env_choice = hc.runtime.choices.get("env")
    metrics = finished_metrics(cfg, run_dir)  # a conflict raises before error.txt could mark the kept run
    if metrics is not None:
        log.info("kept the finished run in %s: same config (delete its metrics.json to run it again)", run_dir)
    else:
        try:
            metrics = run(cfg, run_dir, env_source=f"env={env_choice}: conf/env/{env_choice}.yaml + overrides")
        except Exception:
            (run_dir / "error.txt").write_text(traceback.format_exc())
            raise
    mean = metrics["mean"]
    log.info(
        "%s on %s, seed %d, %d episodes: score %.0f (value %.0f, spend %.0f, CPA/target %s, utilisation %.3f)",
        metrics["agent"],
        metrics["env"],
        cfg.seed,
        metrics["episodes"],
        mean["score"],
        mean["value"],
        mean["spend"],
        f"{mean['cpa_ratio']:.2f}" if mean["cpa_ratio"] is not None else "n/a",
        mean["budget_utilisation"],
    )
    return float(mean["score"])


if __name__ == "__main__":
    main()
