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
  Loading validates every manifest field against the schema (:data:`SCHEMA_VERSION`; types, ranges,
  no unknown field), the hash of ``policy.onnx`` and that the bundle's feature layout is the one
  :mod:`envs.features` builds today; every run of the graph is checked before its shares are used
  (finite, non-negative, zero outside the plan mask, summing to 1 over the active plans).
- :class:`Heuristic`: a fallback that needs no bundle, ``proportional`` (shares proportional to
  smoothed deep value per cost) or ``uniform`` from :mod:`agents.heuristics` (NumPy only), so a
  service can keep allocating when no trained policy is deployed.

A bundle whose manifest has a ``head`` (schema 3; :mod:`agents.residual`) holds a *rank_residual*
policy: its graph outputs a ``tilt`` per plan, a multiplier on ``rank``'s worth, and the shares are
rank's fill to capacity (:class:`agents.heuristics.TiltedRank`, NumPy). The fill learns each plan's
capacity from the reporting hour by hour, so such a bundle is stateful: each ``Allocation`` carries
``state`` (``{"capacity": {plan_id: number or null}, "day": d, "hour": h}``), which the service passes
to the next call (``allocate(..., state=...)``; the CLI reads it from ``--previous``); a state passed
back to the hour that returned it is refused (:func:`check_state`). Without it the fill starts from
scratch (first hour of a deployment): every plan's capacity unknown, then learned again. A plan that
was funded and spent nothing gets capacity 0 and stays unfunded while the state is carried (``rank``'s
known limit); drop its entry to let it be tried again.

Corruption and tampering are different checks. The manifest's ``policy.sha256`` detects a graph
damaged after export (a bad copy, a truncated upload), but it sits in the same writable folder, so
whoever can swap the graph can rewrite the hash as well: it does not detect tampering. The bundle
digest (:func:`bundle_digest`: SHA-256 over the manifest and the graph) does, when it is *pinned*:
export writes it to :data:`DIGEST_FILE`, the deployment copies it into its own configuration and
passes it back (``Bundle.load(path, expected_digest=...)``, ``--expect-digest`` on the CLI); a bundle
with any other manifest or graph is then refused. :data:`DIGEST_FILE` itself is never read here: a
digest kept beside the bundle would only detect corruption again.

``plan_stats`` is one row per plan with the columns :data:`INPUT_COLUMNS`: ``plan_id`` and every
:data:`envs.features.STAT_NAMES` (the :data:`envs.features.VOCABULARIES` columns as names), plus the optional
``active`` flag (0 keeps a paused or not yet launched plan in its slot but gives it nothing; the
default is 1). It may be a pandas DataFrame, a list of dicts (one per plan) or a dict of columns.
Row order is the policy's slot order: keep it stable from hour to hour. Bad input raises
:class:`AllocationInputError` naming the column, the plan and the value; no allocation is returned.

