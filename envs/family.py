"""Scenario families: a distribution of portfolios, drawn per episode, for allocators that serve any portfolio.

A preset (``conf/env/<name>.yaml``) fixes a portfolio's shape (accounts, plans, channel and vertical
mix, budget, market) and draws only the plans' hidden truth per episode. A policy trained on one
preset learns that shape. A :class:`ScenarioFamily` (``conf/family/<name>.yaml``) draws the shape too,
so one model learns to allocate for a handful of plans or a hundred, feed-heavy or search-heavy
portfolios, one vertical or three, rich or lean budgets, calm or shocked markets.

Every drawn scenario is a valid preset mapping built on the family's ``base`` preset and checked by
:func:`envs.scenario.scenario_from_mapping`; the family draws:

- **size**: ``accounts`` x ``plans_per_account``, each uniform over its integer range; the
  observation is padded to the family's ``max_plans`` (the set policies ignore padding);
- **channel mix**: the feed's share of plans, then search's share of the rest (the network takes the
  remainder);
- **vertical mix**: with probability ``single_vertical_prob`` one vertical, otherwise a
  Dirichlet(``vertical_concentration``) mix over all of them. A vertical whose compliance cap
  (``max_spend_share``) is below its share of plans has the cap lifted (1.0), as the
  vertical presets do: a cap on a mostly-wealth portfolio would only withhold its budget;
- **economics**: the daily budget per plan and the portfolio's CPA target are the mix-weighted values
  of the vertical presets (``conf/env/<vertical>.yaml``: budget / plans, ``cpa_target``) times
  factors drawn from ``budget_factor`` and ``cpa_factor``; so the CPA penalty binds about as it does
  on the presets;
- **market**: each channel's traffic per plan is the catalogue's per ``reference_plans`` plans times
  ``volume_factor`` (a portfolio's market grows with it), and its competing-bid level is the
  catalogue's times ``exp(N(0, market_bid_sigma))``; a competition shock and a demand surge each
  happen with their probability on a random day span, and competitors drift by ``market_drift`` a day;
- **plans**: ``potential_fraction``, ``trap_fraction``, ``new_fraction`` uniform over their ranges,
  the platform's goal mix Dirichlet around the base's with ``goal_concentration``.

Held-out scenarios for generalisation are presets outside these ranges (``conf/env/heldout_*.yaml``).

:class:`FamilyEnv` is the Gymnasium env over a family: ``reset`` draws the scenario from
``self.np_random`` (so the seed fixes shape and portfolio alike), builds a
:class:`envs.budget_env.BudgetShiftEnv` for it (about a millisecond) and delegates the episode to it.
Its spaces are those of ``max_plans`` plans; episodes all last ``days x steps_per_day`` steps of the base.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.budget_env import BudgetShiftEnv
from envs.features import OBS_HIGH, OBS_LOW, observation_size
from envs.scenario import (
    CHANNEL_CATALOGUE,
    MAX_PLANS,
    VERTICAL_CATALOGUE,
    Scenario,
    ScenarioError,
    load_scenario,
    load_yaml,
    preset_path,
    scenario_from_mapping,
)
from envs.simulation import BACKENDS

FAMILY_DIR = Path(__file__).resolve().parent.parent / "conf" / "family"

Range = tuple[float, float]


@dataclass(frozen=True)
class ScenarioFamily:
    """The ranges a family draws a scenario from (the fields of ``conf/family/<name>.yaml``)."""

    name: str
    base: str = "default"  # the preset supplying every field not drawn (days, steps, platform, ...)
    max_plans: int = 96  # observation width: the largest portfolio the family draws
    accounts: tuple[int, int] = (1, 4)
    plans_per_account: tuple[int, int] = (2, 24)
    reference_plans: int = 24  # the catalogue's channel volumes are sized for this many plans
    budget_factor: Range = (0.75, 1.35)  # x the verticals' presets' daily budget per plan
    cpa_factor: Range = (0.9, 1.1)  # x the verticals' presets' CPA target
    volume_factor: Range = (0.8, 1.25)  # x the catalogue's traffic per plan
    market_bid_sigma: float = 0.15  # log-sd of each channel's competing-bid level
    feed_share: Range = (0.5, 0.9)  # share of plans on the feed
    search_of_rest: Range = (0.2, 0.6)  # search's share of the non-feed plans
    single_vertical_prob: float = 0.3
    vertical_concentration: float = 1.0  # Dirichlet concentration of a mixed portfolio's verticals
    potential_fraction: Range = (0.1, 0.3)
    trap_fraction: Range = (0.05, 0.25)
    new_fraction: Range = (0.05, 0.25)
    goal_concentration: float = 20.0  # Dirichlet(concentration x base goal mix) of the platform's goals
    competition_prob: float = 0.3  # a competition shock on one or two days
    demand_prob: float = 0.3  # a demand surge on one day
    event_multiplier: Range = (1.2, 1.6)
    market_drift: Range = (-0.01, 0.02)
    # Rewards x (base's daily budget / the drawn one): a 96-plan portfolio's return would otherwise
    # outweigh a 4-plan one's 20-fold in the learner's value targets. Scores (info["score"]) stay currency.
    relative_reward: bool = True

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """A scenario mapping (the fields of a preset) drawn from the family with ``rng``."""
        base, base_sc = _preset(self.base)
        cfg: dict[str, Any] = {k: v for k, v in base.items() if k not in ("channels", "verticals", "market_events")}
        accounts = int(rng.integers(self.accounts[0], self.accounts[1] + 1))
        per_account = int(rng.integers(self.plans_per_account[0], self.plans_per_account[1] + 1))
        n = accounts * per_account
        mix = self._vertical_mix(rng)
        presets = {v: _preset(v)[1] for v in mix}
        budget_per_plan = sum(w * presets[v].daily_budget / presets[v].n_plans for v, w in mix.items())
        cpa = sum(w * presets[v].cpa_target for v, w in mix.items())
        cfg.update(
            name=f"{self.name}:{accounts}x{per_account}",
            accounts=accounts,
            plans_per_account=per_account,
            max_plans=self.max_plans,
            daily_budget=round(n * budget_per_plan * rng.uniform(*self.budget_factor), 2),
            cpa_target=round(cpa * rng.uniform(*self.cpa_factor), 2),
            channels=self._channels(rng, n),
            verticals={
                v: {"share": w, **({"max_spend_share": 1.0} if VERTICAL_CATALOGUE[v]["max_spend_share"] < w else {})}
                for v, w in mix.items()
            },
            market_events=self._events(rng, base_sc),
            market_drift=float(rng.uniform(*self.market_drift)),
            plans={
                **dict(base.get("plans") or {}),
                "potential_fraction": float(rng.uniform(*self.potential_fraction)),
                "trap_fraction": float(rng.uniform(*self.trap_fraction)),
                "new_fraction": float(rng.uniform(*self.new_fraction)),
            },
        )
        goals = rng.dirichlet(self.goal_concentration * np.maximum(base_sc.platform.goal_mix, 1e-3))
        cfg["platform"] = {
            **dict(base.get("platform") or {}),
            "goal_mix": dict(zip(("shallow", "deep", "value"), goals.tolist(), strict=True)),
        }
        return cfg

    def _vertical_mix(self, rng: np.random.Generator) -> dict[str, float]:
        names = list(VERTICAL_CATALOGUE)
        if rng.random() < self.single_vertical_prob:
            return {names[int(rng.integers(len(names)))]: 1.0}
        weights = rng.dirichlet(np.full(len(names), self.vertical_concentration))
        weights = np.maximum(weights, 0.05)  # every drawn vertical gets a plan or so
        weights /= weights.sum()
        return {v: float(w) for v, w in zip(names, weights, strict=True)}

    def _channels(self, rng: np.random.Generator, n_plans: int) -> dict[str, dict[str, float]]:
        feed = float(rng.uniform(*self.feed_share))
        search = (1.0 - feed) * float(rng.uniform(*self.search_of_rest))
        shares = {"feed": feed, "network": 1.0 - feed - search, "search": search}
        scale = n_plans / self.reference_plans * float(rng.uniform(*self.volume_factor))
        return {
            name: {
                "share": shares[name],
                "volume": round(CHANNEL_CATALOGUE[name]["volume"] * scale, 3),
                "market_bid": round(
                    CHANNEL_CATALOGUE[name]["market_bid"] * float(np.exp(rng.normal(0.0, self.market_bid_sigma))), 5
                ),
            }
            for name in shares
        }

    def _events(self, rng: np.random.Generator, base: Scenario) -> list[dict[str, Any]]:
        events = []
        if rng.random() < self.competition_prob:
            first = int(rng.integers(0, base.days))
            last = min(first + int(rng.integers(0, 2)), base.days - 1)
            events.append(
                {
                    "kind": "competition",
                    "first_day": first,
                    "last_day": last,
                    "multiplier": float(rng.uniform(*self.event_multiplier)),
                    "channels": ["feed", "network"],
                }
            )
        if rng.random() < self.demand_prob:
            day = int(rng.integers(0, base.days))
            events.append(
                {
                    "kind": "demand",
                    "first_day": day,
                    "last_day": day,
                    "multiplier": float(rng.uniform(*self.event_multiplier)),
                }
            )
        return events


@functools.lru_cache(maxsize=32)
def _preset_cached(name: str, mtime: float) -> tuple[dict[str, Any], Scenario]:
    return load_yaml(preset_path(name)), load_scenario(name)


def _preset(name: str) -> tuple[dict[str, Any], Scenario]:
    """A preset's mapping and scenario, read once per process (again if the file changes)."""
    raw, scenario = _preset_cached(name, preset_path(name).stat().st_mtime)
    return copy.deepcopy(raw), scenario


