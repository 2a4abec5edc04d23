"""What-if on a calibrated portfolio: allocators compared, or one proposed budget change, with intervals.

``python -m experiments.whatif my_portfolio.yaml --allocators uniform,thompson,trained:outputs/train/run``
``python -m experiments.whatif my_portfolio.yaml --change "move 20% of A1-P003's budget to A2-P010" --days 7``

Every episode starts from the plans as they stand at the end of the log and draws their parameters from
the calibration's posterior (:class:`envs.calibrated.CalibratedGenerator` with ``draw="posterior"``) and
fresh market days and dynamics, so the spread over episodes holds both the calibration's uncertainty and
the simulator's randomness. All allocators (or the baseline and the changed allocation) play the same
episodes: same seeds, same posterior draws, so their difference is paired.

Reported per allocator: the expected score, deep value and deep CPA (first deep stage) with a 90% interval
over episodes (what a week may bring) and the standard error of the mean; for a change, the paired
difference against the baseline with its 90% interval. A ``--change`` moves a share of one plan's budget to
another on top of the baseline allocation (``--baseline static``: the budgets of the log's last day).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.base import Allocator
from agents.registry import AgentConfigError, make_allocator
from conf import CONF_DIR
from envs.budget_env import BudgetShiftEnv
from envs.calibrated import Calibration, load_calibration
from envs.features import Clock
from envs.scenario import ScenarioError
from experiments.common import episode_seeds
from experiments.evaluate import run_episode

LEVEL = 0.9
_CHANGE = re.compile(
    r"^\s*move\s+(?P<pct>\d+(?:\.\d+)?)\s*%\s+(?:of\s+)?(?:plan\s+)?(?P<src>[^\s']+?)(?:'s)?(?:\s+budget)?\s+"
    r"to\s+(?:plan\s+)?(?P<dst>[^\s]+?)\s*$",
    re.IGNORECASE,
)


def parse_change(text: str) -> tuple[float, str, str]:
    """``"move 20% of A's budget to B"`` -> ``(0.2, "A", "B")``."""
    match = _CHANGE.match(text)
    if not match:
        raise ValueError(f'--change must read like "move 20% of PLAN\'s budget to PLAN", got {text!r}')
    fraction = float(match["pct"]) / 100.0
    if not 0 < fraction <= 1:
        raise ValueError(f"--change moves a percentage in (0, 100], got {match['pct']}%")
    return fraction, match["src"], match["dst"]


def allocator_from_spec(spec: str) -> Allocator:
    """``uniform``, ``thompson``, ... (the heuristics of ``conf/agent/<name>.yaml``) or ``trained:<run folder>``."""
    if spec.startswith("trained:"):
        return make_allocator({"kind": "trained", "name": "trained", "run": spec.split(":", 1)[1]})
    path = CONF_DIR / "agent" / f"{spec}.yaml"
    node = yaml.safe_load(path.read_text()) if path.exists() else {"name": spec, "kind": "heuristic"}
    node = {k: v for k, v in node.items() if k in ("name", "kind", "params")}
    return make_allocator(node)


class MoveBudget(Allocator):
    """The baseline allocator's shares with ``fraction`` of plan ``src``'s share moved to plan ``dst``."""

    def __init__(self, baseline: Allocator, fraction: float, src: int, dst: int) -> None:
        self.baseline, self.fraction, self.src, self.dst = baseline, fraction, src, dst
        self.name = f"{getattr(baseline, 'name', 'baseline')} + move"

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        self.baseline.reset(scenario, portfolio, seed)

    def allocate(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        shares = np.array(self.baseline.allocate(stats, clock, active), dtype=np.float64)
        moved = self.fraction * shares[self.src]
        shares[self.src] -= moved
        shares[self.dst] += moved
        return shares


def play(
    cal: Calibration, allocators: dict[str, Allocator], days: int, episodes: int, seed: int, draw: str = "posterior"
) -> dict[str, list[dict[str, Any]]]:
    """Per allocator, the metrics of ``episodes`` paired episodes of ``days`` days from the end of the log."""
    sc = dataclasses.replace(cal.scenario, days=days)
    env = BudgetShiftEnv(sc, generator=cal.generator(draw=draw, start="end"))
    seeds = episode_seeds(seed, episodes)
    return {name: [run_episode(env, alloc, s)[0] for s in seeds] for name, alloc in allocators.items()}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("score", "value", "cpa", "deep_conversions", "spend"):
        x = np.array([r[key] if r.get(key) is not None else np.nan for r in rows], dtype=float)
        x = x[np.isfinite(x)]
        lo, hi = np.percentile(x, [50 * (1 - LEVEL), 50 * (1 + LEVEL)]) if len(x) else (np.nan, np.nan)
        se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan
        out[key] = {"mean": float(np.mean(x)) if len(x) else None, "lo": float(lo), "hi": float(hi), "se": float(se)}
    return out


def paired(rows: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> dict[str, float]:
    d = np.array([(r[key] or np.nan) - (b[key] or np.nan) for r, b in zip(rows, base, strict=True)], dtype=float)
    d = d[np.isfinite(d)]
    lo, hi = np.percentile(d, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {
        "mean": float(d.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "se": float(d.std(ddof=1) / np.sqrt(len(d))),
        "p_better": float((d > 0).mean()),
    }


def _table(results: dict[str, list[dict[str, Any]]], reference: str | None) -> str:
    pct = int(LEVEL * 100)
    lines = [
        f"| allocator | score [{pct}%] | deep value [{pct}%] | deep CPA [{pct}%] | spend | "
        f"score − {reference} (paired) [{pct}%] |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        s = summarise(rows)

        def cell(k: str, s: dict = s) -> str:
            return f"{s[k]['mean']:,.0f} ± {s[k]['se']:,.0f} [{s[k]['lo']:,.0f}, {s[k]['hi']:,.0f}]"

        diff = "—"
        if reference is not None and name != reference:
            d = paired(rows, results[reference], "score")
            diff = f"{d['mean']:+,.0f} [{d['lo']:+,.0f}, {d['hi']:+,.0f}], better in {d['p_better']:.0%}"
        lines.append(
            f"| {name} | {cell('score')} | {cell('value')} | {cell('cpa')} | {s['spend']['mean']:,.0f} | {diff} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", help="calibration YAML (python -m experiments.calibrate)")
    parser.add_argument(
        "--allocators",
        default="static,uniform,thompson",
        help="comma-separated: heuristic names or trained:<run folder>",
    )
    parser.add_argument("--change", default=None, help='"move 20%% of PLAN\'s budget to PLAN"')
    parser.add_argument("--baseline", default="static", help="the allocation a --change modifies (default static)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draw", choices=("posterior", "mean"), default="posterior")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    try:
        if args.days < 1 or args.episodes < 2:
            raise ValueError("--days must be >= 1 and --episodes >= 2")
        cal = load_calibration(args.calibration)
        if args.change:
            fraction, src, dst = parse_change(args.change)
            i, j = cal.plan_index(src), cal.plan_index(dst)
            allocators = {
                args.baseline: allocator_from_spec(args.baseline),
                f"{args.baseline} + move {fraction:.0%} {src} -> {dst}": MoveBudget(
                    allocator_from_spec(args.baseline), fraction, i, j
                ),
            }
        else:
            allocators = {spec: allocator_from_spec(spec) for spec in args.allocators.split(",") if spec}
    except (ValueError, ScenarioError, AgentConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = play(cal, allocators, args.days, args.episodes, args.seed, draw=args.draw)
    reference = next(iter(allocators))
    text = (
        f"What-if on {args.calibration}: {args.episodes} paired episodes of {args.days} days from the end of the log, "
        f"parameters drawn from the posterior ({args.draw}); intervals: {int(LEVEL * 100)}% over episodes; ± the "
        f"standard error of the mean.\n\n" + _table(results, reference)
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
