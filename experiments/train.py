"""Train one Stable-Baselines3 agent on one scenario: ``python -m experiments.train agent=ppo env=default``.

::

    python -m experiments.train agent=ppo env=default seed=0 total_timesteps=200000
    python -m experiments.train agent=ppo env=default seed=0 total_timesteps=200000 resume=true

The run folder (``hydra.run.dir``, by default ``outputs/train/<env>_<agent>_s<seed>``: the same
command finds the same folder) gets rl-baselines3-zoo's artifact set:

- ``model.zip`` and ``vecnormalize.npz``: the final learner and its normalisation statistics (NumPy
  arrays, no pickle: :func:`agents.sb3.save_vec_normalize`);
- ``best_model.zip`` and ``best_vecnormalize.npz``: the learner with the best mean evaluation return;
- ``evaluations.npz`` (EvalCallback's format) and ``evaluations.csv``: evaluation returns over time,
  on ``eval.n_episodes`` fixed episodes (seeds ``eval.seed + i``, never used in training), with
  deterministic actions and raw (unnormalised) rewards, i.e. episode scores;
- ``checkpoints/``: ``rl_model_<steps>_steps.zip`` with ``rl_model_vecnormalize_<steps>_steps.npz``
  (and for SAC/TD3 the latest replay buffer) every ``checkpoint.freq`` steps;
- ``tensorboard/``: TensorBoard logs (``tensorboard --logdir <run>/tensorboard``);
- ``config.yaml`` (resolved), ``cmd.txt`` (the command lines, one per session),
  ``provenance.json`` (a list with one record per session: start or resume, versions, git commit)
  and ``train_summary.json`` (steps, wall time, steps/s, evaluation figures; with ``agent.kickstart``
  the kickstart's record, :mod:`agents.kickstart`: its teacher's steps are not in ``num_timesteps``
  and its seconds not in the wall time);
- ``run_manifest.json``: the SHA-256 of the config and of every model and statistics file, written
  when training ends; :mod:`agents.trained` and :mod:`agents.export` refuse a file that is missing or
  differs. It sits in the folder it protects, so it detects corruption and accidental edits, not
  tampering. A session in progress removes it: an unfinished run does not load.

Resume: after a kill, the same command with ``resume=true`` (and the same ``hydra.run.dir`` if one was
given) loads the last checkpoint with its VecNormalize statistics (and replay buffer) and continues
to the same ``total_timesteps`` (rounded up to a whole rollout, as SB3 does), appending to the same
evaluation history and TensorBoard run. Resume refuses a config that differs from the run's recorded
``config.yaml`` in anything but :data:`RESUME_MAY_CHANGE`, naming the first differing key with both
values (another env, agent, learning rate or seed would mix two runs in one folder); raising
``total_timesteps`` extends a run from its newest checkpoint. A fresh run refuses a folder that
already holds a run; pass ``resume=true`` to continue it or ``overwrite=true`` to start it over
(which removes the old run's artifacts).

Determinism: the same config and seed give the same numbers (SB3 seeds Python, NumPy, torch and the
env copies ``seed + i``; ``torch_threads`` is fixed). The env copies are the batched
:class:`envs.vector_env.BudgetShiftVectorEnv` (``vec_env=native``, default) or SB3's ``dummy`` /
``subproc`` vector envs of single envs: the same episodes either way, so the same numbers.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.config import plain
from agents.kickstart import kickstart, kickstart_spec
from agents.residual import head_spec
from agents.sb3 import (
    OFF_POLICY,
    RUN_CONFIG,
    RUN_MANIFEST,
    RUN_MODELS,
    RunFolderError,
    build_model,
    build_vec_normalize,
    check_agent,
    load_model,
    load_vec_normalize,
    make_envs,
    run_family,
    run_scenario,
    save_vec_normalize,
    write_run_manifest,
)
from envs.scenario import Scenario
from experiments import provenance
from experiments.common import register_configs, scenario_from_config

log = logging.getLogger(__name__)
register_configs()

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "rl_model"
#: Top-level config keys that may differ between a run's recorded ``config.yaml`` and the command that
#: resumes it: the session switches, how chatty it is, whether it exports at the end, and the step total
#: (raising it extends the run). Any other difference refuses the resume.
RESUME_MAY_CHANGE = ("resume", "overwrite", "total_timesteps", "progress_bar", "verbose", "export")
#: What a run leaves in its folder (``overwrite=true`` removes these before starting over).
RUN_ARTIFACTS = (
    RUN_CONFIG,
    RUN_MANIFEST,
    "cmd.txt",
    "provenance.json",
    *RUN_MODELS["final"],
    *RUN_MODELS["best"],
    "evaluations.npz",
    "evaluations.csv",
    "train_summary.json",
    CHECKPOINT_DIR,
    "tensorboard",
)


class SaveVecNormalize(BaseCallback):
    """Called on a new best evaluation: save the VecNormalize statistics that go with ``best_model.zip``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _on_step(self) -> bool:
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            save_vec_normalize(vec_normalize, self.path)
        return True


