"""Hourly reporting logs: the format an advertiser's own history comes in, its writer and its validator.

A log is one CSV row per plan and hour over a period, in the vocabulary of the production loader's
reporting schema (:data:`envs.features.STAT_COLUMNS`: the same channel, vertical, status and goal names,
the same spend/impression/click/conversion/deep-event meanings), but hour by hour instead of windowed.
:data:`LOG_COLUMNS` documents every field; ``python -m experiments.simulate --export-log log.csv`` writes
one from the simulator (:class:`LogRecorder`) and :func:`read_log` reads and validates one, refusing
what calibration cannot use with the row (the CSV line number) and the field named:
missing or unknown columns, non-numbers, negative or absurd counts, clicks above impressions,
conversions above clicks, deep events out of funnel order, unknown channel/vertical/status/goal, a
plan whose channel, vertical or account changes, timestamps out of order, duplicated or missing hours
(gaps), and a period shorter than ``min_days``.

Rows are ordered by timestamp (all plans of an hour, then the next hour). A plan's rows start at its
first hour in the period (a plan launched during the period starts late) and run without a gap to the
period's last hour; an hour in which a plan was paused is a row with budget 0.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from envs.features import CHANNELS, GOALS, STATUSES, VERTICALS, Feature
from envs.scenario import MAX_STAGES

#: Refused: a count or an amount above this is a unit or parsing error (the loader's bound).
MAX_AMOUNT = 1e12
#: Calibration needs at least this many days by default: deep events take days to mature.
MIN_DAYS = 7
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M"

_STAGE_EVENTS = tuple(f"deep_events_{s + 1}" for s in range(MAX_STAGES))
_STAGE_VALUES = tuple(f"deep_value_{s + 1}" for s in range(MAX_STAGES))

#: Every column of a log, in the order the simulator writes them.
LOG_COLUMNS: tuple[Feature, ...] = (
    Feature("plan_id", "the plan's identifier (any text without commas), stable over the period", "id"),
    Feature("account", "the account the plan belongs to", "id"),
    Feature("channel", f"traffic source, one of {list(CHANNELS)}", "name"),
    Feature("vertical", f"business line, one of {list(VERTICALS)}", "name"),
    Feature("goal", f"the event the platform optimises for the plan, one of {list(GOALS)}", "name"),
    Feature("timestamp", "start of the reporting hour, ISO 8601 local time (2026-11-01T14:00)", "hour"),
    Feature("status", f"the platform's learning status at the end of the hour, one of {list(STATUSES)}", "name"),
    Feature("age_hours", "hours since the plan was launched, at the end of the hour", "hours"),
    Feature("target_cpa", "the plan's oCPM target cost per conversion during the hour", "currency"),
    Feature("budget", "budget the plan was given for the hour (0: paused)", "currency"),
    Feature("spend", "spend in the hour (never above the budget)", "currency"),
    Feature("impressions", "impressions won in the hour", "count"),
    Feature("clicks", "clicks in the hour (<= impressions)", "count"),
    Feature("conversions", "shallow conversions (the optimised event) in the hour (<= clicks)", "count"),
    *(
        Feature(name, f"deep events of funnel stage {s + 1} that matured (were reported) in the hour", "count")
        for s, name in enumerate(_STAGE_EVENTS)
    ),
    *(
        Feature(name, f"value of the stage-{s + 1} deep events that matured in the hour", "currency")
        for s, name in enumerate(_STAGE_VALUES)
    ),
)
LOG_NAMES: tuple[str, ...] = tuple(c.name for c in LOG_COLUMNS)
_VOCABULARY = {"channel": CHANNELS, "vertical": VERTICALS, "goal": GOALS, "status": STATUSES}
_COUNTS = ("impressions", "clicks", "conversions", *_STAGE_EVENTS)
_AMOUNTS = ("age_hours", "target_cpa", "budget", "spend", *_STAGE_VALUES)
#: How far spend may exceed the hour's budget (reporting rounds both).
SPEND_TOLERANCE = 1e-3


class LogError(ValueError):
    """A reporting log that calibration cannot use; the message names the row (CSV line) and field."""


@dataclass(frozen=True)
class PlanLog:
    """A validated log as arrays over hours ``T`` and plans ``P`` (hours before a plan's first row are 0)."""

    source: str
    start: datetime  # the first hour of the period
    plan_ids: tuple[str, ...]  # (P,) sorted
    account: tuple[str, ...]  # (P,)
    channel: np.ndarray  # (P,) int64 index into envs.features.CHANNELS
    vertical: np.ndarray  # (P,) int64 index into envs.features.VERTICALS
    goal: np.ndarray  # (P,) int64 index into envs.features.GOALS (the last hour's)
    present: np.ndarray  # (T, P) bool: the plan has a row for the hour
    status: np.ndarray  # (T, P) int64 index into envs.features.STATUSES (-1 before the first row)
    age_hours: np.ndarray  # (T, P) float64
    target_cpa: np.ndarray  # (T, P) float64 currency
    budget: np.ndarray  # (T, P) float64 currency
    spend: np.ndarray  # (T, P) float64 currency
    impressions: np.ndarray  # (T, P) float64
    clicks: np.ndarray  # (T, P) float64
    conversions: np.ndarray  # (T, P) float64
    deep_events: np.ndarray  # (T, P, MAX_STAGES) float64
    deep_value: np.ndarray  # (T, P, MAX_STAGES) float64 currency

    @property
    def hours(self) -> int:
        return self.present.shape[0]

    @property
    def n_plans(self) -> int:
        return len(self.plan_ids)

    @property
    def days(self) -> float:
        return self.hours / 24.0


def _fail(line: int, field: str, value: Any, expected: str, source: str) -> LogError:
    return LogError(f"{source}, row {line}, field {field}: got {value!r}, expected {expected}")


def _number(row: dict[str, str], field: str, line: int, source: str, *, count: bool) -> float:
    raw = row[field]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _fail(line, field, raw, "a number", source) from None
    if not math.isfinite(value):
        raise _fail(line, field, raw, "a finite number", source)
    if value < 0:
        raise _fail(line, field, raw, "a non-negative " + ("count" if count else "amount"), source)
    if value > MAX_AMOUNT:
        raise _fail(line, field, raw, f"at most {MAX_AMOUNT:.0e}", source)
    if count and value != int(value):
        raise _fail(line, field, raw, "a whole count", source)
    return value


def read_log(path: str | Path, *, min_days: float = MIN_DAYS) -> PlanLog:
    """Read and validate an hourly reporting log (:data:`LOG_COLUMNS`); raise :class:`LogError` on the first
    problem, naming the CSV line and the field."""
    path = Path(path)
    source = str(path)
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise LogError(f"cannot read {source}: {exc.strerror}") from exc
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in LOG_NAMES if c not in header]
            if missing:
                raise LogError(f"{source}, row 1 (header): missing column {missing[0]!r}; expected {list(LOG_NAMES)}")
            unknown = [c for c in header if c not in LOG_NAMES]
            if unknown:
                raise LogError(f"{source}, row 1 (header): unknown column {unknown[0]!r}; expected {list(LOG_NAMES)}")
            rows = _read_rows(reader, source)
        except UnicodeDecodeError as exc:
            raise LogError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return _to_arrays(rows, source, min_days)