The allocation gives each plan a share of what is left of today's budget and its budget
``share x budget left today`` (the platform paces a plan's budget over the rest of the day). Shares
follow the training env's action limits (min/max share, max change from ``previous_shares``) when the
bundle records any; budgets also respect its per-vertical compliance caps (what a cap withholds is
reported, not moved to other plans), exactly as the simulator applied them during training.

Sizes are bounded before anything is allocated: at most :data:`MAX_PLANS` plans (a stats CSV is read
row by row and refused at the first row past the allocator's limit), manifests, graphs and previous
allocations up to a fixed number of bytes, stats up to :data:`MAX_AMOUNT`.

CLI: ``python -m agents.allocator BUNDLE stats.csv --budget 50000 --hour 14 [--expect-digest HEX]``
prints the allocation as JSON (``BUNDLE`` may be ``proportional`` or ``uniform`` for a fallback);
``python -m agents.allocator digest BUNDLE`` prints a bundle's digest. Errors exit with status 2 and
one ``error:`` line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import numbers
import os
import re
import reprlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnxruntime as ort

from agents.heuristics import HEURISTICS, ParamsError, RankParams, TiltedRank
from envs.features import (
    CHANNELS,
    N_GLOBAL_FEATURES,
    N_PLAN_FEATURES,
    NUMERIC_STATS,
    STAT_COLUMNS,
    STAT_NAMES,
    VERTICALS,
    VOCABULARIES,
    Clock,
    build_observation,
    feature_names,
    observation_size,
)
from envs.shares import has_share_limits, project_shares, vertical_caps, withhold_over_caps

#: Version of the bundle layout this loader reads; :mod:`agents.export` writes it. Bump it when the
#: manifest or the graph's inputs/outputs change in a way an older loader would misread.
#: 2: the platform layer's reporting columns (status, goal, compensation_total) and their features.
#: 3: the optional ``head`` of a rank_residual policy (graph output ``tilt``, state carried between calls);
#: a bundle without ``head`` reads as in 2, and 2 is still served.
SCHEMA_VERSION = 3
#: What export writes for a bundle without ``head`` (a softmax policy): loaders since version 2 read it.
PLAIN_SCHEMA_VERSION = 2
#: Why each older schema cannot be served (a policy trained on another observation layout).
_RETIRED_SCHEMAS = {
    1: "its policy was trained before the platform layer: its observation has no status, goal or "
    "compensation features (28 per plan, today's has more); re-train and export it with this version",
}
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.onnx"
EXAMPLE_FILE = "example_stats.csv"
#: Export writes the bundle digest here for the deployment to pin; the loader never trusts it.
DIGEST_FILE = "bundle.sha256"
#: Graph input and output names.
OBS_INPUT, MASK_INPUT, SHARES_OUTPUT = "obs", "mask", "shares"
#: The output of a rank_residual graph (manifest ``head``): each slot's multiplier on rank's worth.
TILT_OUTPUT = "tilt"
#: Largest ``head.scale`` (the tilt is exp(scale x action), action in [-1, 1]): e^50 spans any worth ratio.
MAX_TILT_SCALE = 50.0

# Bounds: the simulator's own (envs.scenario's MAX_PLANS, MAX_DAYS and MAX_MONEY; a test checks that they
# agree). Not imported from there: envs.scenario would bring PyYAML and the preset folder into the service.
MAX_PLANS = 10_000  # plans of one allocation, and a bundle's max_plans
MAX_DAYS = 366  # days of a planning period
MAX_AMOUNT = 1e12  # any stat, currency or count, and the daily budget: above it is a unit or parsing error
# A manifest for MAX_PLANS plans is ~40 MB (280,005 features of ~134 bytes); a graph above protobuf's 2 GiB
# limit keeps its weights in external files, which this loader does not read.
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_POLICY_BYTES = 2**31
MAX_PREVIOUS_BYTES = 16 * 2**20  # a previous allocation of MAX_PLANS plans is ~1 MB
MAX_CSV_LINE_BYTES = 2**16  # a plan row is ~600 bytes
#: How far a graph's shares may sum from 1 (its float64 softmax is off by ~1e-15).
SHARE_TOLERANCE = 1e-6

PLAN_ID = "plan_id"
ACTIVE = "active"
#: Required input columns, in the order the CSV example writes them; ``active`` is optional.
INPUT_COLUMNS: tuple[str, ...] = (PLAN_ID, *STAT_NAMES)
OPTIONAL_COLUMNS: tuple[str, ...] = (ACTIVE,)
_FLAG_COLUMNS = (*(f.name for f in STAT_COLUMNS if f.unit == "flag"), ACTIVE)
_WINDOWS = tuple(name.removeprefix("spend_") for name in STAT_NAMES if name.startswith("spend_"))
#: ``(smaller, larger)`` stats that a plan's funnel orders: a click needs an impression and a conversion a
#: click in the same window (the simulator attributes both to the step of the impression); a deep event
#: matures days after its conversion, so only the whole period's totals are ordered.
FUNNEL: tuple[tuple[str, str], ...] = (
    *((f"clicks_{w}", f"impressions_{w}") for w in _WINDOWS),
    *((f"conversions_{w}", f"clicks_{w}") for w in _WINDOWS),
    ("deep_events_total", "conversions_total"),
)
#: Heuristics usable without a bundle (``allocate`` from the current stats alone).
FALLBACKS: tuple[str, ...] = ("proportional", "uniform")
#: Bundles that ship with the package (``agents/bundles/<name>``), by name, with their pinned digest:
#: ``load_allocator("generalist")`` loads one and refuses it if its manifest or graph differs from what
#: was shipped. ``python -m experiments.ship`` writes a bundle there and prints the digest to pin here.
SHIPPED_DIR = Path(__file__).resolve().parent / "bundles"
SHIPPED_BUNDLES: dict[str, str] = {"generalist": "91973aff58e37826a76452829a7d46aae2619bdadb163f7ecaf1d0d9cf05f175"}


class BundleError(ValueError):
    """A bundle cannot be used: missing or oversized file, a manifest outside the schema, newer schema, hash or
    pinned digest mismatch, foreign feature layout, or a graph whose output is not a vector of shares."""


class AllocationInputError(ValueError):
    """Plan stats, clock or previous allocation that the allocator refuses to allocate from."""


@dataclass(frozen=True)
class PlanTable:
    """Validated plan stats: what :func:`envs.features.build_observation` takes, plus ids and flags."""

    plan_ids: tuple[str, ...]
    stats: dict[str, np.ndarray]  # every STAT_NAMES entry, (n_plans,); VOCABULARIES columns as indices
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
    #: What a stateful allocator (a rank_residual bundle) carries to the next call: pass it back as
    #: ``allocate(..., state=...)`` (the CLI reads it from ``--previous``); None for the others.
    state: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "allocator": self.allocator,
            **self.details,
            "budget_left_today": self.budget_left_today,
            "withheld": self.withheld,
            "plans": [
                {"plan_id": pid, "share": float(s), "budget": float(b)}
                for pid, s, b in zip(self.plan_ids, self.shares, self.budgets, strict=True)
            ],
        }
        if self.state is not None:
            out["state"] = self.state
        return out


# -------------------------------------------------------------------------------------------------
# Files and JSON documents: bounded reads, strict JSON, a small schema checker


def _read_bounded(path: Path, limit: int, what: str, error: type[ValueError]) -> bytes:
    """The bytes of ``path``, refused (``error``) when it holds more than ``limit``: never read past it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise error(f"{path} is {max(size, len(data)):,} bytes; {what} is at most {limit:,} bytes")
    return data


class _JSONRefusal(ValueError):
    """Valid JSON that this loader refuses: NaN/Infinity, a key twice in one object."""


def _no_constant(name: str) -> Any:
    raise _JSONRefusal(f"{name} is not allowed (JSON has no NaN or infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _JSONRefusal(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _load_json(data: bytes, source: str | Path, error: type[ValueError]) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys (which of two values would a reader take?)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except _JSONRefusal as exc:
        raise error(f"{source}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of too many digits, deep nesting
        raise error(f"{source} is not valid JSON: {exc}") from None


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_number(value: Any, lo: float, hi: float, lo_open: bool = False) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return False
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # a huge int has no float
        return False
    return (lo < value if lo_open else lo <= value) and value <= hi


@dataclass(frozen=True)
class _Field:
    """One field of a JSON object: what it must be (in words, for the error) and the test."""

    expected: str
    valid: Callable[[Any], bool]
    required: bool = True


_STRING = _Field("a string", lambda v: isinstance(v, str), required=False)
_OPTIONAL_OBJECT = _Field("an object", lambda v: isinstance(v, dict), required=False)


def _check_fields(
    obj: Any,
    fields: Mapping[str, _Field],
    where: str,
    source: str | Path,
    error: type[ValueError],
    *,
    closed: bool,
) -> None:
    """Every field of ``obj`` against ``fields`` (``where``: the path of ``obj`` in the document, ``a.b.``).

    :param closed: refuse fields that ``fields`` does not name.
    """
    if not isinstance(obj, dict):
        what = f"field {where.rstrip('.')!r}" if where else "the document"
        raise error(f"{source}: {what} is {reprlib.repr(obj)}; expected a JSON object")
    for name, spec in fields.items():
        if name not in obj:
            if spec.required:
                raise error(f"{source}: field {where + name!r} is missing; expected {spec.expected}")
        elif not spec.valid(obj[name]):
            raise error(f"{source}: field {where + name!r} is {reprlib.repr(obj[name])}; expected {spec.expected}")
    unknown = [k for k in obj if k not in fields]
    if closed and unknown:
        raise error(
            f"{source}: unknown field(s) {unknown[:10]}{' in ' + where.rstrip('.') if where else ''}; "
            f"schema version {SCHEMA_VERSION} has {list(fields)}"
        )


def _caps_problem(caps: Any, name: str) -> str | None:
    """What is wrong with compliance caps (vertical name -> max share of the budget, in (0, 1]), or None."""
    if not isinstance(caps, Mapping):
        return f"field {name!r} is {reprlib.repr(caps)}; expected an object of vertical name -> max share in (0, 1]"
    for vertical, cap in caps.items():
        if vertical not in VERTICALS:
            return f"field {name!r} names vertical {vertical!r}; expected one of {list(VERTICALS)}"
        if not _is_number(cap, 0.0, 1.0, lo_open=True):
            return f"field {name + '.' + vertical!r} is {reprlib.repr(cap)}; expected a number in (0, 1]"
    return None


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
    except (TypeError, ValueError, OverflowError):
        raise AllocationInputError(f"column {column!r} of plan {plan!r} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise AllocationInputError(f"column {column!r} of plan {plan!r} is {value!r}; expected a finite number")
    return x


def parse_plan_stats(plan_stats: Any, max_plans: int = MAX_PLANS, why: str = "") -> PlanTable:
    """Validate a table of per-plan reporting stats and convert it for :func:`build_observation`.

    :raises AllocationInputError: a missing or unexpected column, no plans or more than ``max_plans``,
        a duplicate or empty ``plan_id``, an unknown channel or vertical, a value that is not a finite
        number, a negative count or amount or one above :data:`MAX_AMOUNT`, a non-positive ``target_cpa``,
        a flag other than 0/1, a funnel out of order (:data:`FUNNEL`: more clicks than impressions, ...).
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
    if n > max_plans:
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
    for column, vocab in VOCABULARIES.items():
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
        if column in _FLAG_COLUMNS:
            bad, expected = (values != 0) & (values != 1), "0 or 1"
        elif column == "target_cpa":
            bad, expected = (values <= 0) | (values > MAX_AMOUNT), f"in (0, {MAX_AMOUNT:.0e}]"
        else:
            bad, expected = (values < 0) | (values > MAX_AMOUNT), f"in [0, {MAX_AMOUNT:.0e}]"
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AllocationInputError(
                f"column {column!r} of plan {plan_ids[i]!r} is {float(values[i])!r}; expected {expected}"
            )
        stats[column] = values
    for smaller, larger in FUNNEL:
        bad = stats[smaller] > stats[larger]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AllocationInputError(
                f"column {smaller!r} of plan {plan_ids[i]!r} is {float(stats[smaller][i])!r}, above {larger!r} = "
                f"{float(stats[larger][i])!r}; expected at most {larger} (swapped columns?)"
            )
    active = stats.pop(ACTIVE, np.ones(n)) > 0.5
    return PlanTable(plan_ids=plan_ids, stats=stats, active=active)


def check_clock(clock: Clock) -> Clock:
    """The clock, if it describes a decision the observation can encode; else :class:`AllocationInputError`."""
    problems = []
    if not (isinstance(clock.hour, numbers.Integral) and 0 <= clock.hour <= 23):
        problems.append(f"hour must be an integer in 0..23, got {clock.hour!r}")
    if not (isinstance(clock.days, numbers.Integral) and 1 <= clock.days <= MAX_DAYS):
        problems.append(f"days must be an integer in 1..{MAX_DAYS}, got {clock.days!r}")
    elif not (isinstance(clock.day, numbers.Integral) and 0 <= clock.day < clock.days):
        problems.append(f"day must be an integer in 0..days-1 = {clock.days - 1}, got {clock.day!r}")
    budget = clock.daily_budget
    if not (isinstance(budget, numbers.Real) and math.isfinite(budget) and 0 < budget <= MAX_AMOUNT):
        problems.append(f"daily_budget must be a positive number <= {MAX_AMOUNT:.0e}, got {budget!r}")
    left = clock.budget_left_today
    if not (isinstance(left, numbers.Real) and math.isfinite(left) and left >= 0):
        problems.append(f"budget_left_today must be a number >= 0, got {left!r}")
    elif not problems and left > budget * (1 + 1e-9):
        problems.append(f"budget_left_today = {left} exceeds daily_budget = {budget}")
    if problems:
        raise AllocationInputError("clock: " + "; ".join(problems))
    return clock


def check_previous_shares(previous_shares: Mapping[str, float], plan_ids: Sequence[str]) -> np.ndarray:
    """(n_plans,) the previous step's shares of ``plan_ids`` (0 for a plan not in it), each in [0, 1]."""
    previous = np.zeros(len(plan_ids))
    for i, pid in enumerate(plan_ids):
        share = previous_shares.get(pid, 0.0)
        if not _is_number(share, 0.0, 1.0 + SHARE_TOLERANCE):
            raise AllocationInputError(
                f"previous share {reprlib.repr(share)} of plan {pid!r}; expected a number in [0, 1] "
                "(its budget / budget_left_today of the previous allocation)"
            )
        previous[i] = share
    if previous.sum() > 1.0 + SHARE_TOLERANCE:
        raise AllocationInputError(f"previous shares sum to {previous.sum():.6g}; expected at most 1")
    return previous


def check_state(state: Any, plan_ids: Sequence[str], clock: Clock | None = None) -> np.ndarray | None:
    """(n_plans,) the capacity estimates a rank_residual bundle's previous call returned (``inf``: not yet
    known, for a plan absent from it or given ``null``), or None without a state. Plans in the state but
    not in this call are dropped (a plan paused or removed). The state names the day and hour of the call
    that returned it; one passed back to that same day and hour (a retried call given its own answer's
    state) is refused: the fill would learn that hour's reporting twice."""
    if state is None:
        return None
    if (
        not isinstance(state, Mapping)
        or set(state) != {"capacity", "day", "hour"}
        or not isinstance(state["capacity"], Mapping)
        or not _is_int(state["day"], 0, MAX_DAYS)
        or not _is_int(state["hour"], 0, 23)
    ):
        raise AllocationInputError(
            "state must be the previous allocation's state, an object {'capacity': {plan_id: number or null}, "
            f"'day': int, 'hour': int}}, got {reprlib.repr(state)}"
        )
    if clock is not None and (state["day"], state["hour"]) == (clock.day, clock.hour):
        raise AllocationInputError(
            f"state was returned by the call for day {clock.day}, hour {clock.hour}, which this call repeats: "
            "pass the state of the call before it (the fill would learn this hour's reporting twice)"
        )
    capacity = np.full(len(plan_ids), np.inf)
    for i, pid in enumerate(plan_ids):
        value = state["capacity"].get(pid)
        if value is None:
            continue
        # No upper bound but finiteness: capacity is spend per unit of traffic share, which can exceed any
        # currency bound on a thin hour (spend / 0.004); the loader wrote it itself.
        if not _is_number(value, 0.0, sys.float_info.max):
            raise AllocationInputError(
                f"state capacity {reprlib.repr(value)} of plan {pid!r}; expected null (not known) or a finite "
                "number >= 0 (spend per unit of traffic, as the previous allocation returned it)"
            )
        capacity[i] = value
    return capacity


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
    plan_limit: int = MAX_PLANS  # most plans one allocation may cover
    plan_limit_why: str = ""
    limits = ShareLimits()
    default_days = 7  # days of the planning period when the caller gives none

    def parse(self, plan_stats: Any) -> PlanTable:
        """Validate ``plan_stats`` for this allocator (see :func:`parse_plan_stats`)."""
        return parse_plan_stats(plan_stats, self.plan_limit, self.plan_limit_why)

    @abstractmethod
    def shares(self, table: PlanTable, clock: Clock) -> np.ndarray:
        """Shares over ``table``'s plans before limits and caps (sum 1 over active plans)."""

    def decide(self, table: PlanTable, clock: Clock, state: Any) -> tuple[np.ndarray, dict[str, Any] | None]:
        """``(shares, next state)``; a stateless allocator ignores ``state`` and returns None."""
        return self.shares(table, clock), None

    def allocate(
        self,
        plan_stats: Any,
        clock: Clock,
        previous_shares: Mapping[str, float] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> Allocation:
        """Budgets for the plans in ``plan_stats`` at ``clock``.

        :param plan_stats: one row per plan, columns :data:`INPUT_COLUMNS` (+ optional ``active``).
        :param clock: hour, day, days, daily budget and budget left today.
        :param previous_shares: plan_id -> the share the previous step's allocation gave it after caps
            (``Allocation.budgets / budget_left_today``); only used when the bundle has ``max_change``.
        :param state: the previous call's ``Allocation.state`` (a rank_residual bundle's capacity
            estimates; None on the first call of a deployment, which then learns them anew); stateless
            allocators ignore it.
        :raises AllocationInputError: on any input problem (no allocation is made).
        :raises BundleError: when a bundle's graph returns something other than shares.
        """
        table = self.parse(plan_stats)
        check_clock(clock)
        previous = None if previous_shares is None else check_previous_shares(previous_shares, table.plan_ids)
        raw, next_state = self.decide(table, clock, state)
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
            state=next_state,
        )

    def details(self) -> dict[str, Any]:
        return {}


class Heuristic(TableAllocator):
    """A research heuristic (:mod:`agents.heuristics`, NumPy only) behind the production call: the fallback.

    Only rules that decide from the current stats alone are offered (:data:`FALLBACKS`): a service
    that runs once an hour keeps no episode history. Their default knobs are the research configs'
    (``conf/agent/<name>.yaml``). ``vertical_caps`` (vertical name -> max share in (0, 1]) are applied
    as the bundle's compliance caps are.
    """

    def __init__(self, name: str = "proportional", vertical_caps: Mapping[str, float] | None = None) -> None:
        if name not in FALLBACKS:
            raise ValueError(f"fallback allocator must be one of {list(FALLBACKS)}, got {name!r}")
        problem = _caps_problem(dict(vertical_caps or {}), "vertical_caps")
        if problem:
            raise ValueError(problem)
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


def _read_bundle(path: Path) -> tuple[bytes, bytes]:
    """``(manifest, graph)`` bytes of a bundle folder, each within its size bound."""
    manifest_path, policy_path = path / MANIFEST_FILE, path / POLICY_FILE
    for p in (manifest_path, policy_path):
        if not p.is_file():
            raise BundleError(f"{p} is missing; a bundle folder holds {MANIFEST_FILE} and {POLICY_FILE}")
    return (
        _read_bounded(manifest_path, MAX_MANIFEST_BYTES, "a bundle's manifest", BundleError),
        _read_bounded(policy_path, MAX_POLICY_BYTES, "a bundle's graph", BundleError),
    )


def _digest(manifest: bytes, policy: bytes) -> str:
    # Each file is framed by its name and length, so no two different bundles give the same byte stream.
    digest = hashlib.sha256(b"budgetshift bundle\0")
    for name, data in ((MANIFEST_FILE, manifest), (POLICY_FILE, policy)):
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def bundle_digest(path: str | Path) -> str:
    """The SHA-256 digest (hex) of a bundle: its manifest and graph, the two files the loader reads.

    Pin it where the bundle cannot write (a deployment config) and pass it as ``expected_digest``: that
    detects tampering, which the manifest's own hash of the graph cannot (see the module docstring).
    """
    return _digest(*_read_bundle(Path(path)))


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _pinned(expected_digest: str) -> str:
    pinned = str(expected_digest).strip().lower()
    if not _HEX64.fullmatch(pinned):
        raise BundleError(f"expected_digest must be 64 hex digits (a SHA-256 bundle digest), got {expected_digest!r}")
    return pinned


#: Fields of manifest.json whose check needs nothing else; read first.
_HEAD_FIELDS = {
    "schema_version": _Field(f"an integer in 1..{SCHEMA_VERSION}", lambda v: _is_int(v, 1, sys.maxsize)),
    "max_plans": _Field(f"an integer in 1..{MAX_PLANS:,}", lambda v: _is_int(v, 1, MAX_PLANS)),
}
_POLICY_FIELDS = {
    "file": _Field(repr(POLICY_FILE), lambda v: v == POLICY_FILE, required=False),
    "sha256": _Field("64 hex digits (the graph's SHA-256)", lambda v: bool(_HEX64.fullmatch(str(v)))),
}
_SHARE = "a number in [0, 1]"
_LIMIT_FIELDS = {
    "min_share": _Field(_SHARE, lambda v: _is_number(v, 0.0, 1.0)),
    "max_share": _Field(_SHARE, lambda v: _is_number(v, 0.0, 1.0)),
    "max_change": _Field(f"null or {_SHARE}", lambda v: v is None or _is_number(v, 0.0, 1.0), required=False),
}
_TRAINING_FIELDS = {"days": _Field(f"an integer in 1..{MAX_DAYS}", lambda v: _is_int(v, 1, MAX_DAYS), required=False)}
_FEATURE_FIELDS = {
    "index": _Field("an integer >= 0", lambda v: _is_int(v, 0, sys.maxsize), required=False),
    "name": _Field("a string", lambda v: isinstance(v, str)),
    "meaning": _STRING,
    "unit": _STRING,
}


def _manifest_fields(max_plans: int) -> dict[str, _Field]:
    """Every field of schema version :data:`SCHEMA_VERSION`, once ``max_plans`` is known to be valid."""
    size = observation_size(max_plans)
    return {
        **_HEAD_FIELDS,
        "created_utc": _STRING,
        "algorithm": _STRING,
        "policy_class": _STRING,
        "policy_kind": _Field("one of ['mlp', 'set']", lambda v: v in ("mlp", "set"), required=False),
        "plans_served": _Field(f"an integer in 1..{max_plans}", lambda v: _is_int(v, 1, max_plans), required=False),
        "n_plan_features": _Field(
            str(N_PLAN_FEATURES), lambda v: _is_int(v, N_PLAN_FEATURES, N_PLAN_FEATURES), required=False
        ),
        "n_global_features": _Field(
            str(N_GLOBAL_FEATURES), lambda v: _is_int(v, N_GLOBAL_FEATURES, N_GLOBAL_FEATURES), required=False
        ),
        "observation_size": _Field(f"{size} (max_plans={max_plans})", lambda v: _is_int(v, size, size)),
        "features": _Field(f"a list of {size} feature objects", lambda v: isinstance(v, list)),
        "input": _OPTIONAL_OBJECT,
        "graph": _OPTIONAL_OBJECT,
        "temperature": _Field(
            "a positive number", lambda v: _is_number(v, 0.0, math.inf, lo_open=True), required=False
        ),
        "action_limits": _Field(
            "null or an object {min_share, max_share, max_change}",
            lambda v: v is None or isinstance(v, dict),
            required=False,
        ),
        "compliance_caps": _Field(
            "an object of vertical name -> max share", lambda v: isinstance(v, dict), required=False
        ),
        "training": _OPTIONAL_OBJECT,
        "versions": _OPTIONAL_OBJECT,
        "policy": _Field("an object {file, sha256}", lambda v: isinstance(v, dict)),
        "parity": _OPTIONAL_OBJECT,
        "example": _OPTIONAL_OBJECT,
        "head": _Field("an object (a rank_residual policy's fill)", lambda v: isinstance(v, dict), required=False),
    }


_RESIDUAL_HEAD_FIELDS = {
    "kind": _Field("'rank_residual'", lambda v: v == "rank_residual"),
    "scale": _Field(f"a number in (0, {MAX_TILT_SCALE:g}]", lambda v: _is_number(v, 0.0, MAX_TILT_SCALE, lo_open=True)),
    "rank": _Field("an object of rank's knobs (agents.heuristics.RankParams)", lambda v: isinstance(v, dict)),
    "channels": _Field(f"the channel vocabulary {list(CHANNELS)}", lambda v: v == list(CHANNELS)),
    "traffic": _Field("one list of step shares per channel", lambda v: isinstance(v, list)),
    "note": _STRING,
}


@dataclass(frozen=True)
class ResidualHead:
    """A rank_residual bundle's fill: rank's knobs, the tilt's scale and each channel's traffic by step."""

    params: RankParams
    scale: float
    traffic: np.ndarray  # (len(CHANNELS), steps_per_day), rows sum to 1

    @property
    def hours_per_step(self) -> int:
        return 24 // self.traffic.shape[1]


def residual_head(head: Any, source: str | Path) -> ResidualHead:
    """The validated ``head`` of a manifest; :class:`BundleError` naming the field otherwise."""
    _check_fields(head, _RESIDUAL_HEAD_FIELDS, "head.", source, BundleError, closed=True)
    knobs, expected = head["rank"], [f.name for f in fields(RankParams)]
    if sorted(knobs) != sorted(expected):
        raise BundleError(f"{source}: field 'head.rank' has knobs {sorted(knobs)}; expected exactly {expected}")
    for name, value in knobs.items():
        if not _is_number(value, -MAX_AMOUNT, MAX_AMOUNT):
            raise BundleError(f"{source}: field 'head.rank.{name}' is {reprlib.repr(value)}; expected a finite number")
    try:
        params = RankParams(**knobs)
    except ParamsError as exc:
        raise BundleError(f"{source}: field 'head.rank' holds no valid rank knobs: {exc}") from None
    rows = head["traffic"]
    steps = len(rows[0]) if rows and isinstance(rows[0], list) else 0
    if not (
        len(rows) == len(CHANNELS)
        and steps > 0
        and 24 % steps == 0
        and all(
            isinstance(r, list) and len(r) == steps and all(_is_number(x, 0.0, 1.0, lo_open=True) for x in r)
            for r in rows
        )
    ):
        raise BundleError(
            f"{source}: field 'head.traffic' must hold {len(CHANNELS)} rows (one per channel) of the same "
            "number of steps per day (a divisor of 24), each entry a number in (0, 1] (capacities are "
            "spend per unit of traffic)"
        )
    traffic = np.array(rows, dtype=np.float64)
    sums = traffic.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > SHARE_TOLERANCE):
        bad = int(np.flatnonzero(np.abs(sums - 1.0) > SHARE_TOLERANCE)[0])
        raise BundleError(
            f"{source}: field 'head.traffic' row {bad} ({CHANNELS[bad]}) sums to {sums[bad]:.6g}; expected 1 "
            "(the channel's share of the day's traffic, step by step)"
        )
    return ResidualHead(params=params, scale=float(head["scale"]), traffic=traffic)


