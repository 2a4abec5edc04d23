"""Simulate one day of a portfolio under a fixed allocation and print what happened.

``python -m experiments.simulate [--scenario default] [--seed 0] [--allocation static|uniform]``

A look inside the simulator: per plan (with its hidden kind, which no allocator but the oracle
sees) and per channel, the day's spend, impressions, clicks, conversions, matured deep events and
value, plus the pending deep value still to mature.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from envs.budget_env import BudgetShiftEnv
from envs.kernels import CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE, IMPRESSIONS, SPEND, ST_VALUE
from envs.scenario import KIND_NAMES

#: The fixed allocations on offer, as raw env input (the env renormalises and caps them). They are not
#: the ``static``/``uniform`` allocators of agents/heuristics.py, which cap shares themselves.
FIXED_SHARES: dict[str, Callable[[BudgetShiftEnv], np.ndarray]] = {
    "static": lambda env: env.portfolio.static_share,  # the advertiser's morning plan budgets
    "uniform": lambda env: np.ones(env.n_plans),
}


def simulate_day(scenario: str, seed: int, allocation: str) -> BudgetShiftEnv:
    env = BudgetShiftEnv(scenario)
    env.reset(seed=seed)
    for _ in range(env.scenario.steps_per_day):
        env.step_shares(FIXED_SHARES[allocation](env) * env.active_mask())
    return env


def print_summary(env: BudgetShiftEnv) -> None:
    sc, pf, total = env.scenario, env.portfolio, env.total
    pending_value = (env.pending[:, :, env.t :].sum(axis=2) * env.stage[:, :, ST_VALUE]).sum(axis=1)
    print(
        f"scenario {sc.name}: {sc.accounts} accounts x {sc.plans_per_account} plans, "
        f"daily budget {sc.daily_budget:,.0f}, one day of {sc.steps_per_day} steps\n"
    )
    header = (
        f"{'plan':>4} {'acct':>4} {'channel':>8} {'vertical':>10} {'kind':>9} {'spend':>10} {'impr':>9} "
        f"{'clicks':>7} {'conv':>5} {'deep':>5} {'value':>9} {'pending':>9} {'CPA/tgt':>7}"
    )
    print(header)
    print("-" * len(header))
    for p in range(env.n_plans):
        conv = total[p, CONVERSIONS]
        cpa_ratio = total[p, SPEND] / conv / pf.target_cpa[p] if conv else float("nan")
        print(
            f"{p:>4} {pf.account[p]:>4} {sc.channels[pf.channel[p]].name:>8} "
            f"{sc.verticals[pf.vertical[p]].name:>10} {KIND_NAMES[pf.kind[p]]:>9} {total[p, SPEND]:>10,.0f} "
            f"{total[p, IMPRESSIONS]:>9,.0f} {total[p, CLICKS]:>7,.0f} {conv:>5,.0f} {total[p, DEEP0]:>5,.0f} "
            f"{total[p, DEEP_VALUE]:>9,.0f} {pending_value[p]:>9,.0f} {cpa_ratio:>7.2f}"
        )
    print(
        f"\n{'channel':>8} {'plans':>5} {'spend':>10} {'impr':>10} {'clicks':>8} {'conv':>6} {'deep':>5} "
        f"{'value':>10} {'CPA':>7}"
    )
    for c, spec in enumerate(sc.channels):
        rows = pf.channel == c
        t = total[rows].sum(axis=0)
        cpa = t[SPEND] / t[CONVERSIONS] if t[CONVERSIONS] else float("nan")
        print(
            f"{spec.name:>8} {rows.sum():>5} {t[SPEND]:>10,.0f} {t[IMPRESSIONS]:>10,.0f} {t[CLICKS]:>8,.0f} "
            f"{t[CONVERSIONS]:>6,.0f} {t[DEEP0]:>5,.0f} {t[DEEP_VALUE]:>10,.0f} {cpa:>7.1f}"
        )
    spent = total[:, SPEND].sum()
    print(
        f"\nspent {spent:,.0f} of {sc.daily_budget:,.0f} ({spent / sc.daily_budget:.1%}); deep value matured "
        f"{total[:, DEEP_VALUE].sum():,.0f}, still pending {pending_value.sum():,.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allocation", choices=tuple(FIXED_SHARES), default="static")
    args = parser.parse_args()
    print_summary(simulate_day(args.scenario, args.seed, args.allocation))


if __name__ == "__main__":
    main()