def _range(
    cfg: Mapping[str, Any], key: str, default: Range, source: str, lo: float, hi: float, integer: bool = False
) -> Any:
    value = cfg.get(key, default)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or any(isinstance(x, bool) or not isinstance(x, int | float) or not np.isfinite(x) for x in value)
    ):
        raise ScenarioError(f"family field {key} must be a [low, high] pair of numbers, got {value!r} ({source})")
    a, b = value
    if integer and (a != int(a) or b != int(b)):
        raise ScenarioError(f"family field {key} must be a pair of integers, got {value!r} ({source})")
    if not lo <= a <= b <= hi:
        raise ScenarioError(f"family field {key} must satisfy {lo} <= low <= high <= {hi}, got {value!r} ({source})")
    return (int(a), int(b)) if integer else (float(a), float(b))


def _scalar(cfg: Mapping[str, Any], key: str, default: float, source: str, lo: float, hi: float) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ScenarioError(f"family field {key} must be a number in [{lo}, {hi}], got {value!r} ({source})")
    return float(value)


# (low, high) bounds each range field must lie within; integer fields marked.
_RANGE_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "accounts": (1, MAX_PLANS, True),
    "plans_per_account": (1, MAX_PLANS, True),
    "budget_factor": (0.01, 100.0, False),
    "cpa_factor": (0.01, 100.0, False),
    "volume_factor": (0.01, 100.0, False),
    "feed_share": (0.0, 1.0, False),
    "search_of_rest": (0.0, 1.0, False),
    "potential_fraction": (0.0, 0.5, False),
    "trap_fraction": (0.0, 0.5, False),
    "new_fraction": (0.0, 0.5, False),
    "event_multiplier": (0.1, 10.0, False),
    "market_drift": (-0.5, 0.5, False),
}
_SCALAR_BOUNDS: dict[str, tuple[float, float]] = {
    "market_bid_sigma": (0.0, 2.0),
    "single_vertical_prob": (0.0, 1.0),
    "vertical_concentration": (0.01, 1000.0),
    "goal_concentration": (0.01, 1000.0),
    "competition_prob": (0.0, 1.0),
    "demand_prob": (0.0, 1.0),
}