def _read_rows(reader: csv.DictReader, source: str) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    previous: datetime | None = None
    for row in reader:
        line = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise LogError(f"{source}, row {line}: {len(LOG_NAMES)} fields expected, the row has another number")
        rec: dict[str, Any] = {"plan_id": row["plan_id"].strip(), "account": row["account"].strip()}
        for field in ("plan_id", "account"):
            if not rec[field]:
                raise _fail(line, field, row[field], "a non-empty identifier", source)
        for field, vocabulary in _VOCABULARY.items():
            if row[field] not in vocabulary:
                raise _fail(line, field, row[field], f"one of {list(vocabulary)}", source)
            rec[field] = vocabulary.index(row[field])
        try:
            stamp = datetime.strptime(row["timestamp"].strip(), TIMESTAMP_FORMAT)
        except ValueError:
            raise _fail(line, "timestamp", row["timestamp"], "an hour as YYYY-MM-DDTHH:00", source) from None
        if stamp.minute or stamp.second:
            raise _fail(line, "timestamp", row["timestamp"], "the start of an hour (minutes 00)", source)
        if previous is not None and stamp < previous:
            raise _fail(
                line,
                "timestamp",
                row["timestamp"],
                f"no earlier than the row before ({previous:%Y-%m-%dT%H:%M}): timestamps out of order",
                source,
            )
        previous = rec["timestamp"] = stamp
        for field in _COUNTS:
            rec[field] = _number(row, field, line, source, count=True)
        for field in _AMOUNTS:
            rec[field] = _number(row, field, line, source, count=False)
        if rec["target_cpa"] <= 0:
            raise _fail(line, "target_cpa", row["target_cpa"], "a positive amount", source)
        if rec["clicks"] > rec["impressions"]:
            raise _fail(line, "clicks", row["clicks"], f"<= impressions ({row['impressions']})", source)
        if rec["conversions"] > rec["clicks"]:
            raise _fail(line, "conversions", row["conversions"], f"<= clicks ({row['clicks']})", source)
        if rec["spend"] > rec["budget"] * (1 + SPEND_TOLERANCE) + 0.01:
            raise _fail(line, "spend", row["spend"], f"<= the hour's budget ({row['budget']})", source)
        for events, value in zip(_STAGE_EVENTS, _STAGE_VALUES, strict=True):
            if rec[events] == 0 and rec[value] > 0:
                raise _fail(line, value, row[value], f"0 when {events} is 0", source)
        rows.append((line, rec))
    if not rows:
        raise LogError(f"{source}: no data rows")
    return rows


