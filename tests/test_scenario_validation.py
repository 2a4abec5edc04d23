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
    pytest.param(_set("daily_budget", -500.0), r"daily_budget must be > 0(\.0)?, got -500\.0", id="negative-budget"),
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