def family_from_mapping(cfg: Mapping[str, Any], source: str | None = None) -> ScenarioFamily:
    """A validated :class:`ScenarioFamily`; a :class:`ScenarioError` names the field and the value.

    Besides each field's own range, the family's largest portfolio must fit ``max_plans``, the
    base must be a preset, and a scenario drawn at the extremes must build.
    """
    src = source or "family"
    if not isinstance(cfg, Mapping):
        raise ScenarioError(f"a scenario family must be a mapping of fields, got {type(cfg).__name__} ({src})")
    known = {f.name for f in fields(ScenarioFamily)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ScenarioError(f"unknown family field {unknown[0]!r}; expected one of {sorted(known)} ({src})")
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"family field name must be a non-empty string, got {name!r} ({src})")
    base = cfg.get("base", "default")
    if not isinstance(base, str) or not preset_path(base).is_file():
        raise ScenarioError(f"family field base must name a preset in conf/env, got {base!r} ({src})")
    kwargs: dict[str, Any] = {"name": name, "base": base}
    defaults = ScenarioFamily(name=name)
    for key, (lo, hi, integer) in _RANGE_BOUNDS.items():
        kwargs[key] = _range(cfg, key, getattr(defaults, key), src, lo, hi, integer)
    for key, (lo, hi) in _SCALAR_BOUNDS.items():
        kwargs[key] = _scalar(cfg, key, getattr(defaults, key), src, lo, hi)
    relative = cfg.get("relative_reward", defaults.relative_reward)
    if not isinstance(relative, bool):
        raise ScenarioError(f"family field relative_reward must be true or false, got {relative!r} ({src})")
    kwargs["relative_reward"] = relative
    for key in ("max_plans", "reference_plans"):
        value = cfg.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PLANS:
            raise ScenarioError(f"family field {key} must be an integer in [1, {MAX_PLANS}], got {value!r} ({src})")
        kwargs[key] = value
    family = ScenarioFamily(**kwargs)
    largest = family.accounts[1] * family.plans_per_account[1]
    if largest > family.max_plans:
        raise ScenarioError(
            f"family field max_plans must be >= accounts[1] x plans_per_account[1] = {largest}, "
            f"got {family.max_plans} ({src})"
        )
    if family.potential_fraction[1] + family.trap_fraction[1] + family.new_fraction[1] > 1.0:
        raise ScenarioError(f"family fields potential_, trap_ and new_fraction may add up to more than 1 ({src})")
    _check_corners(family, src)
    return family


