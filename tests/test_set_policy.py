"""The set policy (agents/policies.py) treats plans as a set and serves portfolios of any size.

What a user relies on: listing the same plans in another order permutes the shares accordingly,
padding does not change a plan's score, and one trained model runs on portfolios with fewer or more
plans than it was trained on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.policies import SetActorCriticPolicy, SetContinuousCritic, SetSACPolicy, SetTD3Policy
from agents.sb3 import PlanPooledRunningMeanStd
from envs.budget_env import BudgetShiftEnv
from envs.features import N_GLOBAL_FEATURES, N_PLAN_FEATURES, build_observation, observation_size
from envs.shares import masked_softmax

MAX_PLANS = 8


def spaces_for(max_plans: int) -> tuple[spaces.Box, spaces.Box]:
    obs = spaces.Box(-1.0, 1e6, (observation_size(max_plans),), np.float32)
    return obs, spaces.Box(-1.0, 1.0, (max_plans,), np.float32)


def untrained(policy_class: type, max_plans: int = MAX_PLANS):
    """A policy with default (not near-zero) output weights, so its scores differ between plans."""
    th.manual_seed(0)
    obs_space, action_space = spaces_for(max_plans)
    kwargs = {"ortho_init": False} if policy_class is SetActorCriticPolicy else {}
    return policy_class(obs_space, action_space, lambda _: 3e-4, **kwargs).eval()


def played_env(scenario: str = "small", steps: int = 20, seed: int = 3) -> BudgetShiftEnv:
    """An env some steps into an episode driven by random shares, so plans' stats differ."""
    env = BudgetShiftEnv(scenario)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        env.step_shares(rng.dirichlet(np.ones(env.n_plans)))
    return env


def permute_stats(stats: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[order] for k, v in stats.items()}


def obs_tensor(env: BudgetShiftEnv, max_plans: int, order: np.ndarray | None = None) -> th.Tensor:
    stats, active = env.reporting_stats(), env.active_mask()
    if order is not None:
        stats, active = permute_stats(stats, order), active[order]
    return th.as_tensor(build_observation(stats, env.clock(), max_plans, active)[None])


POLICIES = [SetActorCriticPolicy, SetSACPolicy, SetTD3Policy]


@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_permuted_plans_get_permuted_actions_and_shares(policy_class):
    policy = untrained(policy_class)
    env = played_env()
    order = np.random.default_rng(1).permutation(env.n_plans)
    with th.no_grad():
        action = policy.plan_actions(obs_tensor(env, MAX_PLANS))[0].numpy()
        permuted = policy.plan_actions(obs_tensor(env, MAX_PLANS, order))[0].numpy()
    n = env.n_plans
    assert np.ptp(action[:n]) > 1e-3, "the test needs plans with different scores"
    np.testing.assert_allclose(permuted[:n], action[:n][order], atol=1e-6)
    shares = masked_softmax(action[:n] * 5.0, env.active_mask())
    permuted_shares = masked_softmax(permuted[:n] * 5.0, env.active_mask()[order])
    np.testing.assert_allclose(permuted_shares, shares[order], atol=1e-6)


def test_value_and_q_values_do_not_depend_on_plan_order():
    env = played_env()
    order = np.random.default_rng(2).permutation(env.n_plans)
    obs, obs_perm = obs_tensor(env, MAX_PLANS), obs_tensor(env, MAX_PLANS, order)
    ppo = untrained(SetActorCriticPolicy)
    actions = th.rand(1, MAX_PLANS) * 2 - 1
    actions_perm = actions.clone()
    actions_perm[0, : env.n_plans] = actions[0, : env.n_plans][order]
    critic: SetContinuousCritic = untrained(SetSACPolicy).critic
    with th.no_grad():
        th.testing.assert_close(ppo.predict_values(obs_perm), ppo.predict_values(obs))
        for q, q_perm in zip(critic(obs, actions), critic(obs_perm, actions_perm), strict=True):
            th.testing.assert_close(q_perm, q)
        # ...and the log-probability of the permuted action under the permuted observation (SB3 reuses
        # one distribution object, so read each before the next get_distribution)
        log_prob = ppo.get_distribution(obs).log_prob(actions)
        th.testing.assert_close(ppo.get_distribution(obs_perm).log_prob(actions_perm), log_prob)


@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_padding_and_width_do_not_change_a_plans_action(policy_class):
    """A model built for 8 plan slots scores the same plans alike in a 32-slot or an exact-width layout."""
    policy = untrained(policy_class)
    env = played_env()
    n = env.n_plans
    with th.no_grad():
        at_training_width = policy.plan_actions(obs_tensor(env, MAX_PLANS))[0].numpy()
        for width in (n, 32):
            wider = policy.plan_actions(obs_tensor(env, width))[0].numpy()
            assert wider.shape == (width,)
            np.testing.assert_allclose(wider[:n], at_training_width[:n], atol=1e-6)
            assert np.all(wider[n:] == 0.0)


def test_masked_plans_do_not_count():
    """Inactive plans (not yet launched) change neither the others' actions nor the log-probability."""
    policy = untrained(SetActorCriticPolicy)
    env = played_env()
    obs = obs_tensor(env, MAX_PLANS)
    plans = obs[0, :-N_GLOBAL_FEATURES].reshape(MAX_PLANS, N_PLAN_FEATURES)
    plans[env.n_plans :, 1:] = 123.0  # junk in the padded slots (active flag stays 0)
    with th.no_grad():
        clean = obs_tensor(env, MAX_PLANS)
        th.testing.assert_close(policy.plan_actions(obs), policy.plan_actions(clean))
        action = th.zeros(1, MAX_PLANS)
        moved = action.clone()
        moved[0, env.n_plans :] = 0.9
        dist = policy.get_distribution(clean)
        th.testing.assert_close(dist.log_prob(moved), dist.log_prob(action))
        assert dist.entropy().item() == pytest.approx(env.n_plans * dist.distribution.entropy()[0, 0].item())


