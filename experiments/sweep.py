"""An evaluation sweep's run folders as data: who ran (env, agent, seed), what came out, what is wrong.

A run folder is one ``experiments.evaluate`` job (``.hydra/``, ``config.yaml``, ``metrics.json``,
``steps.parquet`` or ``.csv``, ``error.txt`` if it raised). This module owns that format: the
metrics the evaluator writes (:data:`EPISODE_METRICS`) and the checks that a folder holds a
finished, intact run (:func:`load_run`), which both the report and the evaluator's re-run of a
sweep rely on. A folder that fails them is kept as a failed run with the reason (file and what is
wrong), never dropped and never read as data: no ``metrics.json`` (``error.txt``'s last line, or
the run was killed), a ``metrics.json`` that is not what the evaluator writes, a steps table that
is missing or truncated. A finished run whose env, agent, seed and resolved config equal an
earlier folder's (a copied folder, a sweep re-run with another job list) is a duplicate, counted
once. Missing runs are the env x agent x seed combinations of the sweep grid with no folder.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from agents.config import HEURISTIC_NAMES

#: Per-episode metrics of ``metrics.json``, averaged into its ``mean`` (``experiments.evaluate``).
EPISODE_METRICS = (
    "score",
    "value",
    "matured_value",
    "settled_value",
    "spend",
    "deep_conversions",
    "cpa",
    "cpa_ratio",
    "penalty",
    "conversions",
    "billing_ratio",
    "budget_utilisation",
    "cap_withheld",
    "cap_violation_steps",
    "spend_share_potential",
    "spend_share_trap",
    "return",
)
#: Budget churn per episode (the platform sends a plan whose day budget moved by more than its edit
#: threshold back into learning): the mean relative change of a plan's day budget against its previous
#: day's, and the learning resets (significant edits) the allocation caused. Optional: run folders
#: written before they existed stay readable (NaN in the tables).
CHURN_METRICS = ("budget_change", "learning_resets")
#: Ratios that are undefined without a (deep) conversion: JSON has no inf, so the evaluator writes null.
UNDEFINED_WITHOUT_CONVERSIONS = ("cpa", "cpa_ratio", "billing_ratio")


@dataclass
class Run:
    """One run folder of the sweep: its identity, and its metrics or why it has none."""

    path: Path
    env: str | None
    agent: str | None
    seed: int | None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config the run recorded
    metrics: dict[str, Any] | None = None  # set only when metrics.json and the steps table are intact
    error: str | None = None
    steps_path: Path | None = None
    duplicate_of: Path | None = None  # an earlier folder holding the same finished run

    @property
    def ok(self) -> bool:
        """Finished, with intact outputs."""
        return self.metrics is not None

    @property
    def counted(self) -> bool:
        """Finished and not a duplicate: one of the seeds the statistics rest on."""
        return self.ok and self.duplicate_of is None


#: libyaml's safe loader where PyYAML was built with it (the same objects as ``yaml.SafeLoader``, ~8x
#: faster: a 350-run sweep's config files take ~0.3 s to read instead of ~2.7 s).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> Any:
    """A YAML file's content; None when it is missing or unreadable (binary, truncated, not YAML)."""
    try:
        return yaml.load(path.read_text(), Loader=_SAFE_LOADER)  # a safe loader, either way
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None


def _mapping(node: Any, *keys: str) -> dict[str, Any]:
    """``node[k1][k2]...`` if every level is a mapping, else an empty one (a damaged file reads as empty)."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _json_kind(value: Any) -> str:
    """How JSON calls ``value``'s type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), type(value).__name__)


def _number_problem(value: Any, where: str, *, nullable: bool) -> str | None:
    if value is None:
        return None if nullable else f"{where} is null, expected a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where} is {_json_kind(value)} ({value!r:.40}), expected a number"
    if not math.isfinite(value):
        return f"{where} is {value}, expected a finite number (the evaluator writes null for undefined ratios)"
    return None


_TOP_LEVEL = (("agent", str), ("env", str), ("seed", int), ("episodes", int), ("mean", dict), ("per_episode", list))


