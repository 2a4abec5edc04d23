"""Distributed tuning: workers share one study through its storage, survive a killed worker, and
write a ready-to-use agent config; the search space is checked before anything trains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from optuna.trial import FixedTrial, TrialState

from agents.config import plain
from agents.sb3 import check_agent
from envs.jit import warm_up
from experiments.common import register_configs
from experiments.tune_space import sample_agent, search_space
from experiments.tune_study import check_setup, make_storage, work_left

ROOT = Path(__file__).resolve().parent.parent
#: Trials of a few seconds on the small preset: two evaluations of one episode each.
TINY = [
    "agent=ppo",
    "env=small",
    "total_timesteps=192",
    "eval.freq=96",
    "eval.n_episodes=1",
    "agent.n_envs=2",
    "tune.search_space.hyperparams.n_steps.choices=[24,48]",
    "sampler.n_startup_trials=3",
    "pruner.n_startup_trials=2",
    "heartbeat.interval_s=1",
    "heartbeat.grace_period_s=3",
]
HEARTBEAT = {"interval_s": 1, "grace_period_s": 2, "max_retry": 1}
PPO = yaml.safe_load((ROOT / "conf" / "agent" / "ppo.yaml").read_text())
PPO_SPACE = yaml.safe_load((ROOT / "conf" / "tune" / "ppo.yaml").read_text())
SEARCH_SPACES = sorted(p.stem for p in (ROOT / "conf" / "tune").glob("*.yaml"))
#: SB3 agents with no search space, and why (every other one is tunable).
UNTUNED = {
    "recurrent_ppo": "its flat MLP + LSTM policy (policy: mlp only) is not the project's learner; no space declared",
    "dagger": "mostly imitation (~3 of its ~4.5 minutes), which the tuner's PPO evaluations do not see; its "
    "kickstart knobs and its short, gentle PPO were compared by hand (conf/agent/dagger.yaml)",
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Workers then load the kernels from the cache instead of queueing on the first one's compilation."""
    warm_up()