def check_manifest(manifest: Any, source: str | Path) -> dict[str, Any]:
    """``manifest`` if it follows the schema of :data:`SCHEMA_VERSION` (every field: type, range, no unknown
    field), and describes the observation layout :mod:`envs.features` builds today; else :class:`BundleError`."""
    _check_fields(manifest, _HEAD_FIELDS, "", source, BundleError, closed=False)
    if manifest["schema_version"] in _RETIRED_SCHEMAS:
        raise BundleError(
            f"{source}: schema_version {manifest['schema_version']} is no longer served: "
            f"{_RETIRED_SCHEMAS[manifest['schema_version']]}"
        )
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(
            f"{source}: schema_version {manifest['schema_version']} is newer than this loader reads "
            f"({SCHEMA_VERSION}); upgrade budgetshift to load this bundle"
        )
    max_plans = manifest["max_plans"]
    _check_fields(manifest, _manifest_fields(max_plans), "", source, BundleError, closed=True)
    _check_fields(manifest["policy"], _POLICY_FIELDS, "policy.", source, BundleError, closed=True)
    _check_fields(manifest.get("training", {}), _TRAINING_FIELDS, "training.", source, BundleError, closed=False)
    limits = manifest.get("action_limits")
    if limits is not None:
        _check_fields(limits, _LIMIT_FIELDS, "action_limits.", source, BundleError, closed=True)
        if limits["min_share"] > limits["max_share"]:
            raise BundleError(
                f"{source}: field 'action_limits.min_share' is {limits['min_share']}; expected at most "
                f"action_limits.max_share = {limits['max_share']}"
            )
    problem = _caps_problem(manifest.get("compliance_caps", {}), "compliance_caps")
    if problem:
        raise BundleError(f"{source}: {problem}")
    if "head" in manifest:
        if manifest["schema_version"] < 3:
            raise BundleError(
                f"{source}: field 'head' needs schema_version 3, the manifest says {manifest['schema_version']}"
            )
        residual_head(manifest["head"], source)
    for i, feature in enumerate(manifest["features"]):
        _check_fields(feature, _FEATURE_FIELDS, f"features[{i}].", source, BundleError, closed=True)
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
            f"{source}: the bundle's observation layout ({len(names)} features) differs from "
            f"envs.features today ({len(expected)} for max_plans={max_plans}) at position {where}: "
            f"{got!r} vs {want!r}; re-export the policy with this version"
        )
    return manifest


