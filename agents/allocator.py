"""The production allocator: reporting stats in, plan budgets out, with ONNX Runtime and NumPy alone.

A service that every hour reads its plans' statistics from the ad platform's reporting and writes
plan budgets back imports this module and nothing else of the research stack: it depends on NumPy,
ONNX Runtime, the standard library, :mod:`envs.features` (the observation layout) and, for the
fallbacks, :mod:`agents.heuristics` (both NumPy only).
Importing it never imports torch, Stable-Baselines3, Numba, Hydra or pandas. ``import envs.features``
runs ``envs/__init__.py``, which imports ``gymnasium.envs.registration`` to register the simulator;
gymnasium is pure Python and light, so it is accepted here (``tests/test_allocator_loader.py``
checks the rest in a fresh process).

Two allocators share one call, ``allocate(plan_stats, clock) -> Allocation``:

- :class:`Bundle`: a policy exported by :mod:`agents.export` (``policy.onnx`` + ``manifest.json``).
  Loading checks the schema version, the hash of ``policy.onnx`` and that the bundle's feature
  layout is the one :mod:`envs.features` builds today.
- :class:`Heuristic`: a fallback that needs no bundle, ``proportional`` (shares proportional to
  smoothed deep value per cost) or ``uniform`` from :mod:`agents.heuristics` (NumPy only), so a
  service can keep allocating when no trained policy is deployed.

``plan_stats`` is one row per plan with the columns :data:`INPUT_COLUMNS`: ``plan_id`` and every
:data:`envs.features.STAT_NAMES` (``channel`` and ``vertical`` as names), plus the optional
``active`` flag (0 keeps a paused or not yet launched plan in its slot but gives it nothing; the
default is 1). It may be a pandas DataFrame, a list of dicts (one per plan) or a dict of columns.
Row order is the policy's slot order: keep it stable from hour to hour. Bad input raises
:class:`AllocationInputError` naming the column, the plan and the value; no allocation is returned.

The allocation gives each plan a share of what is left of today's budget and its budget
``share x budget left today`` (the platform paces a plan's budget over the rest of the day). Shares
follow the training env's action limits (min/max share, max change from ``previous_shares``) when the
bundle records any; budgets also respect its per-vertical compliance caps (what a cap withholds is
reported, not moved to other plans), exactly as the simulator applied them during training.

CLI: ``python -m agents.allocator BUNDLE stats.csv --budget 50000 --hour 14`` prints the allocation
as JSON (``BUNDLE`` may be ``proportional`` or ``uniform`` for a fallback).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import numbers
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agents.heuristics import HEURISTICS
from envs.features import CHANNELS, NUMERIC_STATS, STAT_NAMES, VERTICALS, Clock, build_observation, feature_names
from envs.shares import has_share_limits, project_shares, vertical_caps, withhold_over_caps

#: Version of the bundle layout this loader reads; :mod:`agents.export` writes it. Bump it when the
#: manifest or the graph's inputs/outputs change in a way an older loader would misread.
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.onnx"
EXAMPLE_FILE = "example_stats.csv"
#: Graph input and output names.
OBS_INPUT, MASK_INPUT, SHARES_OUTPUT = "obs", "mask", "shares"

PLAN_ID = "plan_id"
ACTIVE = "active"
#: Required input columns, in the order the CSV example writes them; ``active`` is optional.
INPUT_COLUMNS: tuple[str, ...] = (PLAN_ID, *STAT_NAMES)
OPTIONAL_COLUMNS: tuple[str, ...] = (ACTIVE,)
_FLAG_COLUMNS = ("learning", ACTIVE)
#: Heuristics usable without a bundle (``allocate`` from the current stats alone).
FALLBACKS: tuple[str, ...] = ("proportional", "uniform")


class BundleError(ValueError):
    """A bundle cannot be used: missing file, newer schema, hash mismatch, foreign feature layout."""


class AllocationInputError(ValueError):
    """Plan stats or clock that the allocator refuses to allocate from."""


@dataclass(frozen=True)
class PlanTable:
    """Validated plan stats: what :func:`envs.features.build_observation` takes, plus ids and flags."""

    plan_ids: tuple[str, ...]
    stats: dict[str, np.ndarray]  # every STAT_NAMES entry, (n_plans,); channel/vertical as vocabulary indices
    active: np.ndarray  # (n_plans,) bool


@dataclass(frozen=True)
class Allocation:
    """Each plan's share of today's remaining budget and its budget, in the input's row order."""

    plan_ids: tuple[str, ...]
    shares: np.ndarray  # (n_plans,) float64, sum 1 over active plans (0 when none is active)
    budgets: np.ndarray  # (n_plans,) float64 currency: capped share x budget left today
    budget_left_today: float  # currency
    withheld: float  # currency held back by compliance caps
    allocator: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allocator": self.allocator,
            **self.details,
            "budget_left_today": self.budget_left_today,
            "withheld": self.withheld,
            "plans": [
                {"plan_id": pid, "share": float(s), "budget": float(b)}
                for pid, s, b in zip(self.plan_ids, self.shares, self.budgets, strict=True)
            ],
        }