def start_worker(out: Path, *args: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.tune", *TINY, *args, f"hydra.run.dir={out}"],
        cwd=ROOT,
        stdout=open(out / "stdout.txt", "w"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )


def finish(worker: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    assert worker.wait(timeout=timeout) == 0, (out / "stdout.txt").read_text()[-4000:]


def states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Workers sharing a study
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_finish_one_study_together_and_export_the_best_config(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = [f"storage={url}", "study_name=shared"]
    # Worker 0 takes the study to 3 finished trials; then two workers finish it to 6 at once. (Started
    # together, one worker can run all six before the other has imported on a loaded machine.)
    first = start_worker(tmp_path / "w0", *common, "n_trials=3", "worker_id=0")
    finish(first, tmp_path / "w0")
    pair = [
        (start_worker(tmp_path / f"w{i}", *common, "n_trials=6", f"worker_id={i}"), tmp_path / f"w{i}") for i in (1, 2)
    ]
    for worker, out in pair:
        finish(worker, out)

    study = optuna.load_study(study_name="shared", storage=url)
    counts = states(study)
    surplus = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("surplus")]
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 6
    assert counts[TrialState.FAIL] == len(surplus) and counts[TrialState.RUNNING] == 0
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    by_worker = [int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in finished]  # "<host>:<pid>"
    assert by_worker.count(first.pid) == 3, f"trials by worker pid: {by_worker}, worker 0 is {first.pid}"
    assert set(by_worker) - {first.pid} <= {w.pid for w, _ in pair}, "a trial from a worker that did not run"
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 6, "workers drew distinct trials"

    # A worker joining a finished study runs nothing; it writes the summary and exports the best config.
    late = tmp_path / "late"
    finish(
        start_worker(
            late, *common, "n_trials=6", "worker_id=3", "export_best=true", f"export_dir={tmp_path / 'agents'}"
        ),
        late,
    )
    assert len(study.get_trials(deepcopy=False)) == 6 + len(surplus)
    summary = json.loads((late / "summary.json").read_text())
    assert summary["finished"] == 6 and summary["worker"]["trials_run"] == 0
    assert summary["best"]["number"] == study.best_trial.number
    assert summary["importances"] or summary["importances_note"]
    tuned = yaml.safe_load((tmp_path / "agents" / "ppo_tuned.yaml").read_text())
    assert tuned == yaml.safe_load((late / "ppo_tuned.yaml").read_text())
    assert tuned["name"] == "ppo_tuned"
    check_agent(tuned)
    assert tuned["hyperparams"]["learning_rate"] == study.best_params["hyperparams.learning_rate"]
    assert tuned["normalize"]["gamma"] == tuned["hyperparams"]["gamma"]  # the tie

    # Each worker's own trials are full training run folders, named in its summary relative to it.
    rows = json.loads((tmp_path / "w0" / "summary.json").read_text())["trials"]
    mine = [r for r in rows if r["run_dir"] and not Path(r["run_dir"]).is_absolute()]
    assert mine and all((tmp_path / "w0" / r["run_dir"] / "evaluations.csv").exists() for r in mine)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_worker_killed_mid_trial_leaves_the_study_usable(kind, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 'study.log'}"
    common = [f"storage={url}", "study_name=kill", "n_trials=3", "total_timesteps=960", "eval.freq=480"]
    victim = start_worker(tmp_path / "victim", *common, "worker_id=0")
    storage = make_storage(url, HEARTBEAT)
    deadline = time.monotonic() + 120
    running: list[int] = []
    while not running:
        assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim" / "stdout.txt").read_text()
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="kill", storage=storage)
        except KeyError:  # not created yet
            continue
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    time.sleep(1.0)  # a heartbeat or two, well inside a trial of several seconds
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert states(study)[TrialState.RUNNING] == 1  # nobody has noticed yet

    time.sleep(3.5)  # the grace period
    survivor = tmp_path / "survivor"
    finish(start_worker(survivor, *common, "worker_id=1"), survivor)

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    (killed,) = running
    assert trials[killed].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == trials[killed].params  # the same draw, run again
    counts = states(study)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 3 and counts[TrialState.RUNNING] == 0
    rows = json.loads((survivor / "summary.json").read_text())["trials"]
    assert {r["number"]: r["retry_of"] for r in rows}[retries[0].number] == killed


def test_journal_storage_fails_silent_trials_and_queues_them_again(tmp_path):
    storage = make_storage(f"journal:///{tmp_path / 'j.log'}", HEARTBEAT)
    study = optuna.create_study(storage=storage, study_name="j", direction="maximize")
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask/tell records no heartbeat: done by hand here
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    assert work_left(study, 2) == 1  # the running trial holds its slot while its heartbeat is fresh
    time.sleep(2.5)
    assert work_left(study, 2) == 2  # silent past the grace period: failed, and queued again
    failed, queued = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert queued.system_attrs["failed_trial"] == 0 and queued.params == failed.params
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert study.get_trials(deepcopy=False)[1].state == TrialState.COMPLETE


# --------------------------------------------------------------------------------------------
# Search space and study setup
# --------------------------------------------------------------------------------------------


def test_a_trial_gets_the_agent_config_with_its_draws_ties_and_named_choices():
    params, ties = search_space(PPO_SPACE, PPO)
    base = json.loads(json.dumps(PPO))
    draw = {p.name: list(p.spec["choices"])[0] if p.spec["type"] == "categorical" else p.spec["low"] for p in params}
    draw["policy_kwargs.net_arch"] = "large"
    draw["hyperparams.gamma"] = 0.98
    draw["hyperparams.n_steps"], draw["hyperparams.batch_size"] = 24, 384
    agent = sample_agent(FixedTrial(draw), PPO, params, ties)
    assert agent["policy_kwargs"]["net_arch"] == {"pi": [128, 128], "vf": [128, 128]}
    assert agent["normalize"]["gamma"] == 0.98
    assert agent["hyperparams"]["batch_size"] == 24 * PPO["n_envs"]  # capped at one rollout
    assert agent["hyperparams"]["learning_rate"] == 1.0e-5
    assert agent["policy_kwargs"]["log_std_init"] == -2.0
    assert PPO == base  # the base config is left alone
    check_agent(agent)


def test_every_sb3_agent_composes_with_its_search_space_for_the_family():
    """``python -m experiments.tune agent=<name> family=finance`` composes for every SB3 agent but UNTUNED
    (an agent config that inherits from another, like a PPO variant, needs a space of its own too)."""
    register_configs()  # the heuristic agents' schemas
    GlobalHydra.instance().clear()
    tuned = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in sorted(p.stem for p in (ROOT / "conf" / "agent").glob("*.yaml")):
            agent = compose("train", overrides=[f"agent={name}"]).agent
            if agent.kind != "sb3" or name in UNTUNED:
                continue
            cfg = compose("tune", overrides=[f"agent={name}", "family=finance", "vec_env=dummy"])
            params, _ = search_space(plain(cfg.tune), plain(cfg.agent))
            assert cfg.family.name == "finance" and len(params) >= 8, name
            tuned.append(name)
    assert {"ppo", "a2c", "sac", "td3"} <= set(tuned)
    assert set(UNTUNED).isdisjoint(SEARCH_SPACES), "a space exists: take the agent off UNTUNED"


def test_the_readme_names_only_agents_with_a_search_space():
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"`conf/tune/<agent>\.yaml` \(([^;)]*)", readme)
    assert listed, "README: the sentence naming the tunable agents moved; update this test"
    names = re.findall(r"`(\w+)`", listed.group(1))
    assert names and set(names) <= set(SEARCH_SPACES)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"hyperparams": {"learnig_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}}, "hyperparams.learnig_rate"),
        ({"hyperparams": {"ent_coef": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "ent_coef.low"),
        ({"hyperparams": {"gamma": {"type": "uniform", "low": 0.9, "high": 0.99}}}, "gamma.type"),
        ({"hyperparams": {"n_epochs": {"type": "int", "low": 1, "high": 9, "step": 2, "log": True}}}, "n_epochs: "),
        ({"hyperparams": {"gamma": {"type": "categorical", "choices": []}}}, "gamma.choices"),
        ({"normalize": {"clip": {"type": "categorical", "choices": [5, 10]}}}, "normalize.clip"),
        ({"algo": {"type": "categorical", "choices": ["PPO", "A2C"]}}, "tune.search_space.algo"),
    ],
)
def test_a_bad_search_space_fails_naming_the_field(space, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        search_space({"search_space": space}, PPO)


def test_a_tie_must_follow_a_sampled_field():
    space = {"search_space": {"hyperparams": {"n_steps": {"type": "categorical", "choices": [24]}}}}
    with pytest.raises(ValueError, match=r"tune\.tie\.normalize\.gamma"):
        search_space({**space, "tie": {"normalize": {"gamma": "hyperparams.gamma"}}}, PPO)


def test_a_worker_with_another_setup_cannot_join_the_study(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}", HEARTBEAT)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    setup = {"agent": PPO, "env": {"name": "small", "days": 2}, "seed": 0}
    check_setup(study, setup)
    check_setup(optuna.load_study(study_name="s", storage=storage), setup)  # the same setup joins
    with pytest.raises(ValueError, match=r"env\.days=2, this worker has 7"):
        check_setup(study, {**setup, "env": {"name": "small", "days": 7}})
