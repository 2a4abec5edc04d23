"""Scenario families (envs/family.py): what a drawn scenario may be, determinism, bad configs, held-out presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs.family import FamilyEnv, ScenarioFamily, family_from_mapping, load_family
from envs.features import N_PLAN_FEATURES, observation_size
from envs.scenario import VERTICAL_CATALOGUE, ScenarioError, load_scenario, scenario_from_mapping

FAMILY = load_family("finance")
VERTICAL_PRESETS = ("credit", "insurance", "securities")


def _draws(family: ScenarioFamily, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [family.draw(rng) for _ in range(n)]


def _mix_weighted(cfg: dict, per_preset) -> float:
    shares = {v: body["share"] for v, body in cfg["verticals"].items()}
    total = sum(shares.values())
    return sum(w / total * per_preset(load_scenario(v)) for v, w in shares.items())


def test_every_drawn_scenario_builds_and_lies_in_the_family_ranges():
    sizes = set()
    for cfg in _draws(FAMILY, 60):
        sc = scenario_from_mapping(cfg)
        n = sc.n_plans
        sizes.add(n)
        assert FAMILY.accounts[0] <= sc.accounts <= FAMILY.accounts[1]
        assert FAMILY.plans_per_account[0] <= sc.plans_per_account <= FAMILY.plans_per_account[1]
        assert sc.max_plans == FAMILY.max_plans >= n
        feed, network, search = (cfg["channels"][c]["share"] for c in ("feed", "network", "search"))
        assert FAMILY.feed_share[0] <= feed <= FAMILY.feed_share[1]
        assert feed + network + search == pytest.approx(1.0)
        assert FAMILY.search_of_rest[0] <= search / (1 - feed) <= FAMILY.search_of_rest[1] + 1e-12
        budget_per_plan = _mix_weighted(cfg, lambda p: p.daily_budget / p.n_plans)
        factor = sc.daily_budget / n / budget_per_plan
        assert FAMILY.budget_factor[0] - 1e-6 <= factor <= FAMILY.budget_factor[1] + 1e-6
        cpa = sc.cpa_target / _mix_weighted(cfg, lambda p: p.cpa_target)
        assert FAMILY.cpa_factor[0] - 1e-4 <= cpa <= FAMILY.cpa_factor[1] + 1e-4
        assert sc.days == load_scenario(FAMILY.base).days  # episodes share the base's length
        for v in sc.verticals:  # a compliance cap below the vertical's share of plans is lifted
            catalogue = VERTICAL_CATALOGUE[v.name]["max_spend_share"]
            lifted = catalogue < cfg["verticals"][v.name]["share"]
            assert v.max_spend_share == (1.0 if lifted else catalogue)
    assert min(sizes) <= 12 and max(sizes) >= 60  # a handful of plans to many


def test_the_same_seed_draws_the_same_episode_and_another_seed_another_shape():
    def episode(seed: int) -> tuple[str, np.ndarray, float]:
        env = FamilyEnv(FAMILY)
        obs, info = env.reset(seed=seed)
        ret, rng = 0.0, np.random.default_rng(7)
        for _ in range(30):
            obs, reward, *_ = env.step(rng.uniform(-1, 1, FAMILY.max_plans).astype(np.float32))
            ret += reward
        return info["scenario"], obs, ret

    a, b = episode(3), episode(3)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2]
    shapes = {episode(s)[0] for s in range(6)}
    assert len(shapes) >= 4


def test_family_env_pads_observations_to_max_plans():
    env = FamilyEnv(FAMILY)
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        n = env.scenario.n_plans
        assert obs.shape == env.observation_space.shape == (observation_size(FAMILY.max_plans),)
        assert info["active"].shape == (n,)
        obs, *_ = env.step(np.zeros(FAMILY.max_plans, np.float32))
        block = obs[: FAMILY.max_plans * N_PLAN_FEATURES].reshape(FAMILY.max_plans, N_PLAN_FEATURES)
        assert block[:n, 0].any() and not block[n:].any()  # padded plans are zeros


def test_step_before_reset_is_refused():
    with pytest.raises(RuntimeError, match="reset"):
        FamilyEnv(FAMILY).step(np.zeros(FAMILY.max_plans, np.float32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown family field 'colour'"),
        ({"accounts": [3, 1]}, "family field accounts must satisfy"),
        ({"accounts": [1.5, 2]}, "family field accounts must be a pair of integers"),
        ({"feed_share": [0.5]}, r"feed_share must be a \[low, high\] pair"),
        ({"feed_share": [0.5, float("nan")]}, r"feed_share must be a \[low, high\] pair"),
        ({"max_plans": 10}, "max_plans must be >= accounts"),
        ({"base": "nowhere"}, "base must name a preset"),
        ({"single_vertical_prob": 2}, r"single_vertical_prob must be a number in \[0.0, 1.0\]"),
        ({"potential_fraction": [0.4, 0.5], "trap_fraction": [0.3, 0.5]}, "may add up to more than 1"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"reference_plans": 1, "volume_factor": [100, 100]}, "cannot be built at its high ends .*volume"),
    ],
)
def test_a_broken_family_is_refused_naming_the_field(change, message):
    cfg = {"name": "f", **change}
    with pytest.raises(ScenarioError, match=message):
        family_from_mapping(cfg, source="test.yaml")


def test_unknown_family_name_lists_the_known_ones():
    with pytest.raises(ScenarioError, match=r"unknown scenario family 'nope'; known: \[.*'finance'"):
        load_family("nope")


def test_held_out_presets_lie_outside_the_training_family():
    """Each held-out preset breaks the family's ranges in the way its file says (a guard against
    widening the family over its own test set)."""
    wide = load_scenario("heldout_wide")
    assert wide.n_plans > FAMILY.max_plans
    search = load_scenario("heldout_search")
    feed_share = search.channel_mix[[c.name for c in search.channels].index("feed")]
    assert feed_share < FAMILY.feed_share[0]
    lean = load_scenario("heldout_lean")
    per_plan = np.mean([load_scenario(v).daily_budget / load_scenario(v).n_plans for v in ("credit", "securities")])
    assert lean.daily_budget / lean.n_plans / per_plan < FAMILY.budget_factor[0]
    assert lean.plans.potential_fraction > FAMILY.potential_fraction[1]
    assert lean.plans.trap_fraction > FAMILY.trap_fraction[1]


def _family_run(*extra: str):
    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parent.parent
    overrides = [
        "agent=ppo", "family=finance", "env=small", "vec_env=dummy", "agent.n_envs=2",
        "agent.hyperparams.n_steps=24", "agent.hyperparams.batch_size=48", "agent.hyperparams.n_epochs=1",
        "+agent.policy_kwargs.logprob_plans=24", "total_timesteps=96", "checkpoint.freq=96", "eval.freq=48",
        "eval.n_episodes=1", "progress_bar=false", "tensorboard=false", *extra,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.slow
def test_a_run_trained_on_a_family_serves_presets_and_exports_at_the_family_width(tmp_path):
    """family=finance trains on drawn portfolios padded to 96 plans and evaluates on the env preset at
    that width; the run loads as an allocator for a preset and its bundle records the family."""
    import json

    from agents.allocator import Bundle
    from agents.trained import TrainedAllocator
    from experiments.evaluate import evaluate_allocator
    from experiments.train import train

    summary = train(_family_run(), tmp_path)
    assert summary["num_timesteps"] == 96 and summary["bundle"] == "bundle"
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["max_plans"] == FAMILY.max_plans and manifest["policy_kind"] == "set"
    assert manifest["training"]["config"]["family"]["name"] == "finance"
    assert manifest["compliance_caps"] == {}  # caps changed with each drawn portfolio: none fixed in the bundle
    Bundle.load(tmp_path / "bundle")
    allocator = TrainedAllocator(tmp_path)
    assert allocator.max_plans == FAMILY.max_plans
    (episode,) = evaluate_allocator(allocator, "small", [5])
    assert np.isfinite(episode["score"])


def test_the_native_batch_cannot_hold_a_family():
    from agents.sb3 import AgentSpecError, make_envs

    with pytest.raises(AgentSpecError, match="vec_env=native runs one scenario .* use vec_env=dummy"):
        make_envs(load_scenario("small"), 2, 0, "native", FAMILY)


def test_logprob_plans_is_refused_where_it_has_no_meaning():
    from agents.sb3 import AgentSpecError, policy_kwargs

    with pytest.raises(AgentSpecError, match=r"belongs to policy: set with PPO or A2C \(its Gaussian\), not SAC"):
        policy_kwargs({"algo": "SAC", "policy": "set", "policy_kwargs": {"logprob_plans": 24}})
    with pytest.raises(AgentSpecError, match=r"\(its Gaussian\), not PPO with policy: mlp"):
        policy_kwargs({"algo": "PPO", "policy": "mlp", "policy_kwargs": {"logprob_plans": 24}})
    with pytest.raises(AgentSpecError, match="must be a positive number of plans or null, got True"):
        policy_kwargs({"algo": "PPO", "policy": "set", "policy_kwargs": {"logprob_plans": True}})
    assert policy_kwargs({"algo": "A2C", "policy": "set", "policy_kwargs": {"logprob_plans": 24}}) == {
        "logprob_plans": 24
    }


def test_family_env_passes_gymnasiums_checker_without_warnings():
    import warnings

    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(FamilyEnv(FAMILY), skip_render_check=True)
