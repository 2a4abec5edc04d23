"""What a tuning worker leaves: the best trial as an agent config, and the study summary (JSON and Markdown).

``<agent>_tuned.yaml`` is ready to use as ``conf/agent/<agent>_tuned.yaml``; ``summary.json`` and
``summary.md`` give trial counts by state, the best trial, parameter importances (Optuna's, once the
study has enough complete trials), every trial, and the worker's throughput.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from experiments.tune_study import redact


def export_agent(study: optuna.Study, cfg: DictConfig, folder: Path) -> Path | None:
    """Write the best trial's agent config as ``<folder>/<agent>_tuned.yaml``; None before any complete trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    agent = dict(best.user_attrs["agent"])
    agent["name"] = f"{cfg.agent.name}_tuned"
    n_steps = cfg.total_timesteps
    header = [
        f"# {cfg.agent.algo} tuned by Optuna (python -m experiments.tune): study {study.study_name!r},",
        f"# trial {best.number} of {len(complete)} complete: mean evaluation return {best.value:.6g} on env "
        f"{cfg.env.name!r} after {n_steps} env steps (seed {cfg.seed}).",
        "# Drawn: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
        f"#   python -m experiments.train agent={agent['name']} env={cfg.env.name}",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{agent['name']}.yaml"
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(agent, sort_keys=False, default_flow_style=None))
    return path


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's parameter importances of the complete trials, or why there are none yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return None, f"needs at least 2 complete trials with different values; the study has {len(complete)}"
    try:
        return dict(optuna.importance.get_param_importances(study)), None
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _trial_row(trial: FrozenTrial, out_dir: Path) -> dict[str, Any]:
    run_dir = trial.user_attrs.get("run_dir")
    if run_dir is not None and Path(run_dir).is_relative_to(out_dir.resolve()):
        run_dir = str(Path(run_dir).relative_to(out_dir.resolve()))
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "evaluations": len(trial.intermediate_values),
        "duration_s": round(duration, 2) if duration is not None else None,
        "worker": trial.user_attrs.get("worker"),
        "run_dir": run_dir,  # relative to this folder when this worker ran it
        "retry_of": trial.system_attrs.get("failed_trial"),  # RetryHeartbeatStaleTrialCallback's record
        "surplus": bool(trial.user_attrs.get("surplus", False)),
        "params": trial.params,
    }


def write_summary(
    study: optuna.Study, cfg: DictConfig, out_dir: Path, worker: dict[str, Any], best_config: Path | None
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    importance, importance_note = importances(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    summary = {
        "study_name": study.study_name,
        "storage": redact(cfg.storage),
        "direction": "maximize",
        "objective": "mean return of the last evaluation",
        "n_trials": cfg.n_trials,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "states": dict(counts),
        "best": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params, "config": best_config.name},
        "importances": importance,
        "importances_note": importance_note,
        "worker": worker,
        "trials": [_trial_row(t, out_dir) for t in trials],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "summary.md").write_text(summary_markdown(summary))
    return summary


def summary_markdown(s: dict[str, Any]) -> str:
    md = [
        f"# Optuna study `{s['study_name']}`",
        "",
        f"Storage `{s['storage']}`; objective: {s['objective']} (maximised). "
        f"{s['finished']} of {s['n_trials']} trials finished; states: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))
        + ".",
        "",
    ]
    if s["best"] is not None:
        b = s["best"]
        md += [f"## Best trial: {b['number']}, mean return {b['value']:.6g}", "", f"Agent config: `{b['config']}`.", ""]
        md += ["Drawn values (the config holds the values trained, e.g. batch_size capped at one rollout):", ""]
        md += ["| parameter | value |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in b["params"].items()] + [""]
    md += ["## Parameter importances", ""]
    if s["importances"]:
        md += [f"Optuna's default evaluator over the {s['states'].get('COMPLETE', 0)} complete trials.", ""]
        md += ["| parameter | importance |", "|---|---|"]
        md += [f"| `{k}` | {v:.3f} |" for k, v in s["importances"].items()] + [""]
    else:
        md += [f"_Not available: {s['importances_note']}._", ""]
    w = s["worker"]
    md += [
        "## This worker",
        "",
        f"{w['name']}: {w['trials_run']} trials in {w['wall_s']:.0f} s ({w['trials_per_hour']:.1f} per hour, "
        f"{w['env_steps_per_s']:.0f} env steps/s); sampler seed {w['sampler_seed']}.",
        "",
        "## Trials",
        "",
        "| # | state | value | evaluations | s | worker | retry of |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in s["trials"]:
        value = f"{t['value']:.6g}" if t["value"] is not None else ""
        retry = t["retry_of"] if t["retry_of"] is not None else ""
        state = t["state"] + (" (surplus)" if t["surplus"] else "")
        md.append(
            f"| {t['number']} | {state} | {value} | {t['evaluations']} | {t['duration_s']} | {t['worker']} | {retry} |"
        )
    return "\n".join(md) + "\n"