def _to_arrays(rows: list[tuple[int, dict[str, Any]]], source: str, min_days: float) -> PlanLog:
    start = rows[0][1]["timestamp"]
    end = rows[-1][1]["timestamp"]
    if start.hour != 0:
        raise _fail(
            rows[0][0], "timestamp", f"{start:%Y-%m-%dT%H:%M}", "the period to start at 00:00 (whole days)", source
        )
    hours = int((end - start) / timedelta(hours=1)) + 1
    if hours < min_days * 24:
        raise LogError(
            f"{source}, field timestamp: the log covers {hours} hours ({hours / 24:.1f} days, "
            f"{start:%Y-%m-%dT%H:%M} to {end:%Y-%m-%dT%H:%M}); calibration needs at least {min_days:g} days "
            "(too few days: deep events take days to mature)"
        )
    index: dict[str, int] = {}
    first: list[dict[str, Any]] = []
    for line, rec in rows:
        p = index.setdefault(rec["plan_id"], len(index))
        if p == len(first):
            first.append(dict(rec, line=line))
            continue
        for field in ("account", "channel", "vertical"):
            if rec[field] != first[p][field]:
                shown = rec[field] if field == "account" else _VOCABULARY[field][rec[field]]
                was = first[p][field] if field == "account" else _VOCABULARY[field][first[p][field]]
                raise _fail(
                    line,
                    field,
                    shown,
                    f"{was!r} as in plan {rec['plan_id']}'s first row (row {first[p]['line']})",
                    source,
                )
    # Plans in the order of their ids (a stable order whatever hour each first appears in).
    order = sorted(index, key=lambda pid: index[pid])
    order = sorted(order)
    first = [first[index[pid]] for pid in order]
    index = {pid: i for i, pid in enumerate(order)}
    n = len(index)
    present = np.zeros((hours, n), dtype=bool)
    arrays = {f: np.zeros((hours, n)) for f in ("age_hours", "target_cpa", "budget", "spend", *_COUNTS[:3])}
    status = np.full((hours, n), -1, dtype=np.int64)
    goal = np.zeros(n, dtype=np.int64)
    deep = np.zeros((hours, n, MAX_STAGES))
    value = np.zeros((hours, n, MAX_STAGES))
    for line, rec in rows:
        t = int((rec["timestamp"] - start) / timedelta(hours=1))
        p = index[rec["plan_id"]]
        if present[t, p]:
            raise _fail(
                line,
                "timestamp",
                f"{rec['timestamp']:%Y-%m-%dT%H:%M}",
                f"one row per plan and hour (plan {rec['plan_id']} has this hour already)",
                source,
            )
        present[t, p] = True
        status[t, p] = rec["status"]
        goal[p] = rec["goal"]
        for f in arrays:
            arrays[f][t, p] = rec[f]
        deep[t, p] = [rec[f] for f in _STAGE_EVENTS]
        value[t, p] = [rec[f] for f in _STAGE_VALUES]
    # No gap: each plan reports every hour from its first row to the period's last hour.
    for p, plan_id in enumerate(index):
        t0 = int(np.argmax(present[:, p]))
        holes = np.flatnonzero(~present[t0:, p])
        if holes.size:
            missing = start + timedelta(hours=t0 + int(holes[0]))
            # The row where the gap shows: the first one after the missing hour (or the file's end).
            after = [ln for ln, rec in rows if rec["plan_id"] == plan_id and rec["timestamp"] > missing]
            where = f"row {after[0]}" if after else f"row {rows[-1][0]} (end of file)"
            raise LogError(
                f"{source}, {where}, field timestamp: plan {plan_id} has no row for {missing:%Y-%m-%dT%H:%M} "
                f"(a gap: {holes.size} missing hours after its first row; report a paused hour as budget 0)"
            )
    _check_funnel(rows, index, deep, arrays["conversions"], source)
    return PlanLog(
        source=source,
        start=start,
        plan_ids=tuple(index),
        account=tuple(f["account"] for f in first),
        channel=np.array([f["channel"] for f in first], dtype=np.int64),
        vertical=np.array([f["vertical"] for f in first], dtype=np.int64),
        goal=goal,
        present=present,
        status=status,
        deep_events=deep,
        deep_value=value,
        **arrays,
    )