def metrics_problem(metrics: Any) -> str | None:
    """What in a parsed ``metrics.json`` differs from what ``experiments.evaluate`` writes; None if nothing.

    Checks the identity fields, one ``per_episode`` entry per episode with a finite number for every
    :data:`EPISODE_METRICS` entry (null only for :data:`UNDEFINED_WITHOUT_CONVERSIONS`) and its step
    count, and a ``mean`` for every metric that is null only where every episode's value is.
    """
    if not isinstance(metrics, dict):
        return f"expected a JSON object, got {_json_kind(metrics)}"
    for key, kind in _TOP_LEVEL:
        if key not in metrics:
            return f"no '{key}'"
        value = metrics[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"'{key}' is {_json_kind(value)} ({value!r:.40}), expected {_json_kind(kind())}"
    episodes = metrics["per_episode"]
    if metrics["episodes"] < 1 or len(episodes) != metrics["episodes"]:
        return f"'episodes' is {metrics['episodes']} but 'per_episode' has {len(episodes)} entries"
    for i, episode in enumerate(episodes):
        if not isinstance(episode, dict):
            return f"per_episode[{i}] is {_json_kind(episode)}, expected an object"
        steps = episode.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            return f"per_episode[{i}].steps is {steps!r:.40}, expected a whole number >= 1"
        for key in EPISODE_METRICS:
            if key not in episode:
                return f"per_episode[{i}] has no '{key}'"
            problem = _number_problem(
                episode[key], f"per_episode[{i}].{key}", nullable=key in UNDEFINED_WITHOUT_CONVERSIONS
            )
            if problem:
                return problem
        for key in CHURN_METRICS:
            if key in episode:
                problem = _number_problem(episode[key], f"per_episode[{i}].{key}", nullable=key == "budget_change")
                if problem:
                    return problem
    mean = metrics["mean"]
    for key in EPISODE_METRICS:
        if key not in mean:
            return f"mean has no '{key}'"
        defined = sum(e[key] is not None for e in episodes)
        if mean[key] is None and defined:
            return f"mean.{key} is null but {defined} of {len(episodes)} episodes have a value"
        problem = _number_problem(mean[key], f"mean.{key}", nullable=not defined)
        if problem:
            return problem
    return None


def _identity_problem(metrics: dict[str, Any], config: dict[str, Any]) -> str | None:
    """A metrics.json that another run wrote (copied in by hand) names another agent, env or seed."""
    recorded = {
        "agent": _mapping(config, "agent").get("name"),
        "env": _mapping(config, "env").get("name"),
        "seed": config.get("seed"),
    }
    for key, expected in recorded.items():
        if metrics[key] != expected:
            return f"{key} {metrics[key]!r} but config.yaml has {expected!r} (copied from another run?)"
    return None


_STEP_COLUMNS = ["episode", "step", "day", "hour", "plan", "channel", "kind", "active", "share", "spend", "deep_value"]


def steps_problem(path: Path, metrics: dict[str, Any]) -> str | None:
    """What is wrong with a per-step table (missing, unreadable, truncated) given its run's metrics; None if intact.

    The evaluator writes one row per episode, step and plan, so an intact table has
    ``sum(steps) x plans`` rows with no empty cell.
    """
    if not path.exists():
        return f"{path.name} is missing"
    try:
        frame = _read_step_columns(path)
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's and pandas' errors for a damaged file
        reason = str(exc).replace(str(path), path.name).strip() or type(exc).__name__
        return f"{path.name} is unreadable ({reason.splitlines()[0]})"
    n_plans = frame["plan"].nunique()
    expected = sum(e["steps"] for e in metrics["per_episode"]) * n_plans
    if len(frame) != expected:
        return f"{path.name} has {len(frame)} rows, expected {expected} (episode steps x {n_plans} plans): truncated?"
    empty = [c for c in _STEP_COLUMNS if frame[c].isna().any()]
    if empty:
        return f"{path.name} has empty cells in {empty}: truncated?"
    return None


def _error_summary(run_dir: Path) -> str:
    error_file = run_dir / "error.txt"
    if error_file.exists():
        lines = [ln for ln in error_file.read_text(errors="replace").strip().splitlines() if ln.strip()]
        return f"error.txt: {lines[-1].strip()}" if lines else "failed (empty error.txt)"
    return "no metrics.json and no error.txt: the run did not finish (killed?)"


def _read_metrics(path: Path) -> tuple[Any, str | None]:
    """The parsed ``metrics.json``, or why it cannot be read."""
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except OSError as exc:
        return None, f"metrics.json is unreadable ({exc.strerror})"
    except ValueError as exc:  # JSONDecodeError; UnicodeDecodeError: binary content
        return None, f"metrics.json is not JSON ({exc})"


def load_run(run_dir: Path) -> Run:
    """One run folder: its identity (env, agent, seed) and recorded config, and its metrics or failure reason."""
    cfg = _mapping(read_yaml(run_dir / "config.yaml")) or _mapping(read_yaml(run_dir / ".hydra" / "config.yaml"))
    choices = _mapping(read_yaml(run_dir / ".hydra" / "hydra.yaml"), "hydra", "runtime", "choices")
    seed = cfg.get("seed")
    run = Run(
        path=run_dir,
        env=choices.get("env") or _mapping(cfg, "env").get("name"),
        # The agent's name before its config group: `agent=trained agent.name=generalist` is "generalist",
        # so several trained runs in one report stay apart.
        agent=_mapping(cfg, "agent").get("name") or choices.get("agent"),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        config=cfg,
    )
    run.error = _outputs_problem(run)
    return run


def _outputs_problem(run: Run) -> str | None:
    """Why ``run``'s folder does not hold a finished, intact run (None if it does; sets its metrics then)."""
    metrics_file = run.path / "metrics.json"
    if not metrics_file.exists():
        return _error_summary(run.path)
    if None in (run.env, run.agent, run.seed):
        return "config.yaml and .hydra/ are unreadable: env, agent or seed unknown"
    metrics, problem = _read_metrics(metrics_file)
    problem = problem or metrics_problem(metrics) or _identity_problem(metrics, run.config)
    if problem:
        return problem if problem.startswith("metrics.json") else f"metrics.json: {problem}"
    fmt = run.config.get("steps_table", "none")
    if fmt != "none":
        run.steps_path = run.path / f"steps.{fmt}"
        problem = steps_problem(run.steps_path, metrics)
        if problem:
            return problem
    run.metrics = metrics
    return None


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run folder (one with ``.hydra/config.yaml``) under ``sweep_dir``, duplicates marked."""
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml") if ".submitit" not in p.parts})
    runs = [load_run(d) for d in dirs]
    mark_duplicates(runs)
    return runs


def mark_duplicates(runs: list[Run]) -> None:
    """Point each finished run whose env, agent, seed and resolved config equal an earlier one's at that one.

    A copied folder, or a sweep re-run with a changed job list (job numbers, hence folder names,
    shift), holds the same run again: counting it would add a seed that is not one.
    """
    first: dict[tuple[Any, ...], Path] = {}
    for r in runs:
        if not r.ok:
            continue
        key = (r.env, r.agent, r.seed, json.dumps(r.config, sort_keys=True, default=str))
        kept = first.setdefault(key, r.path)
        r.duplicate_of = kept if kept != r.path else None


def _swept_values(sweep_dir: Path) -> dict[str, list[str]]:
    """Values of env, agent and seed the sweep asked for (from ``multirun.yaml``), if readable."""
    hydra_node = _mapping(read_yaml(sweep_dir / "multirun.yaml"), "hydra")
    overrides = [f"{k}={v}" for k, v in _mapping(hydra_node, "sweeper", "params").items()]
    overrides += list(_mapping(hydra_node, "overrides").get("task") or [])
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
    """One row per counted run (finished, not a duplicate): identity and its mean metrics over episodes.

    A metric left undefined by every episode (:data:`UNDEFINED_WITHOUT_CONVERSIONS`) is NaN.
    """
    rows = [
        {
            "env": r.env,
            "agent": r.agent,
            "seed": r.seed,
            "episodes": r.metrics["episodes"],
            **{k: (np.nan if r.metrics["mean"][k] is None else r.metrics["mean"][k]) for k in EPISODE_METRICS},
            **{k: _optional_mean(r, k) for k in CHURN_METRICS},
        }
        for r in runs
        if r.counted
    ]
    return pd.DataFrame(rows)


def _optional_mean(run: Run, key: str) -> float:
    """The run's mean of an optional metric over the episodes that recorded it (NaN if none did)."""
    values = [e[key] for e in run.metrics["per_episode"] if isinstance(e.get(key), int | float)]
    return float(np.mean(values)) if values else np.nan


def episode_table(runs: list[Run]) -> pd.DataFrame:
    """One row per episode of each counted run: who played it, which episode it was, its score.

    An episode is identified by its env, the env seed it was reset with (``env_seed``, as the
    evaluator records it; NaN in a ``metrics.json`` without one) and the setup it ran under
    (``setup``: the run's resolved ``env`` config and ``max_steps``, as canonical JSON), so two
    allocators' rows are the same episode only where all three agree. ``run`` is the run folder;
    ``training_run`` the training run a ``trained`` allocator was loaded from (its ``agent.run``; None
    for the others), which tells apart the training seeds of one learned allocator
    (:func:`experiments.stats.match_episodes` averages over them).
    """
    rows = []
    for r in runs:
        if not r.counted:
            continue
        setup = json.dumps({"env": r.config.get("env"), "max_steps": r.config.get("max_steps")}, sort_keys=True)
        agent_cfg = _mapping(r.config, "agent")
        training_run = agent_cfg.get("run") if agent_cfg.get("kind") == "trained" else None
        for e in r.metrics["per_episode"]:
            env_seed = e.get("env_seed")
            rows.append(
                {
                    "env": r.env,
                    "agent": r.agent,
                    "seed": r.seed,
                    "episode": e.get("episode"),
                    "env_seed": env_seed if isinstance(env_seed, int) and not isinstance(env_seed, bool) else None,
                    "steps": e["steps"],
                    "score": float(e["score"]),
                    "setup": setup,
                    "run": r.path,
                    "training_run": None if training_run is None else str(training_run),
                }
            )
    columns = ["env", "agent", "seed", "episode", "env_seed", "steps", "score", "setup", "run", "training_run"]
    return pd.DataFrame(rows, columns=columns).astype({"env_seed": "Int64"})


def _read_step_columns(path: Path, episode: int | None = None) -> pd.DataFrame:
    if path.suffix == ".parquet":
        filters = [("episode", "==", episode)] if episode is not None else None
        return pd.read_parquet(path, columns=_STEP_COLUMNS, filters=filters)
    frame = pd.read_csv(path, usecols=_STEP_COLUMNS)
    return frame if episode is None else frame[frame["episode"] == episode]


def read_steps(path: Path, episode: int | None = None) -> pd.DataFrame:
    """The per-step columns the report draws from, with plain-string channel and kind."""
    frame = _read_step_columns(path, episode)
    for col in ("channel", "kind"):
        frame[col] = frame[col].astype(str)
    return frame


def step_curves(runs: list[Run]) -> dict[str, dict[str, pd.DataFrame]]:
    """Per env and allocator: mean over episodes and seeds of value and spend by step (summed over plans)."""
    curves: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for r in runs:
        if not (r.counted and r.steps_path):
            continue
        steps = read_steps(r.steps_path)
        per_step = steps.groupby(["episode", "step"], as_index=False)[["deep_value", "spend"]].sum()
        per_step["hour"] = steps.groupby(["episode", "step"])["hour"].first().to_numpy()
        curves.setdefault(r.env, {}).setdefault(r.agent, []).append(per_step)
    return {env: {agent: pd.concat(frames) for agent, frames in by_agent.items()} for env, by_agent in curves.items()}


def env_info(runs: list[Run], env: str) -> tuple[int, float | None]:
    for r in runs:
        if r.counted and r.env == env:
            env_cfg = _mapping(r.config, "env")
            return int(env_cfg.get("steps_per_day", 24)), env_cfg.get("daily_budget")
    return 24, None