# -------------------------------------------------------------------------------------------------
# Input validation


def _columns(plan_stats: Any) -> dict[str, list[Any]]:
    """A table (DataFrame, list of row dicts, dict of columns) as a dict of column lists."""
    if hasattr(plan_stats, "columns") and hasattr(plan_stats, "to_dict"):  # pandas, without importing it
        return {str(c): list(plan_stats[c]) for c in plan_stats.columns}
    if isinstance(plan_stats, Mapping):
        cols = {}
        for name, values in plan_stats.items():
            values = values.tolist() if isinstance(values, np.ndarray) else values
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise AllocationInputError(
                    f"column {name!r} must be a sequence of per-plan values, got {type(values).__name__}"
                )
            cols[str(name)] = list(values)
        lengths = {name: len(v) for name, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise AllocationInputError(f"columns have different lengths: {lengths}")
        return cols
    if isinstance(plan_stats, Sequence) and not isinstance(plan_stats, str | bytes):
        rows = list(plan_stats)
        if not rows:
            return {}
        keys = list(rows[0]) if isinstance(rows[0], Mapping) else None
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise AllocationInputError(f"row {i} must be a mapping of column -> value, got {type(row).__name__}")
            if list(row) != keys and set(row) != set(keys):
                raise AllocationInputError(f"row {i} has columns {sorted(row)}, row 0 has {sorted(keys)}")
        return {str(k): [row[k] for row in rows] for k in keys}
    raise AllocationInputError(
        f"plan_stats must be a DataFrame, a list of row dicts or a dict of columns, got {type(plan_stats).__name__}"
    )


def _number(value: Any, column: str, plan: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise AllocationInputError(f"column {column!r} of plan {plan!r} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise AllocationInputError(f"column {column!r} of plan {plan!r} is {value!r}; expected a finite number")
    return x


def parse_plan_stats(plan_stats: Any, max_plans: int | None = None, why: str = "") -> PlanTable:
    """Validate a table of per-plan reporting stats and convert it for :func:`build_observation`.

    :raises AllocationInputError: a missing or unexpected column, no plans or more than ``max_plans``,
        a duplicate or empty ``plan_id``, an unknown channel or vertical, a value that is not a finite
        number, a negative count or amount, a non-positive ``target_cpa``, a flag other than 0/1.
    """
    cols = _columns(plan_stats)
    missing = [c for c in INPUT_COLUMNS if c not in cols]
    extra = [c for c in cols if c not in INPUT_COLUMNS and c not in OPTIONAL_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        raise AllocationInputError(
            f"plan stats: {'; '.join(parts)}; expected {list(INPUT_COLUMNS)} (optional: {list(OPTIONAL_COLUMNS)})"
        )
    n = len(cols[PLAN_ID])
    if n == 0:
        raise AllocationInputError("plan stats have no plans (no rows)")
    if max_plans is not None and n > max_plans:
        raise AllocationInputError(f"{n} plans given, but this allocator takes at most {max_plans}{why}")
    plan_ids = tuple("" if p is None else str(p).strip() for p in cols[PLAN_ID])
    if any(p == "" for p in plan_ids):
        raise AllocationInputError(
            f"column 'plan_id' is empty in row(s) {[i for i, p in enumerate(plan_ids) if not p]}"
        )
    if len(set(plan_ids)) != n:
        dupes = sorted({p for p in plan_ids if plan_ids.count(p) > 1})
        raise AllocationInputError(f"column 'plan_id' has duplicates: {dupes}")

    stats: dict[str, np.ndarray] = {}
    for column, vocab in (("channel", CHANNELS), ("vertical", VERTICALS)):
        idx = np.empty(n, dtype=np.int64)
        for i, (pid, value) in enumerate(zip(plan_ids, cols[column], strict=True)):
            name = str(value).strip().lower() if value is not None else ""
            if name not in vocab:
                raise AllocationInputError(
                    f"column {column!r} of plan {pid!r} is {value!r}; expected one of {list(vocab)}"
                )
            idx[i] = vocab.index(name)
        stats[column] = idx
    for column in (*NUMERIC_STATS, *(c for c in OPTIONAL_COLUMNS if c in cols)):
        values = np.array([_number(v, column, pid) for pid, v in zip(plan_ids, cols[column], strict=True)])
        bad = values <= 0 if column == "target_cpa" else values < 0
        if column in _FLAG_COLUMNS:
            bad = (values != 0) & (values != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            expected = {"target_cpa": "> 0"}.get(column, "0 or 1" if column in _FLAG_COLUMNS else ">= 0")
            raise AllocationInputError(
                f"column {column!r} of plan {plan_ids[i]!r} is {float(values[i])!r}; expected {expected}"
            )
        stats[column] = values
    active = stats.pop(ACTIVE, np.ones(n)) > 0.5
    return PlanTable(plan_ids=plan_ids, stats=stats, active=active)


def check_clock(clock: Clock) -> Clock:
    """The clock, if it describes a decision the observation can encode; else :class:`AllocationInputError`."""
    problems = []
    if not (isinstance(clock.hour, numbers.Integral) and 0 <= clock.hour <= 23):
        problems.append(f"hour must be an integer in 0..23, got {clock.hour!r}")
    if not (isinstance(clock.days, numbers.Integral) and clock.days >= 1):
        problems.append(f"days must be an integer >= 1, got {clock.days!r}")
    elif not (isinstance(clock.day, numbers.Integral) and 0 <= clock.day < clock.days):
        problems.append(f"day must be an integer in 0..days-1 = {clock.days - 1}, got {clock.day!r}")
    budget = clock.daily_budget
    if not (isinstance(budget, numbers.Real) and math.isfinite(budget) and budget > 0):
        problems.append(f"daily_budget must be a positive number, got {budget!r}")
    left = clock.budget_left_today
    if not (isinstance(left, numbers.Real) and math.isfinite(left) and left >= 0):
        problems.append(f"budget_left_today must be a number >= 0, got {left!r}")
    elif not problems and left > budget * (1 + 1e-9):
        problems.append(f"budget_left_today = {left} exceeds daily_budget = {budget}")
    if problems:
        raise AllocationInputError("clock: " + "; ".join(problems))
    return clock


# -------------------------------------------------------------------------------------------------
# Shares -> budgets: the training env's limits and caps


@dataclass(frozen=True)
class ShareLimits:
    """What the training env did to the policy's shares before spending them."""

    min_share: float = 0.0
    max_share: float = 1.0
    max_change: float | None = None  # per step, against the previous step's (capped) shares
    vertical_caps: dict[str, float] = field(default_factory=dict)  # vertical name -> max share of budget

    @property
    def any_share_limit(self) -> bool:
        return has_share_limits(self.min_share, self.max_share, self.max_change)

    def apply(self, shares: np.ndarray, table: PlanTable, previous: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(shares, capped)``: shares within the limits (sum 1) and the shares after compliance caps."""
        if self.any_share_limit:
            prev = np.zeros_like(shares) if previous is None else previous
            shares = project_shares(shares, prev, table.active, self.min_share, self.max_share, self.max_change)
        return shares, withhold_over_caps(shares, table.stats["vertical"], vertical_caps(self.vertical_caps))


class TableAllocator(ABC):
    """``allocate(plan_stats, clock)`` for any rule that maps validated stats to shares."""

    name = "allocator"
    plan_limit: int | None = None  # most plans one allocation may cover (None: any)
    plan_limit_why: str = ""
    limits = ShareLimits()

    def parse(self, plan_stats: Any) -> PlanTable:
        """Validate ``plan_stats`` for this allocator (see :func:`parse_plan_stats`)."""
        return parse_plan_stats(plan_stats, self.plan_limit, self.plan_limit_why)

    @abstractmethod
    def shares(self, table: PlanTable, clock: Clock) -> np.ndarray:
        """Shares over ``table``'s plans before limits and caps (sum 1 over active plans)."""

    def allocate(self, plan_stats: Any, clock: Clock, previous_shares: Mapping[str, float] | None = None) -> Allocation:
        """Budgets for the plans in ``plan_stats`` at ``clock``.

        :param plan_stats: one row per plan, columns :data:`INPUT_COLUMNS` (+ optional ``active``).
        :param clock: hour, day, days, daily budget and budget left today.
        :param previous_shares: plan_id -> the share the previous step's allocation gave it after caps
            (``Allocation.budgets / budget_left_today``); only used when the bundle has ``max_change``.
        :raises AllocationInputError: on any input problem (no allocation is made).
        """
        table = self.parse(plan_stats)
        check_clock(clock)
        raw = self.shares(table, clock)
        previous = None
        if previous_shares is not None:
            previous = np.array([float(previous_shares.get(p, 0.0)) for p in table.plan_ids])
        shares, capped = self.limits.apply(raw, table, previous)
        left = float(clock.budget_left_today)
        return Allocation(
            plan_ids=table.plan_ids,
            shares=shares,
            budgets=capped * left,
            budget_left_today=left,
            withheld=float((shares - capped).sum() * left),
            allocator=self.name,
            details=self.details(),
        )

    def details(self) -> dict[str, Any]:
        return {}


class Heuristic(TableAllocator):
    """A research heuristic (:mod:`agents.heuristics`, NumPy only) behind the production call: the fallback.

    Only rules that decide from the current stats alone are offered (:data:`FALLBACKS`): a service
    that runs once an hour keeps no episode history. Their default knobs are the research configs'
    (``conf/agent/<name>.yaml``). ``vertical_caps`` (vertical name -> max share) are applied as the
    bundle's compliance caps are.
    """

    def __init__(self, name: str = "proportional", vertical_caps: Mapping[str, float] | None = None) -> None:
        if name not in FALLBACKS:
            raise ValueError(f"fallback allocator must be one of {list(FALLBACKS)}, got {name!r}")
        self.name = name
        self.rule = HEURISTICS[name]()
        self.limits = ShareLimits(vertical_caps=dict(vertical_caps or {}))

    def shares(self, table: PlanTable, clock: Clock) -> np.ndarray:
        return self.rule.allocate(table.stats, clock, table.active)


# -------------------------------------------------------------------------------------------------
# Bundles


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Bundle(TableAllocator):
    """An exported policy: ``policy.onnx`` run by ONNX Runtime, described by ``manifest.json``."""

    def __init__(self, path: Path, manifest: dict[str, Any], session: ort.InferenceSession) -> None:
        self.path = path
        self.manifest = manifest
        self.session = session
        self.max_plans = int(manifest["max_plans"])
        # A flat MLP only ever saw the training portfolio's plans in its first slots (the rest were padding);
        # a set policy scores every slot with the same network.
        self.plan_limit = int(manifest.get("plans_served", self.max_plans))
        self.plan_limit_why = (
            f" (max_plans={self.max_plans})"
            if self.plan_limit == self.max_plans
            else f": a {manifest.get('policy_kind', 'mlp')} policy trained on {self.plan_limit} plans left slots "
            f"{self.plan_limit}..{self.max_plans - 1} empty in training (a set-policy bundle serves up to max_plans)"
        )
        self.width = int(manifest["observation_size"])
        self.name = f"bundle:{manifest.get('algorithm', 'policy')}"
        lim = manifest.get("action_limits") or {}
        self.limits = ShareLimits(
            min_share=float(lim.get("min_share", 0.0)),
            max_share=float(lim.get("max_share", 1.0)),
            max_change=None if lim.get("max_change") is None else float(lim["max_change"]),
            vertical_caps={str(k): float(v) for k, v in (manifest.get("compliance_caps") or {}).items()},
        )

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Open a bundle folder, verifying its schema version, the hash of ``policy.onnx`` and its layout.

        :raises BundleError: with what is wrong and what was expected.
        """
        path = Path(path)
        manifest_path, policy_path = path / MANIFEST_FILE, path / POLICY_FILE
        for p in (manifest_path, policy_path):
            if not p.is_file():
                raise BundleError(f"{p} is missing; a bundle folder holds {MANIFEST_FILE} and {POLICY_FILE}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
        version = manifest.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{manifest_path}: schema_version must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path}: schema_version {version} is newer than this loader reads "
                f"({SCHEMA_VERSION}); upgrade budgetshift to load this bundle"
            )
        for key in ("max_plans", "observation_size", "features", "policy"):
            if key not in manifest:
                raise BundleError(f"{manifest_path}: field {key!r} is missing")
        expected_hash = manifest["policy"].get("sha256")
        actual_hash = sha256_file(policy_path)
        if actual_hash != expected_hash:
            raise BundleError(
                f"{policy_path} has sha256 {actual_hash}, the manifest says {expected_hash}: the "
                "file was modified or corrupted after export; refusing to load it"
            )
        max_plans = int(manifest["max_plans"])
        names = [f["name"] for f in manifest["features"]]
        expected = feature_names(max_plans)
        if names != expected:
            where = next(
                (i for i, (a, b) in enumerate(zip(names, expected, strict=False)) if a != b),
                min(len(names), len(expected)),
            )
            got = names[where] if where < len(names) else "<end>"
            want = expected[where] if where < len(expected) else "<end>"
            raise BundleError(
                f"{manifest_path}: the bundle's observation layout ({len(names)} features) differs from "
                f"envs.features today ({len(expected)} for max_plans={max_plans}) at position {where}: "
                f"{got!r} vs {want!r}; re-export the policy with this version"
            )
        if int(manifest["observation_size"]) != len(expected):
            raise BundleError(f"{manifest_path}: observation_size {manifest['observation_size']} != {len(expected)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one hourly decision is tiny; threads only add jitter
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(policy_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise BundleError(f"ONNX Runtime cannot load {policy_path}: {exc}") from exc
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = {o.name: o.shape for o in session.get_outputs()}
        if set(inputs) != {OBS_INPUT, MASK_INPUT} or SHARES_OUTPUT not in outputs:
            raise BundleError(
                f"{policy_path}: expected inputs {OBS_INPUT!r}, {MASK_INPUT!r} and output "
                f"{SHARES_OUTPUT!r}, got inputs {list(inputs)} and outputs {list(outputs)}"
            )
        if inputs[OBS_INPUT][-1] != len(expected) or inputs[MASK_INPUT][-1] != max_plans:
            raise BundleError(
                f"{policy_path}: graph takes obs {inputs[OBS_INPUT]} and mask {inputs[MASK_INPUT]}, "
                f"the manifest says width {len(expected)} and max_plans {max_plans}"
            )
        return cls(path, manifest, session)

    def policy_shares(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run the graph: ``(batch, width)`` raw observations and ``(batch, max_plans)`` masks -> shares."""
        obs = np.asarray(obs, dtype=np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.width:
            raise AllocationInputError(f"observation must have shape (batch, {self.width}), got {obs.shape}")
        if mask.shape != (obs.shape[0], self.max_plans):
            raise AllocationInputError(f"mask must have shape ({obs.shape[0]}, {self.max_plans}), got {mask.shape}")
        if not np.all(np.isfinite(obs)):
            raise AllocationInputError("observation contains NaN or inf")
        (shares,) = self.session.run([SHARES_OUTPUT], {OBS_INPUT: obs, MASK_INPUT: mask})
        return shares

    def observe(self, table: PlanTable, clock: Clock) -> tuple[np.ndarray, np.ndarray]:
        """The raw observation and the mask that the graph takes, for one decision."""
        obs = build_observation(table.stats, clock, self.max_plans, table.active)
        mask = np.zeros(self.max_plans, dtype=np.float32)
        mask[: len(table.active)] = table.active
        return obs, mask

    def shares(self, table: PlanTable, clock: Clock) -> np.ndarray:
        obs, mask = self.observe(table, clock)
        return self.policy_shares(obs[None], mask[None])[0, : len(table.active)].astype(np.float64)

    def details(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "policy_sha256": self.manifest["policy"]["sha256"]}


def load_allocator(spec: str | Path | None) -> TableAllocator:
    """A bundle folder, or the name of a fallback heuristic (:data:`FALLBACKS`; ``None``: ``proportional``)."""
    if spec is None:
        return Heuristic("proportional")
    if str(spec) in FALLBACKS:
        return Heuristic(str(spec))
    return Bundle.load(spec)


# -------------------------------------------------------------------------------------------------
# Files and CLI


def read_stats_csv(path: str | Path) -> dict[str, list[str]]:
    """A plan stats CSV (header :data:`INPUT_COLUMNS`, one row per plan) as a dict of columns."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise AllocationInputError(f"{path} is empty; expected a header {list(INPUT_COLUMNS)}")
        header = [h.strip() for h in reader.fieldnames]
        if len(set(header)) != len(header):
            raise AllocationInputError(f"{path}: duplicate column(s) in the header {header}")
        cols: dict[str, list[str]] = {h: [] for h in header}
        for line, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise AllocationInputError(f"{path}, line {line}: expected {len(header)} fields")
            for key, value in row.items():
                cols[key.strip()].append(value)
    return cols


def write_stats_csv(
    path: str | Path, plan_ids: Sequence[str], stats: Mapping[str, np.ndarray], active: np.ndarray | None = None
) -> None:
    """Write plan stats (channel/vertical as vocabulary indices, as the simulator keeps them) as a CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*INPUT_COLUMNS, ACTIVE])
        for i, pid in enumerate(plan_ids):
            row: list[Any] = [pid, CHANNELS[int(stats["channel"][i])], VERTICALS[int(stats["vertical"][i])]]
            row += [repr(float(stats[name][i])) for name in NUMERIC_STATS]
            row.append(1 if active is None or active[i] else 0)
            writer.writerow(row)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.allocator", description="Allocate today's remaining budget over ad plans."
    )
    parser.add_argument(
        "bundle", help=f"bundle folder (policy.onnx + manifest.json), or a fallback: {', '.join(FALLBACKS)}"
    )
    parser.add_argument("stats", help=f"CSV, one row per plan, columns {', '.join(INPUT_COLUMNS)} (+ optional active)")
    parser.add_argument("--budget", type=float, required=True, help="daily budget, currency")
    parser.add_argument("--hour", type=int, required=True, help="hour of day of the decision, 0..23")
    parser.add_argument("--budget-left", type=float, default=None, help="unspent budget today (default: --budget)")
    parser.add_argument("--day", type=int, default=0, help="0-based day of the planning period (default 0)")
    parser.add_argument(
        "--days",
        type=int,
        default=None,
        help="days in the planning period (default: the bundle's training episode, else 7)",
    )
    parser.add_argument("--previous", default=None, help="JSON of the previous allocation (for max_change)")
    args = parser.parse_args(argv)
    try:
        allocator = load_allocator(args.bundle)
        days = args.days
        if days is None:
            days = int(getattr(allocator, "manifest", {}).get("training", {}).get("days", 7))
        clock = Clock(
            hour=args.hour,
            day=args.day,
            days=days,
            daily_budget=args.budget,
            budget_left_today=args.budget if args.budget_left is None else args.budget_left,
        )
        previous = None
        if args.previous:
            prev = json.loads(Path(args.previous).read_text())
            left = prev["budget_left_today"]
            previous = {p["plan_id"]: (p["budget"] / left if left > 0 else 0.0) for p in prev["plans"]}
        allocation = allocator.allocate(read_stats_csv(args.stats), clock, previous)
    except (BundleError, AllocationInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(allocation.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