def _check_funnel(
    rows: list[tuple[int, dict[str, Any]]],
    index: dict[str, int],
    deep: np.ndarray,
    conversions: np.ndarray,
    source: str,
) -> None:
    """Over the period a plan's deep events cannot outnumber the events of the stage before them."""
    totals = np.concatenate([conversions.sum(axis=0)[:, None], deep.sum(axis=0)], axis=1)  # (P, 1 + S)
    bad = np.argwhere(totals[:, 1:] > totals[:, :-1])
    if bad.size:
        p, s = (int(v) for v in bad[0])
        plan_id = list(index)[p]
        last = max(ln for ln, rec in rows if rec["plan_id"] == plan_id)
        parent = "conversions" if s == 0 else _STAGE_EVENTS[s - 1]
        raise LogError(
            f"{source}, row {last}, field {_STAGE_EVENTS[s]}: plan {plan_id} reports {totals[p, s + 1]:.0f} "
            f"{_STAGE_EVENTS[s]} over the period but only {totals[p, s]:.0f} {parent}: deep events out of funnel order"
        )


# -------------------------------------------------------------------------------------------------
# Writing a log from the simulator


class LogRecorder:
    """Collects a :class:`envs.budget_env.BudgetShiftEnv` episode's hours as log rows (:data:`LOG_COLUMNS`).

    Call :meth:`record` after every ``step``/``step_shares`` with the step's ``info`` and the mask of plans
    that existed during it; :meth:`write` writes the CSV. Plan ids are ``A<account>-P<plan>``.
    """

    def __init__(self, env: Any, start: datetime | None = None) -> None:
        self.env = env
        self.start = start or datetime(2026, 11, 2)  # a Monday
        self.rows: list[list[str]] = []

    def record(self, info: dict[str, Any], active: np.ndarray) -> None:
        env = self.env
        sc, pf = env.scenario, env.portfolio
        stats = env.reporting_stats()
        stamp = (self.start + timedelta(hours=info["step"] * sc.hours_per_step)).strftime(TIMESTAMP_FORMAT)
        stage_value = pf.stage_value
        deep = info["deep_events"]
        for p in np.flatnonzero(active):
            self.rows.append(
                [
                    f"A{pf.account[p] + 1}-P{p + 1:03d}",
                    f"A{pf.account[p] + 1}",
                    sc.channels[pf.channel[p]].name,
                    sc.verticals[pf.vertical[p]].name,
                    GOALS[int(stats["goal"][p])],
                    stamp,
                    STATUSES[int(stats["status"][p])],
                    f"{stats['age_hours'][p]:.0f}",
                    f"{stats['target_cpa'][p]:.4f}",
                    f"{info['budget'][p]:.4f}",
                    f"{min(info['spend'][p], info['budget'][p]):.4f}",
                    f"{info['impressions'][p]:.0f}",
                    f"{info['clicks'][p]:.0f}",
                    f"{info['conversions'][p]:.0f}",
                    *(f"{deep[p, s]:.0f}" for s in range(MAX_STAGES)),
                    *(f"{deep[p, s] * stage_value[p, s]:.2f}" for s in range(MAX_STAGES)),
                ]
            )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(LOG_NAMES)
            writer.writerows(self.rows)
        return path


def format_table() -> str:
    """The log format as a Markdown table (for the README and the fit report)."""
    lines = ["| column | meaning | unit |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.meaning} | {c.unit} |" for c in LOG_COLUMNS]
    return "\n".join(lines)
