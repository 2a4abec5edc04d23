"""Bad scenarios fail at load time with a :class:`ScenarioError` that names the field, the value and,
when the scenario came from a file, the file; good ones (every preset, a Hydra node) load."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PRESETS
from omegaconf import OmegaConf

from envs.budget_env import BudgetShiftEnv
from envs.scenario import Scenario, ScenarioError, load_scenario, preset_path

Config = dict[str, Any]


def _small() -> Config:
    return yaml.safe_load(preset_path("small").read_text())


def _set(key: str, value: Any) -> Callable[[Config], None]:
    def edit(cfg: Config) -> None:
        cfg[key] = value

    return edit


def _at(dotted: str, value: Any) -> Callable[[Config], None]:
    """Set a nested field (``channels.feed.volume``), creating the mappings on the way."""

    def edit(cfg: Config) -> None:
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value

    return edit


def _many(**fields: Any) -> Callable[[Config], None]:
    def edit(cfg: Config) -> None:
        for dotted, value in fields.items():
            _at(dotted, value)(cfg)

    return edit


def _stage_rate_above_one(cfg: Config) -> None:
    cfg["verticals"]["credit"]["stages"] = [
        {"name": "approval", "rate": 1.3, "delay_median_hours": 18.0, "delay_sigma": 0.6, "value": 450.0}
    ]


def _unknown_channel(cfg: Config) -> None:
    cfg["channels"]["tv"] = {"share": 0.1}


def _unknown_channel_field(cfg: Config) -> None:
    cfg["channels"]["feed"]["volum"] = 300.0


def _unknown_vertical(cfg: Config) -> None:
    cfg["verticals"]["crypto"] = {"share": 0.5}


def _missing_days(cfg: Config) -> None:
    del cfg["days"]


# (edit of the `small` preset, pattern the message must match: the field and the offending value)
BAD_SCENARIOS = [
    pytest.param(_set("plans_per_account", 0), r"plans_per_account must be >= 1, got 0", id="plans_per_account=0"),
    pytest.param(_set("daily_budget", -500.0), r"daily_budget must be >= 1(\.0)?, got -500\.0", id="negative-budget"),
    pytest.param(
        _stage_rate_above_one, r"verticals\.credit\.stages\[0\]\.rate must be <= 1(\.0)?, got 1\.3", id="rate>1"
    ),
    pytest.param(_unknown_channel, r"unknown channel 'tv'.*feed", id="unknown-channel"),
    pytest.param(_set("daily_budgte", 8000.0), r"unknown field daily_budgte.*daily_budget", id="typo-top-level"),
    pytest.param(_unknown_channel_field, r"unknown field channels\.feed\.volum.*volume", id="typo-channel-field"),
    pytest.param(_unknown_vertical, r"unknown vertical 'crypto'", id="unknown-vertical"),
    pytest.param(_set("steps_per_day", 5), r"steps_per_day must be a divisor of 24.*got 5", id="steps_per_day=5"),
    pytest.param(_set("max_plans", 4), r"max_plans must be >= .*6, got 4", id="max_plans<n_plans"),
    pytest.param(_set("days", 0), r"days must be >= 1, got 0", id="days=0"),
    pytest.param(_set("accounts", 1.5), r"accounts must be an integer, got 1\.5", id="fractional-accounts"),
    pytest.param(_set("daily_budget", "lots"), r"daily_budget must be a number, got 'lots'", id="budget-string"),
    pytest.param(_set("daily_budget", float("nan")), r"daily_budget must be finite, got nan", id="budget-nan"),
    pytest.param(_set("min_share", 0.5), r"min_share must be <= 1 / n_plans.*got 0\.5", id="min_share-infeasible"),
    pytest.param(_missing_days, r"days is missing", id="missing-days"),
    # Fields that, unbounded, gave NaN observations, overflowed or hung (issue 15).
    pytest.param(_at("plans.trap_cpa_mult", 0), r"plans\.trap_cpa_mult must be > 0(\.0)?, got 0", id="trap-cpa-0"),
    pytest.param(_at("plans.cpa_sigma", 1e3), r"plans\.cpa_sigma must be <= 3(\.0)?, got 1000", id="cpa-sigma"),
    pytest.param(_set("daily_budget", 1e-320), r"daily_budget must be >= 1(\.0)?, got 1e-320", id="budget-denormal"),
    pytest.param(_set("beta", 100), r"beta must be <= 20(\.0)?, got 100", id="beta-100"),
    pytest.param(_at("channels.feed.volume", 1e9), r"channels\.feed\.volume must be <= 1000000", id="volume-1e9"),
    pytest.param(_at("channels.feed.volume", 1e30), r"channels\.feed\.volume must be <= 1000000", id="volume-1e30"),
    pytest.param(
        _at(
            "verticals.credit.stages",
            [{"name": "approval", "rate": 0.3, "delay_median_hours": 1e20, "delay_sigma": 0.5, "value": 100.0}],
        ),
        r"verticals\.credit\.stages\[0\]\.delay_median_hours must be <= 8784",
        id="delay-1e20",
    ),
    pytest.param(_set("attribution_window_days", 1e9), r"attribution_window_days must be <= 366", id="window-1e9"),
    pytest.param(_set("accounts", float("nan")), r"accounts must be finite, got nan", id="accounts-nan"),
    pytest.param(_set("days", float("inf")), r"days must be finite, got inf", id="days-inf"),
    pytest.param(
        _at("channels.feed.diurnal", [1.0] * 3 + ["x"] + [1.0] * 20),
        r"channels\.feed\.diurnal\[3\] must be a finite non-negative number, got 'x'",
        id="curve-string",
    ),
    pytest.param(
        _at("channels.feed.diurnal", [True] * 24), r"channels\.feed\.diurnal\[0\] must be a finite", id="curve-bool"
    ),
    pytest.param(
        _at("channels.feed.diurnal", [1.0] * 23), r"channels\.feed\.diurnal must be a list of 24", id="curve-short"
    ),
    pytest.param(
        _at(
            "verticals.credit.stages",
            [{"name": None, "rate": 0.3, "delay_median_hours": 10.0, "delay_sigma": 0.5, "value": 100.0}],
        ),
        r"verticals\.credit\.stages\[0\]\.name must be a non-empty string, got None",
        id="stage-name-null",
    ),
    # The platform layer and market events (issue 11).
    pytest.param(
        _at("platform.bid_mult_max", 0.8),
        r"platform\.bid_mult_min / platform\.bid_mult_max must be bounds around 1.*cannot reach the target",
        id="controller-cannot-reach-target",
    ),
    pytest.param(_at("platform.edit_threshold", 1.5), r"platform\.edit_threshold must be <= 1", id="threshold>1"),
    pytest.param(
        _at("platform.failed_throttle", 1e-4),
        r"platform\.failed_throttle must be >= 0\.000488",
        id="throttle-below-draw",
    ),
    pytest.param(_at("platform.compensation_threshold", 0), r"compensation_threshold must be > 0", id="threshold=0"),
    pytest.param(_at("platform.goal_mix", {"shallow": 1, "roas": 1}), r"unknown goal 'roas'", id="unknown-goal"),
    pytest.param(_at("platform.dedup", "yes"), r"platform\.dedup must be true or false, got 'yes'", id="dedup-str"),
    pytest.param(_at("platform.learnig_days", 3), r"unknown field platform\.learnig_days", id="platform-typo"),
    pytest.param(
        _set("market_events", [{"kind": "competition", "first_day": 1, "last_day": 5, "multiplier": 1.5}]),
        r"market_events\[0\]\.last_day must be a day of the episode \(< days = 2\), got 5",
        id="event-past-the-episode",
    ),
    pytest.param(
        _set("market_events", [{"kind": "holiday", "first_day": 0, "last_day": 0, "multiplier": 1.5}]),
        r"market_events\[0\]\.kind must be 'competition' or 'demand', got 'holiday'",
        id="event-unknown-kind",
    ),
    pytest.param(
        _set("market_events", [{"kind": "demand", "first_day": 0, "last_day": 0, "multiplier": 2, "channels": ["tv"]}]),
        r"market_events\[0\]\.channels must be a list of the scenario's channels",
        id="event-unknown-channel",
    ),
    pytest.param(_set("market_drift", 2.0), r"market_drift must be <= 0\.5, got 2", id="drift"),
    pytest.param(
        _many(**{"days": 200, "channels.feed.volume": 1e6}),
        r"auction lots per episode",
        id="episode-too-long",
    ),
]


@pytest.mark.parametrize(("edit", "message"), BAD_SCENARIOS)
def test_bad_mapping_names_the_field_and_value(edit: Callable[[Config], None], message: str) -> None:
    cfg = _small()
    edit(cfg)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(cfg)


@pytest.mark.parametrize(("edit", "message"), BAD_SCENARIOS)
def test_bad_file_names_the_field_value_and_file(edit: Callable[[Config], None], message: str, tmp_path: Path) -> None:
    cfg = _small()
    edit(cfg)
    path = tmp_path / "broken_preset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ScenarioError, match=message) as excinfo:
        load_scenario(str(path))
    assert str(path) in str(excinfo.value)
    # The env reports the same error: a bad preset never starts an episode.
    with pytest.raises(ScenarioError, match=re.escape(str(path))):
        BudgetShiftEnv(str(path))


def test_scenario_error_is_a_value_error() -> None:
    # Callers (Hydra entry points, the production loader) may catch ValueError generically.
    assert issubclass(ScenarioError, ValueError)


def test_unparsable_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbled.yaml"
    path.write_text("name: small\nchannels: {feed: [\n")
    with pytest.raises(ScenarioError, match=re.escape(str(path))):
        load_scenario(path)


def test_a_yaml_file_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- small\n- default\n")
    with pytest.raises(ScenarioError, match=r"mapping.*" + re.escape(str(path))):
        load_scenario(path)


def test_unknown_preset_name_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario preset 'defualt'.*'default'"):
        load_scenario("defualt")


@pytest.mark.parametrize("group", ["channels", "verticals"])
def test_a_non_mapping_channel_or_vertical_entry_is_a_scenario_error(group: str) -> None:
    cfg = _small()
    first = next(iter(cfg[group]))
    cfg[group][first] = 0.5
    with pytest.raises(ScenarioError, match=rf"{group}\.{first}"):
        load_scenario(cfg)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_remembers_its_file(preset: str) -> None:
    sc = load_scenario(preset)
    assert isinstance(sc, Scenario)
    assert sc.name == preset
    assert sc.source == str(preset_path(preset))
    assert sc.max_plans >= sc.n_plans
    assert sum(sc.channel_mix) == pytest.approx(1.0) and sum(sc.vertical_mix) == pytest.approx(1.0)


def test_a_hydra_node_is_accepted_and_not_modified() -> None:
    cfg = _small()
    node = OmegaConf.create(copy.deepcopy(cfg))
    sc = load_scenario(node)
    assert sc.daily_budget == cfg["daily_budget"] and sc.n_plans == 6
    assert OmegaConf.to_container(node) == cfg


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, 10)]
    lines += ["name: *a9"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1000
    with pytest.raises(ScenarioError, match=r"expands to [\d,]+ YAML nodes.*refused"):
        load_scenario(path)


def test_a_non_utf8_preset_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ScenarioError, match=re.escape(str(path))):
        load_scenario(path)