class Bundle(TableAllocator):
    """An exported policy: ``policy.onnx`` run by ONNX Runtime, described by ``manifest.json``.

    Build it with :meth:`load`, which validates the bundle; ``digest`` is its :func:`bundle_digest`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], session: ort.InferenceSession, digest: str) -> None:
        self.path = path
        self.manifest = manifest
        self.session = session
        self.digest = digest
        self.max_plans = manifest["max_plans"]
        # A flat MLP only ever saw the training portfolio's plans in its first slots (the rest were padding);
        # a set policy scores every slot with the same network.
        self.plan_limit = manifest.get("plans_served", self.max_plans)
        self.plan_limit_why = (
            f" (max_plans={self.max_plans})"
            if self.plan_limit == self.max_plans
            else f": a {manifest.get('policy_kind', 'mlp')} policy trained on {self.plan_limit} plans left slots "
            f"{self.plan_limit}..{self.max_plans - 1} empty in training (a set-policy bundle serves up to max_plans)"
        )
        self.width = manifest["observation_size"]
        self.residual = None if "head" not in manifest else residual_head(manifest["head"], path / MANIFEST_FILE)
        self.output = SHARES_OUTPUT if self.residual is None else TILT_OUTPUT
        self.name = f"bundle:{manifest.get('algorithm', 'policy')}"
        self.default_days = manifest.get("training", {}).get("days", TableAllocator.default_days)
        lim = manifest.get("action_limits") or {}
        self.limits = ShareLimits(
            min_share=float(lim.get("min_share", 0.0)),
            max_share=float(lim.get("max_share", 1.0)),
            max_change=None if lim.get("max_change") is None else float(lim["max_change"]),
            vertical_caps={k: float(v) for k, v in manifest.get("compliance_caps", {}).items()},
        )

    @classmethod
    def load(cls, path: str | Path, *, expected_digest: str | None = None) -> Bundle:
        """Open a bundle folder: its pinned digest (if given), manifest schema, graph hash and layout.

        :param expected_digest: the :func:`bundle_digest` the deployment pinned (hex); a bundle with any
            other manifest or graph is refused. Without it, tampering goes unnoticed: the manifest's hash
            of the graph only detects corruption.
        :raises BundleError: with what is wrong and what was expected.
        """
        path = Path(path)
        pinned = None if expected_digest is None else _pinned(expected_digest)
        manifest_path, policy_path = path / MANIFEST_FILE, path / POLICY_FILE
        # The checks and ONNX Runtime all see these bytes: nothing is re-read after it was checked.
        manifest_bytes, policy_bytes = _read_bundle(path)
        digest = _digest(manifest_bytes, policy_bytes)
        if pinned is not None and digest != pinned:
            raise BundleError(
                f"{path} has bundle digest {digest}, expected the pinned {pinned}: {path} is not the bundle "
                "this deployment pinned (its manifest or graph changed after export); refusing to load it"
            )
        manifest = check_manifest(_load_json(manifest_bytes, manifest_path, BundleError), manifest_path)
        expected_hash = manifest["policy"]["sha256"]
        actual_hash = hashlib.sha256(policy_bytes).hexdigest()
        if actual_hash != expected_hash:
            raise BundleError(
                f"{policy_path} has sha256 {actual_hash}, the manifest says {expected_hash}: the "
                "file was modified or corrupted after export; refusing to load it"
            )
        max_plans, width = manifest["max_plans"], manifest["observation_size"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one hourly decision is tiny; threads only add jitter
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(policy_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise BundleError(f"ONNX Runtime cannot load {policy_path}: {exc}") from exc
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = {o.name: o.shape for o in session.get_outputs()}
        output = SHARES_OUTPUT if "head" not in manifest else TILT_OUTPUT
        if set(inputs) != {OBS_INPUT, MASK_INPUT} or output not in outputs:
            raise BundleError(
                f"{policy_path}: expected inputs {OBS_INPUT!r}, {MASK_INPUT!r} and output "
                f"{output!r}, got inputs {list(inputs)} and outputs {list(outputs)}"
            )
        if inputs[OBS_INPUT][-1] != width or inputs[MASK_INPUT][-1] != max_plans:
            raise BundleError(
                f"{policy_path}: graph takes obs {inputs[OBS_INPUT]} and mask {inputs[MASK_INPUT]}, "
                f"the manifest says width {width} and max_plans {max_plans}"
            )
        return cls(path, manifest, session, digest)

    def _run(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The graph's raw output for ``(batch, width)`` observations and ``(batch, max_plans)`` masks."""
        obs = np.asarray(obs, dtype=np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.width:
            raise AllocationInputError(f"observation must have shape (batch, {self.width}), got {obs.shape}")
        if mask.shape != (obs.shape[0], self.max_plans):
            raise AllocationInputError(f"mask must have shape ({obs.shape[0]}, {self.max_plans}), got {mask.shape}")
        if not np.all(np.isfinite(obs)):
            raise AllocationInputError("observation contains NaN or inf")
        (shares,) = self.session.run([self.output], {OBS_INPUT: obs, MASK_INPUT: mask})
        if shares.shape != mask.shape:
            raise BundleError(
                f"{self.path / POLICY_FILE} returned {self.output} of shape {shares.shape} for {mask.shape[0]} "
                f"observation(s); expected {mask.shape}"
            )
        return shares.astype(np.float64)

    def _refuse_entries(self, checks: Sequence[tuple[np.ndarray, str]], plan_ids: Sequence[str] | None) -> None:
        """Raise :class:`BundleError` at the first ``(bad, what)`` whose ``(batch, max_plans)`` mask has an entry,
        naming its row's bad slots (``plan_ids`` name the slots of a single decision)."""
        for bad, what in checks:
            if not bad.any():
                continue
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            slots = np.flatnonzero(bad[row])
            if plan_ids is None:
                where = f"slot(s) {slots[:10].tolist()} of observation {row}"
            else:
                named = [plan_ids[i] for i in slots if i < len(plan_ids)][:10]
                padding = [int(i) for i in slots if i >= len(plan_ids)][:10]
                where = " and ".join(
                    [f"plan(s) {named}"] * bool(named) + [f"padding slot(s) {padding}"] * bool(padding)
                )
            raise BundleError(f"{self.path / POLICY_FILE} returned {what} for {where}; refusing to allocate")

    def _check_output(self, shares: np.ndarray, active: np.ndarray, plan_ids: Sequence[str] | None) -> None:
        """Refuse graph output that is not a vector of shares per row: finite, >= 0, 0 outside the mask, sum 1
        over the mask (0 when nothing is active). ``plan_ids`` name the slots of a single decision."""
        self._refuse_entries(
            (
                (~np.isfinite(shares), "NaN or infinite share(s)"),
                (shares < 0, "negative share(s)"),
                (~active & (shares != 0), "non-zero share(s) outside the plan mask"),
            ),
            plan_ids,
        )
        source = self.path / POLICY_FILE
        totals = shares.sum(axis=1)
        expected = active.any(axis=1).astype(np.float64)
        off = np.abs(totals - expected) > SHARE_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            of = "" if plan_ids is not None else f" of observation {row}"
            raise BundleError(
                f"{source} returned shares{of} that sum to {totals[row]:.6g} over the active plans; expected "
                f"{expected[row]:g} (within {SHARE_TOLERANCE:g}); refusing to allocate"
            )

    def policy_shares(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run the graph: ``(batch, width)`` raw observations and ``(batch, max_plans)`` masks -> checked shares.

        :raises BundleError: the graph returned something other than shares (see :meth:`_check_output`).
        """
        if self.residual is not None:
            raise BundleError(
                f"{self.path} is a rank_residual bundle: its graph gives a tilt (policy_tilt), not shares"
            )
        shares = self._run(obs, mask)
        self._check_output(shares, np.asarray(mask) > 0.5, None)
        return shares

    def policy_tilt(self, obs: np.ndarray, mask: np.ndarray, plan_ids: Sequence[str] | None = None) -> np.ndarray:
        """A rank_residual graph's tilt for ``(batch, width)`` observations and ``(batch, max_plans)`` masks:
        finite and positive on the mask, 0 outside it, else :class:`BundleError`."""
        if self.residual is None:
            raise BundleError(f"{self.path} is a softmax bundle: its graph gives shares (policy_shares), not a tilt")
        tilt = self._run(obs, mask)
        active = np.asarray(mask) > 0.5
        self._refuse_entries(
            (
                (~np.isfinite(tilt), "NaN or infinite tilt(s)"),
                (active & (tilt <= 0), "non-positive tilt(s) on active plans"),
                (~active & (tilt != 0), "non-zero tilt(s) outside the plan mask"),
            ),
            plan_ids,
        )
        return tilt

    def decide(self, table: PlanTable, clock: Clock, state: Any) -> tuple[np.ndarray, dict[str, Any] | None]:
        """A softmax bundle: the graph's shares. A rank_residual bundle: the graph's tilt on rank's worth,
        then rank's fill from the capacity estimates carried in ``state`` (:func:`check_state`), exactly as
        :class:`agents.residual.RankResidualEnv` ran it in training; returns the updated estimates."""
        head = self.residual
        if head is None:
            return self.shares(table, clock), None
        capacity = check_state(state, table.plan_ids, clock)
        obs, mask = self.observe(table, clock)
        tilt = self.policy_tilt(obs[None], mask[None], table.plan_ids)[0]
        n_plans, steps_per_day = len(table.active), head.traffic.shape[1]
        rank = TiltedRank(head.params)
        # t > 0 lets rank learn from the reporting's last step (nothing to learn where no budget was given);
        # t mod steps_per_day is the step of the day, as in the env, whose episodes start at hour 0.
        rank.start(head.traffic, n_plans, capacity, t=clock.hour // head.hours_per_step + steps_per_day)
        rank.vertical_cap = vertical_caps(self.limits.vertical_caps)
        rank.tilt = tilt[:n_plans]
        shares = rank.allocate(table.stats, clock, table.active)
        learned = zip(table.plan_ids, rank.capacity, strict=True)
        capacity = {pid: float(c) if math.isfinite(c) else None for pid, c in learned}
        return shares, {"capacity": capacity, "day": clock.day, "hour": clock.hour}

    def observe(self, table: PlanTable, clock: Clock) -> tuple[np.ndarray, np.ndarray]:
        """The raw observation and the mask that the graph takes, for one decision."""
        obs = build_observation(table.stats, clock, self.max_plans, table.active)
        mask = np.zeros(self.max_plans, dtype=np.float32)
        mask[: len(table.active)] = table.active
        return obs, mask

    def shares(self, table: PlanTable, clock: Clock) -> np.ndarray:
        if self.residual is not None:
            raise BundleError(
                f"{self.path} is a rank_residual bundle: its shares depend on the state carried between calls; "
                "use allocate(..., state=...) or decide(table, clock, state)"
            )
        obs, mask = self.observe(table, clock)
        shares = self._run(obs[None], mask[None])
        self._check_output(shares, mask[None] > 0.5, table.plan_ids)
        return shares[0, : len(table.active)]

    def details(self) -> dict[str, Any]:
        return {
            "bundle": str(self.path),
            "bundle_digest": self.digest,
            "policy_sha256": self.manifest["policy"]["sha256"],
        }


def load_allocator(spec: str | Path | None, expected_digest: str | None = None) -> TableAllocator:
    """A bundle folder (see :meth:`Bundle.load`), the name of a shipped bundle (:data:`SHIPPED_BUNDLES`,
    loaded against its pinned digest), or the name of a fallback heuristic (:data:`FALLBACKS`;
    ``None``: ``proportional``), which has no digest to pin."""
    if spec is None or str(spec) in FALLBACKS:
        if expected_digest is not None:
            raise BundleError(f"an expected digest pins a bundle; {spec or 'proportional'!r} is a fallback heuristic")
        return Heuristic("proportional" if spec is None else str(spec))
    if isinstance(spec, str) and spec in SHIPPED_BUNDLES:
        if Path(spec).is_dir():
            raise BundleError(
                f"{spec!r} names both the shipped bundle and a folder here: pass ./{spec} for the folder, "
                f"or run from another folder for the shipped one"
            )
        pinned = SHIPPED_BUNDLES[spec]
        if expected_digest is not None and expected_digest.strip().lower() != pinned:
            raise BundleError(f"the shipped bundle {spec!r} is pinned to {pinned}, not {expected_digest}")
        return Bundle.load(SHIPPED_DIR / spec, expected_digest=pinned)
    return Bundle.load(spec, expected_digest=expected_digest)


# -------------------------------------------------------------------------------------------------
# Files and CLI


def _bounded_lines(f: IO[bytes], path: Path) -> Iterator[str]:
    """The lines of ``f`` decoded as UTF-8, refusing one longer than :data:`MAX_CSV_LINE_BYTES` before it is
    read whole, or one that is not UTF-8 (decoded line by line, so the error names the right line)."""
    for number in itertools.count(1):
        line = f.readline(MAX_CSV_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_CSV_LINE_BYTES:
            raise AllocationInputError(
                f"{path}, line {number} is longer than {MAX_CSV_LINE_BYTES:,} bytes; a plan row is far shorter"
            )
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise AllocationInputError(
                f"{path}, line {number} is not UTF-8 text (byte {exc.start + 1} of the line: {exc.reason}); "
                "save the CSV as UTF-8"
            ) from None


def read_stats_csv(path: str | Path, max_plans: int = MAX_PLANS) -> dict[str, list[str]]:
    """A plan stats CSV (UTF-8, header :data:`INPUT_COLUMNS`, one row per plan) as a dict of columns.

    Read row by row: a file with more than ``max_plans`` rows is refused at the first row past the limit.
    """
    path = Path(path)
    with open(path, "rb") as f:
        reader = csv.DictReader(_bounded_lines(f, path))
        try:
            if reader.fieldnames is None:
                raise AllocationInputError(f"{path} is empty; expected a header {list(INPUT_COLUMNS)}")
            header = [h.strip() for h in reader.fieldnames]
            if len(set(header)) != len(header):
                raise AllocationInputError(f"{path}: duplicate column(s) in the header {header}")
            cols: dict[str, list[str]] = {h: [] for h in header}
            for n_rows, row in enumerate(reader, start=1):
                if n_rows > max_plans:
                    raise AllocationInputError(
                        f"{path} has more than {max_plans} plan rows, the most this allocator takes; "
                        "refused without reading the rest"
                    )
                if None in row or any(v is None for v in row.values()):
                    raise AllocationInputError(f"{path}, line {reader.line_num}: expected {len(header)} fields")
                for key, value in row.items():
                    cols[key.strip()].append(value)
        except csv.Error as exc:
            raise AllocationInputError(f"{path}, line {reader.line_num}: {exc}") from None
    return cols


def _stat_rows(
    plan_ids: Sequence[str], stats: Mapping[str, np.ndarray], active: np.ndarray | None
) -> Iterator[list[Any]]:
    """One input row per plan (columns ``[*INPUT_COLUMNS, ACTIVE]``) from stats as the simulator keeps them
    (name columns as vocabulary indices): names for the vocabulary columns, floats for the rest."""
    for i, pid in enumerate(plan_ids):
        row: list[Any] = [pid]
        for name in STAT_NAMES:
            value = stats[name][i]
            row.append(VOCABULARIES[name][int(value)] if name in VOCABULARIES else float(value))
        row.append(1 if active is None or active[i] else 0)
        yield row


def stats_columns(
    plan_ids: Sequence[str], stats: Mapping[str, np.ndarray], active: np.ndarray | None = None
) -> dict[str, list[Any]]:
    """The simulator's reporting stats (:meth:`envs.budget_env.BudgetShiftEnv.reporting_stats`) as
    ``allocate``'s input: a dict of columns, vocabulary columns as names, plus ``active``."""
    columns: dict[str, list[Any]] = {name: [] for name in (*INPUT_COLUMNS, ACTIVE)}
    for row in _stat_rows(plan_ids, stats, active):
        for name, value in zip(columns, row, strict=True):
            columns[name].append(value)
    return columns


def write_stats_csv(
    path: str | Path, plan_ids: Sequence[str], stats: Mapping[str, np.ndarray], active: np.ndarray | None = None
) -> None:
    """Write plan stats (name columns as vocabulary indices, as the simulator keeps them) as a CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*INPUT_COLUMNS, ACTIVE])
        for row in _stat_rows(plan_ids, stats, active):
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row])


_AMOUNT = f"a number in [0, {MAX_AMOUNT:.0e}]"
_PREVIOUS_FIELDS = {
    "budget_left_today": _Field(_AMOUNT, lambda v: _is_number(v, 0.0, MAX_AMOUNT)),
    "plans": _Field("a list of {plan_id, budget} objects", lambda v: isinstance(v, list)),
}
_PREVIOUS_PLAN_FIELDS = {
    "plan_id": _Field("a string", lambda v: isinstance(v, str)),
    "budget": _Field(_AMOUNT, lambda v: _is_number(v, 0.0, MAX_AMOUNT)),
}


def read_previous(path: str | Path) -> dict[str, float]:
    """plan_id -> share after caps (``budget / budget_left_today``) from a previous allocation's JSON, as the
    CLI prints it; the shares themselves are checked by :func:`check_previous_shares`."""
    return read_previous_allocation(path)[0]


def read_previous_allocation(path: str | Path) -> tuple[dict[str, float], Any]:
    """``(shares, state)`` of a previous allocation's JSON: :func:`read_previous`'s shares and its ``state``
    (None if it has none; checked by :func:`check_state` when the allocator uses it)."""
    previous = _load_json(
        _read_bounded(Path(path), MAX_PREVIOUS_BYTES, "a previous allocation", AllocationInputError),
        path,
        AllocationInputError,
    )
    _check_fields(previous, _PREVIOUS_FIELDS, "", path, AllocationInputError, closed=False)
    shares: dict[str, float] = {}
    left = previous["budget_left_today"]
    for i, plan in enumerate(previous["plans"]):
        _check_fields(plan, _PREVIOUS_PLAN_FIELDS, f"plans[{i}].", path, AllocationInputError, closed=False)
        if plan["plan_id"] in shares:
            raise AllocationInputError(f"{path}: plan {plan['plan_id']!r} appears twice in 'plans'")
        shares[plan["plan_id"]] = plan["budget"] / left if left > 0 else 0.0
    return shares, previous.get("state")


def _error_line(exc: Exception) -> str:
    return "error: " + " ".join(str(exc).split())


def digest_main(argv: Sequence[str]) -> int:
    """``python -m agents.allocator digest BUNDLE``: print the bundle's digest, to pin it."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.allocator digest",
        description="Print a bundle's SHA-256 digest (manifest + graph), for --expect-digest.",
    )
    parser.add_argument("bundle", help="bundle folder (policy.onnx + manifest.json)")
    args = parser.parse_args(argv)
    try:
        print(bundle_digest(args.bundle))
    except (BundleError, OSError) as exc:
        print(_error_line(exc), file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["digest"]:
        return digest_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m agents.allocator",
        description="Allocate today's remaining budget over ad plans "
        "('python -m agents.allocator digest BUNDLE' prints a bundle's digest).",
    )
    parser.add_argument(
        "bundle",
        help="bundle folder (policy.onnx + manifest.json), a shipped bundle "
        f"({', '.join(SHIPPED_BUNDLES) or 'none'}) or a fallback: {', '.join(FALLBACKS)}",
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
    parser.add_argument(
        "--previous",
        default=None,
        help="JSON of the previous allocation (for max_change, and the state a rank_residual bundle carries)",
    )
    parser.add_argument(
        "--expect-digest",
        default=None,
        metavar="HEX",
        help="refuse a bundle whose digest (python -m agents.allocator digest BUNDLE, at export time) differs",
    )
    args = parser.parse_args(argv)
    try:
        allocator = load_allocator(args.bundle, args.expect_digest)
        clock = Clock(
            hour=args.hour,
            day=args.day,
            days=allocator.default_days if args.days is None else args.days,
            daily_budget=args.budget,
            budget_left_today=args.budget if args.budget_left is None else args.budget_left,
        )
        previous, state = (None, None) if args.previous is None else read_previous_allocation(args.previous)
        stats = read_stats_csv(args.stats, allocator.plan_limit)
        allocation = allocator.allocate(stats, clock, previous, state)
    except (BundleError, AllocationInputError, OSError) as exc:
        print(_error_line(exc), file=sys.stderr)
        return 2
    print(json.dumps(allocation.as_dict(), indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
