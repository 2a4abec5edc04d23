"""Simulate days of a portfolio under a fixed allocation and print what happened.

``python -m experiments.simulate [--scenario default] [--seed 0] [--allocation static|uniform] [--days 1]
[--export-log log.csv]``

A look inside the simulator: per plan (with its hidden kind, which no allocator but the oracle
sees) and per channel, the period's spend, impressions, clicks, conversions, matured deep events and
value, plus the pending deep value still to mature. ``--export-log`` also writes the period as an hourly
reporting log (:mod:`experiments.logs`), the input of ``python -m experiments.calibrate``; ``--days``
longer than the preset's episode stretches the episode to that many days.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from envs.budget_env import BudgetShiftEnv
from envs.kernels import CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE, IMPRESSIONS, SPEND, ST_VALUE
from envs.scenario import KIND_NAMES, load_scenario
from experiments.logs import LogRecorder

#: The fixed allocations on offer, as raw env input (the env renormalises and caps them). They are not
#: the ``static``/``uniform`` allocators of agents/heuristics.py, which cap shares themselves.
FIXED_SHARES: dict[str, Callable[[BudgetShiftEnv], np.ndarray]] = {
    "static": lambda env: env.portfolio.static_share,  # the advertiser's morning plan budgets
    "uniform": lambda env: np.ones(env.n_plans),
}


def simulate_day(scenario: str, seed: int, allocation: str) -> BudgetShiftEnv:
    return simulate_days(scenario, seed, allocation, days=1)


def simulate_days(
    scenario: str, seed: int, allocation: str, days: int = 1, export_log: str | Path | None = None
) -> BudgetShiftEnv:
    """``days`` days of ``scenario`` from ``seed`` under a fixed allocation; optionally their hourly log."""
    sc = load_scenario(scenario)
    if days < 1:
        raise ValueError(f"--days must be >= 1, got {days}")
    if days > sc.days:  # a longer period than the preset's episode: the same portfolio, more days
        sc = dataclasses.replace(sc, days=days)
    env = BudgetShiftEnv(sc)
    env.reset(seed=seed)
    recorder = LogRecorder(env) if export_log is not None else None
    for _ in range(days * env.scenario.steps_per_day):
        active = env.active_mask()
        _, _, _, _, info = env.step_shares(FIXED_SHARES[allocation](env) * active)
        if recorder is not None:
            recorder.record(info, active)
    if recorder is not None:
        recorder.write(export_log)
    return env


def print_summary(env: BudgetShiftEnv) -> None:
    sc, pf, total = env.scenario, env.portfolio, env.total
    pending_value = (env.pending[:, :, env.t :].sum(axis=2) * env.stage[:, :, ST_VALUE]).sum(axis=1)
    print(
        f"scenario {sc.name}: {sc.accounts} accounts x {sc.plans_per_account} plans, "
        f"daily budget {sc.daily_budget:,.0f}, {env.t // sc.steps_per_day} day(s) of {sc.steps_per_day} steps\n"
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
    budget = sc.daily_budget * env.t / sc.steps_per_day
    print(
        f"\nspent {spent:,.0f} of {budget:,.0f} ({spent / budget:.1%}); deep value matured "
        f"{total[:, DEEP_VALUE].sum():,.0f}, still pending {pending_value.sum():,.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allocation", choices=tuple(FIXED_SHARES), default="static")
    parser.add_argument("--days", type=int, default=1, help="days to simulate (default 1)")
    parser.add_argument("--export-log", default=None, help="write the period's hourly reporting log (CSV) here")
    args = parser.parse_args()
    if args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    env = simulate_days(args.scenario, args.seed, args.allocation, args.days, args.export_log)
    print_summary(env)
    if args.export_log:
        print(f"wrote {args.export_log}: {args.days} days x {env.n_plans} plans, hourly")


if __name__ == "__main__":
    main()