class SeededEvalCallback(EvalCallback):
    """EvalCallback on the same episodes every time (eval envs reseeded), also written as a CSV.

    ``history`` (the loaded ``evaluations.npz`` of a resumed run) is continued, not overwritten.
    """

    def __init__(
        self, *args: Any, eval_seed: int, csv_path: Path, history: dict[str, np.ndarray] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eval_seed = eval_seed
        self.csv_path = csv_path
        if history is not None and len(history["timesteps"]):
            self.evaluations_timesteps = [int(t) for t in history["timesteps"]]
            self.evaluations_results = [list(r) for r in history["results"]]
            self.evaluations_length = [list(r) for r in history["ep_lengths"]]
            self.best_mean_reward = float(np.max(np.mean(history["results"], axis=1)))

    def _on_step(self) -> bool:
        evaluating = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
        if evaluating:
            self.eval_env.seed(self.eval_seed)  # env copy i starts its episode from eval_seed + i
        keep_going = super()._on_step()
        if evaluating:
            self.write_csv()
        return keep_going

    def write_csv(self) -> None:
        results = np.asarray(self.evaluations_results, dtype=float)
        lines = ["timesteps,mean_return,std_return," + ",".join(f"episode_{i}" for i in range(results.shape[1]))]
        for t, row in zip(self.evaluations_timesteps, results, strict=True):
            lines.append(f"{t},{row.mean():.6g},{row.std():.6g}," + ",".join(f"{r:.6g}" for r in row))
        self.csv_path.write_text("\n".join(lines) + "\n")


class RunCheckpoint(CheckpointCallback):
    """CheckpointCallback that writes the VecNormalize statistics as ``.npz`` (no pickle), after the model,
    and keeps only the newest replay buffer (each one can weigh hundreds of MB).
    """

    def _on_step(self) -> bool:
        keep_going = super()._on_step()
        if self.n_calls % self.save_freq != 0:
            return keep_going
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            save_vec_normalize(vec_normalize, Path(self._checkpoint_path("vecnormalize_", extension="npz")))
        if self.save_replay_buffer:
            buffers = sorted(Path(self.save_path).glob(f"{self.name_prefix}_replay_buffer_*_steps.pkl"), key=_steps)
            for old in buffers[:-1]:
                old.unlink()
        return keep_going


def _steps(path: Path) -> int:
    return int(path.stem.split("_")[-2])


def checkpoints(run_dir: Path) -> list[int]:
    """Steps of the checkpoints in ``run_dir`` that have their VecNormalize statistics, newest first."""
    steps = [_steps(p) for p in (run_dir / CHECKPOINT_DIR).glob(f"{CHECKPOINT_PREFIX}_*_steps.zip")]
    return sorted((s for s in steps if checkpoint_file(run_dir, "vecnormalize", s, "npz").exists()), reverse=True)


def checkpoint_file(run_dir: Path, kind: str | None, steps: int, ext: str) -> Path:
    infix = f"{kind}_" if kind else ""
    return run_dir / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_{infix}{steps}_steps.{ext}"


def load_checkpoint(
    run_dir: Path,
    agent: dict[str, Any],
    scenario: Scenario,
    venv: VecEnv,
    device: str,
    tensorboard_log: str | None,
) -> tuple[int, BaseAlgorithm, VecNormalize] | None:
    """The newest checkpoint that loads, or None if there is none.

    :raises RuntimeError: there are checkpoints but none loads (starting over would overwrite the run).
    :raises RunFolderError: the checkpoints predate ``.npz`` statistics (their pickles are never read).
    """
    found = checkpoints(run_dir)
    pickled = sorted((run_dir / CHECKPOINT_DIR).glob(f"{CHECKPOINT_PREFIX}_vecnormalize_*_steps.pkl"))
    if pickled and not found:
        raise RunFolderError(
            f"{run_dir / CHECKPOINT_DIR} holds only pickled VecNormalize statistics ({pickled[-1].name}), which "
            "are not read (unpickling runs whatever code the file holds): train the run again with overwrite=true"
        )
    for steps in found:
        try:
            vec_normalize = load_vec_normalize(
                checkpoint_file(run_dir, "vecnormalize", steps, "npz"), venv, training=True
            )
            model = load_model(
                agent,
                checkpoint_file(run_dir, None, steps, "zip"),
                scenario,
                env=vec_normalize,
                device=device,
                tensorboard_log=tensorboard_log,
            )
        except Exception as exc:  # noqa: BLE001 -- any unreadable file: fall back to the previous checkpoint
            log.warning("checkpoint at step %d does not load (%s); trying the previous one", steps, exc)
            continue
        buffer = checkpoint_file(run_dir, "replay_buffer", steps, "pkl")
        if agent["algo"] in OFF_POLICY:
            if buffer.exists():
                model.load_replay_buffer(str(buffer))
            else:
                log.warning("no replay buffer saved at step %d: %s resumes with an empty buffer", steps, agent["algo"])
        return steps, model, vec_normalize
    if found:
        raise RuntimeError(f"none of the checkpoints in {run_dir / CHECKPOINT_DIR} loads (steps {found})")
    return None


def first_difference(recorded: Any, current: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key at which ``current`` differs from ``recorded`` (nested mappings), or None."""
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return None if recorded == current else (path, recorded, current)
    for key in [*recorded, *(k for k in current if k not in recorded)]:
        dotted = f"{path}.{key}" if path else str(key)
        if key not in recorded or key not in current:
            return dotted, recorded.get(key, "<absent>"), current.get(key, "<absent>")
        difference = first_difference(recorded[key], current[key], dotted)
        if difference is not None:
            return difference
    return None


def check_resume_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to resume the run in ``run_dir`` with a config that differs from its recorded one."""
    recorded = OmegaConf.to_container(OmegaConf.load(run_dir / RUN_CONFIG), resolve=True)
    keep = {k: v for k, v in recorded.items() if k not in RESUME_MAY_CHANGE}
    difference = first_difference(keep, {k: v for k, v in config.items() if k not in RESUME_MAY_CHANGE})
    if difference is not None:
        key, old, new = difference
        raise ValueError(
            f"resume=true: {key} is {new!r} but the run in {run_dir} was trained with {old!r} "
            f"({run_dir / RUN_CONFIG}); only {list(RESUME_MAY_CHANGE)} may change on resume. Resume with the "
            "run's config, or start another run (another hydra.run.dir, or overwrite=true without resume)"
        )


def prepare_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to silently mix a fresh run into a folder that holds another one, or to resume it differently."""
    if config["resume"]:
        if (run_dir / RUN_CONFIG).is_file():
            check_resume_config(run_dir, config)
        return
    existing = [name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    if not existing:
        return
    if not config["overwrite"]:
        raise FileExistsError(
            f"{run_dir} already holds a training run ({', '.join(existing)}); pass resume=true to continue it, "
            "overwrite=true to start it over, or another hydra.run.dir"
        )
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def record_command(run_dir: Path, resumed_from: int | None) -> None:
    line = shlex.join([Path(sys.executable).name, "-m", "experiments.train", *sys.argv[1:]])
    note = f"  # resumed from step {resumed_from}" if resumed_from is not None else ""
    with open(run_dir / "cmd.txt", "a" if resumed_from is not None else "w") as f:
        f.write(line + note + "\n")


def train(cfg: DictConfig, run_dir: Path, callback_after_eval: BaseCallback | None = None) -> dict[str, Any]:
    """The whole training run of ``cfg`` in ``run_dir``; returns what ``train_summary.json`` holds.

    :param callback_after_eval: called after every evaluation (its ``parent`` is the evaluation
        callback: ``parent.last_mean_reward``); returning False stops training (tuning prunes this way).
    """
    agent = plain(cfg.agent)
    check_agent(agent)
    kick_spec = kickstart_spec(agent.get("kickstart"))
    scenario_from_config(cfg.env)  # a ScenarioError naming the field first
    scenario: Scenario = run_scenario(plain(cfg))
    family = run_family(plain(cfg))
    torch.set_num_threads(cfg.torch_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(run_dir, plain(cfg))

    # Environments: training copies seeded seed + i; evaluation copies (one per evaluation episode)
    # reseeded eval.seed + i before every evaluation, with frozen statistics and raw rewards.
    # A rank_residual head (agents/residual.py) runs rank's fill between the policy and every copy.
    head = head_spec(agent.get("head"))
    train_env = make_envs(scenario, agent["n_envs"], cfg.seed, cfg.vec_env, family, head)
    eval_vec = "dummy" if head.residual else "native"
    eval_env = build_vec_normalize(
        make_envs(scenario, cfg.eval.n_episodes, cfg.eval.seed, eval_vec, head=head),
        agent,
        scenario.max_plans,
        training=False,
    )
    tensorboard_log = str(run_dir / "tensorboard") if cfg.tensorboard else None
    model, train_env, resumed_from = start_or_resume(cfg, agent, run_dir, train_env, scenario, tensorboard_log)
    # Nothing in the folder changes before here, so a refused resume leaves a finished run loadable.
    (run_dir / RUN_MANIFEST).unlink(missing_ok=True)  # written again when this session ends
    OmegaConf.save(cfg, run_dir / RUN_CONFIG, resolve=True)
    record_command(run_dir, resumed_from)
    session = {"session": "start"} if resumed_from is None else {"session": "resume", "resumed_from": resumed_from}
    provenance.append(run_dir, seed=cfg.seed, extra=session)
    history = evaluation_history(run_dir, resumed_from)
    kicked = None
    if kick_spec is not None and resumed_from is None:  # a resumed run's checkpoint already holds it
        kicked = kickstart(model, train_env, kick_spec, cfg.seed, model.gamma)
        log.info("kickstart from %s: %s", kick_spec.allocator, kicked)
    callbacks = make_callbacks(cfg, agent, run_dir, eval_env, history, callback_after_eval)

    done_before = model.num_timesteps
    for callback in callbacks:  # count from the checkpoint, so a resumed run evaluates at the same steps
        callback.n_calls = done_before // agent["n_envs"]
    remaining = cfg.total_timesteps - done_before
    start = time.perf_counter()
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=callbacks,
            progress_bar=cfg.progress_bar,
            reset_num_timesteps=resumed_from is None,
            tb_log_name=agent["algo"],
        )
    wall_s = time.perf_counter() - start

    model_file, vecnormalize_file = RUN_MODELS["final"]
    model.save(run_dir / model_file)
    save_vec_normalize(train_env, run_dir / vecnormalize_file)
    write_run_manifest(run_dir)  # before the export, which checks the files against it
    train_env.close()
    eval_env.close()
    summary = summarise(model, run_dir, done_before, wall_s)
    if kicked is not None:
        summary["kickstart"] = kicked
    if cfg.get("export", True):
        summary["bundle"] = export_run(run_dir)
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("trained %s on %s: %s", agent["name"], scenario.name, summary)
    return summary


def start_or_resume(
    cfg: DictConfig,
    agent: dict[str, Any],
    run_dir: Path,
    train_env: VecEnv,
    scenario: Scenario,
    tensorboard_log: str | None,
) -> tuple[BaseAlgorithm, VecNormalize, int | None]:
    """A fresh learner on ``train_env`` normalised, or with ``resume=true`` the newest checkpoint's.

    Returns the learner, its normalised training env and the step it resumed from (None: fresh).
    """
    checkpoint = None
    if cfg.resume:
        checkpoint = load_checkpoint(run_dir, agent, scenario, train_env, cfg.device, tensorboard_log)
    if checkpoint is None:
        if cfg.resume:
            log.warning("resume=true but %s has no checkpoint: starting from scratch", run_dir / CHECKPOINT_DIR)
        train_env = build_vec_normalize(train_env, agent, scenario.max_plans)
        return build_model(agent, train_env, cfg.seed, tensorboard_log, cfg.device, cfg.verbose), train_env, None
    steps, model, train_env = checkpoint
    log.info("resuming %s from step %d", run_dir, steps)
    model.set_random_seed(cfg.seed + steps)  # fresh episodes, not a replay of the first ones
    return model, train_env, steps


def evaluation_history(run_dir: Path, resumed_from: int | None) -> dict[str, np.ndarray] | None:
    """The evaluations a resumed run already made up to its checkpoint (None for a fresh run)."""
    if resumed_from is None or not (run_dir / "evaluations.npz").exists():
        return None
    history = dict(np.load(run_dir / "evaluations.npz"))
    keep = history["timesteps"] <= resumed_from
    return {k: history[k][keep] for k in ("timesteps", "results", "ep_lengths")}


def make_callbacks(
    cfg: DictConfig,
    agent: dict[str, Any],
    run_dir: Path,
    eval_env: VecEnv,
    history: dict[str, np.ndarray] | None,
    callback_after_eval: BaseCallback | None,
) -> list[BaseCallback]:
    """Checkpoints every ``checkpoint.freq`` env steps and, if ``eval.freq`` > 0, the periodic evaluation."""
    n_envs = agent["n_envs"]
    callbacks: list[BaseCallback] = [
        RunCheckpoint(
            save_freq=max(cfg.checkpoint.freq // n_envs, 1),
            save_path=str(run_dir / CHECKPOINT_DIR),
            name_prefix=CHECKPOINT_PREFIX,
            save_replay_buffer=agent["algo"] in OFF_POLICY and cfg.checkpoint.save_replay_buffer,
        ),
    ]
    if cfg.eval.freq > 0:
        callbacks.append(
            SeededEvalCallback(
                eval_env,
                n_eval_episodes=cfg.eval.n_episodes,
                eval_freq=max(cfg.eval.freq // n_envs, 1),
                deterministic=True,
                best_model_save_path=str(run_dir),  # EvalCallback names it best_model.zip: RUN_MODELS["best"]
                log_path=str(run_dir),
                callback_on_new_best=SaveVecNormalize(run_dir / RUN_MODELS["best"][1]),
                eval_seed=cfg.eval.seed,
                csv_path=run_dir / "evaluations.csv",
                history=history,
                callback_after_eval=callback_after_eval,
                verbose=cfg.verbose,
            )
        )
    return callbacks


def export_run(run_dir: Path) -> str | None:
    """The production bundle of the final model in ``<run>/bundle`` (agents/export.py).

    A policy that cannot leave as a stateless bundle (RecurrentPPO) is logged and skipped: the
    training itself succeeded.
    """
    from agents.export import ExportError, export_bundle

    try:
        return str(export_bundle(run_dir, run_dir / "bundle").relative_to(run_dir))  # relative: runs move
    except ExportError as exc:
        log.warning("no production bundle for %s: %s", run_dir, exc)
        return None


def summarise(model: BaseAlgorithm, run_dir: Path, done_before: int, wall_s: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "num_timesteps": int(model.num_timesteps),
        "steps_this_session": int(model.num_timesteps - done_before),
        "resumed_from": int(done_before) if done_before else None,
        "wall_s_this_session": round(wall_s, 2),
        "steps_per_s": round((model.num_timesteps - done_before) / wall_s, 1) if wall_s > 0 else None,
    }
    if (run_dir / "evaluations.npz").exists():
        evaluations = np.load(run_dir / "evaluations.npz")
        means = evaluations["results"].mean(axis=1)
        summary.update(
            last_eval_timesteps=int(evaluations["timesteps"][-1]),
            last_eval_mean_return=float(means[-1]),
            best_eval_mean_return=float(means.max()),
            best_eval_timesteps=int(evaluations["timesteps"][int(means.argmax())]),
        )
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return summary.get("last_eval_mean_return")  # for Hydra sweepers


if __name__ == "__main__":
    main()
