"""Hydra configs: every experiment composes and runs, bad configs fail naming the key, runs are
reproducible and every launcher gives the same numbers."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from agents.config import AGENT_KINDS, HEURISTIC_ALLOCATORS, HEURISTIC_NAMES
from agents.heuristics import ParamsError
from agents.registry import AgentConfigError, make_allocator
from envs.scenario import ScenarioError, load_scenario
from experiments.common import check_run_config, episode_seeds, register_configs
from experiments.evaluate import run

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
AGENT_FILES = sorted((CONF / "agent").glob("*.yaml"))

register_configs()
# The launcher files keep the plugins' names on purpose (see experiments/common.py); pytest resets the
# module's own filter for each test.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(?s).*is validated against ConfigStore schema with the same name:UserWarning"
)


def compose_config(overrides: list[str], hydra_node: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_node)


def swept(cfg, key: str) -> list[str]:
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    value = params.get(key)
    return [v.strip() for v in str(value).split(",")] if value and "range" not in str(value) else []


# --------------------------------------------------------------------------------------------
# Every experiment runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_a_few_steps(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"], hydra_node=True)
    envs = swept(cfg, "env") or [None]
    agents = swept(cfg, "agent") or [None]
    for env in envs:
        for agent in agents:  # every allocator the experiment sweeps, for 3 steps of one episode
            overrides = [f"experiment={experiment}", "episodes=1", "max_steps=3"]
            overrides += [f"env={env}"] if env else []
            overrides += [f"agent={agent}"] if agent else []
            job = compose_config(overrides)
            out = tmp_path / f"{env}_{agent}"
            out.mkdir()
            metrics = run(job, out)
            assert metrics["episodes"] == 1 and metrics["per_episode"][0]["steps"] == 3
            assert (out / "metrics.json").exists() and (out / "config.yaml").exists()


def test_experiment_deltas_override_the_primary_config():
    cfg = compose_config(["experiment=smoke"])
    assert cfg.env.name == "small" and cfg.episodes == 1 and cfg.steps_table == "csv"
    paced = compose_config(["experiment=paced"])
    assert paced.env.max_change == 0.05 and check_run_config(paced).max_change == 0.05


@pytest.mark.parametrize("experiment", ["heuristics", "main", "quick", "verticals"])
def test_heuristic_sweeps_run_every_heuristic_in_the_library_order(experiment):
    # The YAML list lives in conf/sweep/heuristics.yaml; the Python one is agents.config.HEURISTIC_NAMES.
    cfg = compose_config([f"experiment={experiment}"], hydra_node=True)
    assert tuple(swept(cfg, "agent")) == HEURISTIC_NAMES


# --------------------------------------------------------------------------------------------
# Agent configs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.stem)
def test_every_agent_config_has_a_name_and_a_kind(path):
    cfg = compose_config([f"agent={path.stem}"]).agent
    assert isinstance(cfg.name, str) and cfg.name
    assert cfg.kind in AGENT_KINDS


@pytest.mark.parametrize("name", sorted(HEURISTIC_ALLOCATORS))
def test_heuristic_configs_build_their_allocator_with_the_documented_defaults(name):
    cfg = compose_config([f"agent={name}"]).agent
    allocator = make_allocator(cfg)
    assert type(allocator) is HEURISTIC_ALLOCATORS[name]
    # The knobs written in conf/agent/<name>.yaml are the Params defaults: one set of defaults.
    written = yaml.safe_load((CONF / "agent" / f"{name}.yaml").read_text())["params"] or {}
    defaults = OmegaConf.to_container(OmegaConf.structured(HEURISTIC_ALLOCATORS[name].Params))
    assert written == defaults


def test_sb3_and_unknown_kinds_are_refused_with_a_clear_message():
    with pytest.raises(AgentConfigError, match="kind=trained"):
        make_allocator({"name": "ppo", "kind": "sb3", "algo": "PPO"})
    with pytest.raises(AgentConfigError, match="agent.kind"):
        make_allocator({"name": "x", "kind": "magic"})
    with pytest.raises(AgentConfigError, match="agent.run"):
        make_allocator({"name": "x", "kind": "trained"})


# --------------------------------------------------------------------------------------------
# Bad configs fail, naming the key
# --------------------------------------------------------------------------------------------


def test_unknown_agent_fails_at_compose_time():
    with pytest.raises(MissingConfigException, match="agent"):
        compose_config(["agent=nonexistent"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("env.plans_per_acount=3", "env.plans_per_acount"),
        ("env.plans_per_account=many", "env.plans_per_account"),
        ("agent=thompson agent.params.drawz=3", "agent.params.drawz"),
        ("agent=thompson agent.params.draws=abc", "agent.params.draws"),
        ("agent=uniform agent.params.power=2", "agent.params.power"),
        ("sed=3", "sed"),
        ("env.plans.trap_fracton=0.1", "env.plans.trap_fracton"),
    ],
)
def test_typos_and_wrong_types_fail_at_compose_time_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(override.split())
    assert key in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize(
    "override, error, field",
    [
        ("env.plans_per_account=-1", ScenarioError, "plans_per_account"),
        ("env.steps_per_day=5", ScenarioError, "steps_per_day"),
        ("env.plans.trap_fraction=2", ScenarioError, "plans.trap_fraction"),
        ("episodes=0", ValueError, "episodes"),
        ("steps_table=xlsx", ValueError, "steps_table"),
    ],
)
def test_bad_values_fail_at_startup_naming_the_field(override, error, field):
    cfg = compose_config([override])
    with pytest.raises(error, match=field):
        check_run_config(cfg)


@pytest.mark.parametrize(
    "override, field",
    [
        ("agent.params.draws=0", "agent.params.draws"),
        ("agent.params.top_fraction=1.5", "agent.params.top_fraction"),
    ],
)
def test_bad_knob_values_fail_naming_the_knob(override, field):
    cfg = compose_config(["agent=thompson", override])
    with pytest.raises(ParamsError, match=field):
        make_allocator(cfg.agent)


@pytest.mark.parametrize("preset", ["default", "credit", "small"])
def test_the_composed_env_is_the_preset(preset):
    composed = check_run_config(compose_config([f"env={preset}"]))
    assert replace(composed, source=None) == replace(load_scenario(preset), source=None)


# --------------------------------------------------------------------------------------------
# Seeds, reproducibility, launchers
# --------------------------------------------------------------------------------------------


def test_episode_seeds_are_distinct_and_stable():
    seeds = episode_seeds(3, 20)
    assert len(set(seeds)) == 20
    assert episode_seeds(3, 5) == seeds[:5]  # more episodes keep the first ones
    assert not set(episode_seeds(4, 20)) & set(seeds)


def evaluate_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_cli_writes_the_run_folder_and_repeats_itself(tmp_path):
    outputs = []
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        evaluate_cli("experiment=smoke", "agent=thompson", "max_steps=30", "episodes=2", f"hydra.run.dir={run_dir}")
        for name in ("config.yaml", ".hydra/config.yaml", "metrics.json", "steps.csv", "provenance.json"):
            assert (run_dir / name).exists(), name
        outputs.append(json.loads((run_dir / "metrics.json").read_text()))
    first, second = outputs
    assert first["per_episode"] == second["per_episode"]
    assert first["episode_seeds"] == episode_seeds(0, 2)
    assert first["per_episode"][0]["score"] != first["per_episode"][1]["score"]  # distinct episodes
    steps = np.loadtxt(tmp_path / "run0" / "steps.csv", delimiter=",", skiprows=1, usecols=0)
    assert len(steps) == 2 * 30 * load_scenario("small").n_plans


def sweep_scores(sweep_dir: Path) -> dict[tuple[str, int], list[float]]:
    scores = {}
    for path in sweep_dir.rglob("metrics.json"):
        m = json.loads(path.read_text())
        scores[(m["agent"], m["seed"])] = [e["score"] for e in m["per_episode"]]
    return scores


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_sweeps_give_the_same_numbers_with_every_launcher(launcher, tmp_path):
    sweep = ["-m", "agent=uniform,thompson", "seed=0,1", "env=small", "episodes=1", "max_steps=24", "steps_table=none"]
    evaluate_cli(*sweep, f"hydra.sweep.dir={tmp_path / 'basic'}")
    evaluate_cli(*sweep, f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path / launcher}")
    basic, other = sweep_scores(tmp_path / "basic"), sweep_scores(tmp_path / launcher)
    assert len(basic) == 4
    assert basic == other


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_launcher_configs_compose_and_name_an_existing_launcher(launcher):
    cfg = compose_config([f"hydra/launcher={launcher}"], hydra_node=True)
    module, _, cls = cfg.hydra.launcher._target_.rpartition(".")
    assert hasattr(importlib.import_module(module), cls)
    # Every field of the plugin's own schema is set: this file replaces the plugin's registered default.
    plugin_fields = set(ConfigStore.instance().load(f"hydra/launcher/{launcher}.yaml").node) - {"_target_"}
    assert plugin_fields <= set(cfg.hydra.launcher)


def test_an_unparsable_env_file_fails_in_one_line_before_hydra_composes(tmp_path, monkeypatch, capsys) -> None:
    from experiments import common

    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "mine.yaml").write_text("name: mine\nchannels: {feed: [\n")
    monkeypatch.setattr(common, "CONF_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["evaluate", "agent=uniform", "env=small,mine"])
    ran = []
    with pytest.raises(SystemExit) as exit_info:
        common.run_entry(lambda: ran.append(True))
    assert exit_info.value.code == 2 and not ran
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(r"cannot parse .*mine\.yaml at line 3, column 1", err), err