def test_pooled_normalisation_is_shared_by_plans_and_widens():
    env = played_env()
    venv = VecNormalize(DummyVecEnv([lambda: BudgetShiftEnv("small")]))
    rms = PlanPooledRunningMeanStd(MAX_PLANS)
    venv.obs_rms = rms
    obs = np.stack([obs_tensor(env, MAX_PLANS)[0].numpy(), obs_tensor(played_env(seed=4), MAX_PLANS)[0].numpy()])
    rms.update(obs)
    plan_mean = rms.mean[:-N_GLOBAL_FEATURES].reshape(MAX_PLANS, N_PLAN_FEATURES)
    assert np.all(plan_mean == plan_mean[0]), "every plan slot gets the same statistics"
    normalised = venv.normalize_obs(obs)
    flags = normalised[:, :-N_GLOBAL_FEATURES].reshape(2, MAX_PLANS, N_PLAN_FEATURES)[:, :, 0]
    np.testing.assert_allclose(flags, obs[:, :-N_GLOBAL_FEATURES].reshape(2, MAX_PLANS, -1)[:, :, 0], atol=1e-6)
    mean32, var32 = rms.stats_for(32)
    assert mean32.shape == var32.shape == (observation_size(32),)
    np.testing.assert_array_equal(mean32[:N_PLAN_FEATURES], rms.mean[:N_PLAN_FEATURES])
    np.testing.assert_array_equal(mean32[-N_GLOBAL_FEATURES:], rms.mean[-N_GLOBAL_FEATURES:])
    # only active plans count: the padded slots' zeros would otherwise drag the means down
    active_rows = obs[:, :-N_GLOBAL_FEATURES].reshape(-1, N_PLAN_FEATURES)
    active_rows = active_rows[active_rows[:, 0] > 0.5]
    np.testing.assert_allclose(rms.plan_rms.mean[1:], active_rows.mean(axis=0)[1:], rtol=1e-3, atol=1e-3)


def test_logprob_plans_weighs_every_portfolio_as_that_many_plans():
    """logprob_plans=R: log-probability and entropy are the exact sums times R / active plans, so a
    portfolio of R plans keeps its exact values; the saved policy keeps the setting."""
    exact = untrained(SetActorCriticPolicy)
    th.manual_seed(0)
    obs_space, action_space = spaces_for(MAX_PLANS)
    for plans in (6, 3):
        scaled = SetActorCriticPolicy(obs_space, action_space, lambda _: 3e-4, ortho_init=False, logprob_plans=plans)
        scaled.load_state_dict(exact.state_dict())
        env = played_env()  # `small`: 6 plans
        obs = obs_tensor(env, MAX_PLANS)
        action = th.as_tensor(np.random.default_rng(1).uniform(-1, 1, (1, MAX_PLANS)), dtype=th.float32)
        with th.no_grad():
            d_exact, d_scaled = exact.get_distribution(obs), scaled.get_distribution(obs)
            ratio = plans / env.n_plans
            th.testing.assert_close(d_scaled.log_prob(action), d_exact.log_prob(action) * ratio)
            th.testing.assert_close(d_scaled.entropy(), d_exact.entropy() * ratio)
        assert scaled._get_constructor_parameters()["logprob_plans"] == plans
    with pytest.raises(ValueError, match="logprob_plans must be a positive number"):
        SetActorCriticPolicy(obs_space, action_space, lambda _: 3e-4, logprob_plans=0)


def test_active_rows_only_equals_the_padded_computation_with_its_gradients(monkeypatch):
    # Training runs the per-plan networks on the active plans' rows only and pools them by segment
    # (agents.policies.pooled_embedding, pool_rows); the exported graph runs them on every padded row
    # and masks the padding out. Both must give every
    # output, and every parameter's gradient, up to float rounding: a batch of portfolios of 0 to 16
    # active plans in a 16-wide observation.
    import agents.policies as policies

    policy = untrained(SetActorCriticPolicy, max_plans=16)
    rng = np.random.default_rng(0)
    obs = rng.lognormal(0.0, 1.0, (12, observation_size(16))).astype(np.float32)
    plans = obs[:, : 16 * N_PLAN_FEATURES].reshape(12, 16, N_PLAN_FEATURES)
    plans[:, :, 0] = 0.0
    for i, n_active in enumerate([0, 1, 2, 3, 5, 8, 11, 13, 15, 16, 16, 4]):
        plans[i, rng.permutation(16)[:n_active], 0] = 1.0
    obs[:, : 16 * N_PLAN_FEATURES] = plans.reshape(12, -1)
    x = th.as_tensor(obs)
    actions = th.as_tensor(rng.normal(size=(12, 16)).astype(np.float32))

    def run(exporting: bool) -> tuple[list[th.Tensor], list[th.Tensor]]:
        monkeypatch.setattr(policies, "_exporting", lambda: exporting)
        policy.zero_grad()
        values, log_prob, entropy = policy.evaluate_actions(x, actions)
        (values.sum() + log_prob.sum() + entropy.sum()).backward()
        grads = [p.grad.clone() if p.grad is not None else th.zeros_like(p) for p in policy.parameters()]
        return [values.detach(), log_prob.detach(), policy.get_distribution(x).distribution.mean.detach()], grads

    packed, packed_grads = run(False)
    padded, padded_grads = run(True)
    for a, b in zip(packed, padded, strict=True):
        th.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in packed_grads), "no gradient reached the parameters"
    for a, b in zip(packed_grads, padded_grads, strict=True):
        th.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