def _check_corners(family: ScenarioFamily, src: str) -> None:
    """Build the family's extreme scenarios (every range at its low end, then at its high end) so that a
    family that would fail at some episode's reset, hours into training, fails here naming its fields."""
    for end in (0, 1):
        corner = dataclasses.replace(
            family,
            **{key: (getattr(family, key)[end],) * 2 for key in _RANGE_BOUNDS},
            single_vertical_prob=1.0,
        )
        try:
            scenario_from_mapping(corner.draw(np.random.default_rng(0)))
        except ScenarioError as exc:
            fields_ = ", ".join(f"{key}={getattr(family, key)}" for key in _RANGE_BOUNDS)
            raise ScenarioError(
                f"family {family.name!r} draws a scenario that cannot be built at its {('low', 'high')[end]} "
                f"ends ({fields_}): {exc} ({src})"
            ) from exc


def load_family(spec: str | Path | Mapping[str, Any] | ScenarioFamily) -> ScenarioFamily:
    """A family from its name (``conf/family/<name>.yaml``), a YAML path, a mapping or itself."""
    if isinstance(spec, ScenarioFamily):
        return spec
    if isinstance(spec, Mapping):
        return family_from_mapping(spec)
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        path = FAMILY_DIR / f"{spec}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in FAMILY_DIR.glob("*.yaml"))
            raise ScenarioError(f"unknown scenario family {str(spec)!r}; known: {known}")
    return family_from_mapping(load_yaml(path), source=str(path))


class FamilyEnv(gym.Env):
    """:class:`envs.budget_env.BudgetShiftEnv` over a scenario family: each episode a new portfolio shape.

    ``reset(seed=...)`` draws the scenario from the family with ``self.np_random``, then the episode's
    portfolio with a seed drawn from the same stream; ``info`` adds ``scenario`` (the drawn name) and
    ``reward_scale``: with the family's ``relative_reward``, rewards are the inner env's times the base's
    daily budget over the drawn one (``info["score"]`` on the last step stays in currency).
    ``self.env`` is the current episode's env and ``self.scenario`` its scenario. Spaces: ``max_plans``
    plans of the family. Everything else (actions, rewards, ``info``) is the inner env's.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, family: str | Mapping[str, Any] | ScenarioFamily = "finance", backend: str = "numba") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.family = load_family(family)
        self.backend = backend
        self.max_plans = self.family.max_plans
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.max_plans,), dtype=np.float32)
        self.observation_space = spaces.Box(
            OBS_LOW, OBS_HIGH, shape=(observation_size(self.max_plans),), dtype=np.float32
        )
        self.env: BudgetShiftEnv | None = None
        self.scenario: Scenario | None = None
        self.reward_scale = 1.0

    def draw_scenario(self) -> Scenario:
        """The next scenario from the family (advances ``self.np_random``)."""
        cfg = self.family.draw(self.np_random)
        return scenario_from_mapping(cfg, source=f"family {self.family.name}")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.scenario = self.draw_scenario()
        self.env = BudgetShiftEnv(self.scenario, backend=self.backend)
        obs, info = self.env.reset(seed=int(self.np_random.integers(2**63 - 1)), options=options)
        base = _preset(self.family.base)[1]
        self.reward_scale = base.daily_budget / self.scenario.daily_budget if self.family.relative_reward else 1.0
        return obs, {**info, "scenario": self.scenario.name, "reward_scale": self.reward_scale}

    def step(self, action: np.ndarray):
        if self.env is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward * self.reward_scale, terminated, truncated, info

    def render(self) -> str | None:
        return None if self.env is None else self.env.render()
