"""The ad platform between the advertiser and the auction: goals, cost control, the learning
lifecycle, significant edits and compensation (DESIGN 2b), as NumPy on ``(E, P)`` arrays.

Before each step :meth:`Platform.write_bids` fills the kernel's per-plan bidding state
(``KernelInputs.dyn``: the value bid per predicted conversion, the learning level, the bid
multiplier); after it :meth:`Platform.after_step` updates the controllers from the step's outcome
and, at the end of each day, applies significant edits and compensation. The NumPy methods here
are the reference statement of these rules, run by the ``reference`` backend; the ``numba`` backend
runs the same rules as the loops of :mod:`envs.platform_kernels` (``Platform(fast=True)``), and the
alignment test steps the two side by side. The rules of a single auction that the platform feeds
(one ad per advertiser, the bid formula, attribution) are in the kernel and its reference.

The model, simplified as an auto-bidding engineer would recognise it (each a scenario field of
:class:`envs.scenario.PlatformSpec`):

- **Goal and bid value** ``v``: a plan bids ``v x pCTR x pCVR x multiplier`` per impression.
  *shallow* (oCPM): ``v`` = its target CPA. *deep* (two-stage bidding): the shallow target until the
  platform has seen ``deep_switch_events`` first-stage deep events, then ``target CPA x p / p0``,
  where ``p`` is the platform's estimate of the plan's first-stage rate (matured events plus
  ``prior_strength`` conversions at the vertical's rate ``p0``, over conversions plus the prior), so
  the deep target per deep event is ``target CPA / p0``. *value* (full-value feedback): ``target CPA
  x w / w0`` with ``w`` the estimated deep value per conversion (same prior) and ``w0`` the
  vertical's. Estimates divide by every conversion, including those whose deep events have not
  matured yet, so they lag for young plans: the delayed-feedback bias real platforms also face,
  left uncorrected here.
- **Cost control** (learned plans on oCPM channels): the multiplier ``m`` in ``[bid_mult_min,
  bid_mult_max]`` integrates each step's overshoot of spend over the target spend of its
  conversions (``conversions x v``), relative to the plan's smoothed recent target spend:
  ``m <- clip(m x exp(-gain x (spend - conversions x v) / (rho G + v)))``, ``G <- rho G + conversions x v``,
  ``rho = 0.5 ** (hours per step / half-life)``; the ``+ v`` is one conversion at target, so thin data
  barely moves ``m``, and a step without spend or conversions does not move it at all. Learning
  plans explore instead (their controller has not converged) and keep their multiplier.
- **Lifecycle**: *learning* -> *learned* once the plan has ``learning_conversions`` conversions since
  it (re)entered learning; -> *failed* if ``learning_days`` pass first. The learning level is
  ``lambda = max(0, 1 - conversions / learning_conversions)`` (times ``relearn_level`` for a plan
  that learned before), 0 once learned; a failed plan keeps its level. Learning plans bid ``x (1 +
  explore_premium x lambda)`` (exploration; with untargeted, noisy bids this makes learning cost at
  or above target). A failed plan's delivery is throttled: it enters only a ``failed_throttle`` share
  of auctions (kernel field ``DYN_DELIVERY``), at its full bid: fewer impressions, never cheaper ones
  (a bid multiplier would be a discount on first-price channels).
- **Significant edits**: at the end of each day, a plan whose budget for the day (the sum of its step
  budgets) moved by more than ``edit_threshold`` against the previous day's (both positive) goes
  back to learning: status and clock reset, its history kept; a plan that had learned restarts at
  learning level ``relearn_level``, so its bids are partly blind again (prediction bias, noise and
  targeting follow the learning level).
Channels whose ``cost_control`` is off (search's keyword auctions) keep the multiplier at 1 and are
not compensated.

- **Compensation**: at the end of each day, a plan learned all day whose spend overshoots the target
  spend of its conversions (``sum conversions x v``) by more than ``compensation_threshold`` is
  credited the excess over the target spend. Learning-phase plans are not compensated.
"""

from __future__ import annotations

import numpy as np

from envs.kernels import CONVERSIONS, DEEP0, DEEP_VALUE, DYN_BID_MULT, DYN_BID_VALUE, DYN_DELIVERY, DYN_LEARNING, SPEND
from envs.platform_kernels import after_step_kernel, write_bids_kernel
from envs.scenario import (
    GOAL_DEEP,
    GOAL_VALUE,
    STATUS_FAILED,
    STATUS_LEARNED,
    STATUS_LEARNING,
    Portfolio,
    Scenario,
)


def bid_values(
    goal: np.ndarray,
    target_cpa: np.ndarray,
    prior_rate: np.ndarray,
    prior_value: np.ndarray,
    conversions_seen: np.ndarray,
    deep_seen: np.ndarray,
    value_seen: np.ndarray,
    switch_events: float,
    prior_strength: float,
) -> np.ndarray:
    """The value each plan bids per predicted conversion (currency), by its goal; arrays broadcast."""
    rate = (deep_seen + prior_strength * prior_rate) / (conversions_seen + prior_strength)
    value = (value_seen + prior_strength * prior_value) / (conversions_seen + prior_strength)
    # A vertical whose prior is 0 (no deep event expected) gives the platform nothing to scale by.
    rate_lift = np.divide(rate, prior_rate, out=np.ones_like(rate), where=prior_rate > 0)
    value_lift = np.divide(value, prior_value, out=np.ones_like(value), where=prior_value > 0)
    deep = np.where(deep_seen >= switch_events, target_cpa * rate_lift, target_cpa)
    return np.where(goal == GOAL_DEEP, deep, np.where(goal == GOAL_VALUE, target_cpa * value_lift, target_cpa))


def learning_level(
    status: np.ndarray,
    learn_conversions: np.ndarray,
    learning_conversions: float,
    relearning: np.ndarray,
    relearn: float,
) -> np.ndarray:
    """lambda: 1 at launch, falling with conversions; scaled for a relearning plan; 0 once learned."""
    level = np.maximum(0.0, 1.0 - learn_conversions / learning_conversions) * np.where(relearning, relearn, 1.0)
    return np.where(status == STATUS_LEARNED, 0.0, level)


def controller_update(
    mult: np.ndarray,
    smoothed_target: np.ndarray,
    spend: np.ndarray,
    target_spend: np.ndarray,
    value: np.ndarray,
    update: np.ndarray,
    rho: float,
    gain: float,
    lo: float,
    hi: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the cost controller: ``(mult, smoothed_target)`` after it.

    ``m <- clip(m x exp(-gain x (spend - target_spend) / (rho G + v)))``, then ``G <- rho G +
    target_spend``: each step's own overshoot (or undershoot), relative to the plan's recent target
    spend plus one conversion at target, moves the multiplier once (integral action: cost tracks
    the target on average); a step with no spend and no conversion leaves it where it is, so one
    noisy hour is never re-applied. Plans not to ``update`` keep their multiplier and books.
    """
    # Scaled by the books *before* this step: scaling by books that already hold this step's
    # conversions would shrink exactly the undershoots and bias the multiplier down.
    # The exponent is bounded so an absurd overshoot saturates at the multiplier's bounds, never at inf.
    step = np.exp(np.clip(-gain * (spend - target_spend) / (rho * smoothed_target + value), -700.0, 700.0))
    g = np.where(update, rho * smoothed_target + target_spend, smoothed_target)
    return np.where(update, np.clip(mult * step, lo, hi), mult), g


class Platform:
    """The platform's per-plan state for ``n_envs`` episodes of one scenario (arrays ``(E, P)``)."""

    def __init__(self, scenario: Scenario, n_envs: int, fast: bool = True) -> None:
        self.scenario = sc = scenario
        self.fast = fast  # the Numba kernels of envs.platform_kernels (False: the NumPy methods here)
        self.spec = spec = sc.platform
        e, n = n_envs, sc.n_plans
        self.learning_steps = spec.learning_days * sc.steps_per_day
        self.rho = 0.5 ** (sc.hours_per_step / spec.controller_half_life_hours)
        # By scenario vertical / channel: the priors the platform's predictions start from, cost control.
        self.vertical_first_rate = np.array([v.stages[0].rate for v in sc.verticals])
        self.vertical_value = np.array([_deep_value_per_conversion(v) for v in sc.verticals])
        self.channel_controlled = np.array([c.cost_control for c in sc.channels])
        # Hidden truth the platform knows: goal, the vertical priors its predictions start from.
        self.goal = np.zeros((e, n), dtype=np.int64)
        self.target_cpa = np.ones((e, n))
        self.prior_rate = np.ones((e, n))  # the vertical's first-stage rate
        self.prior_value = np.ones((e, n))  # the vertical's expected deep value per conversion
        self.launch_step = np.zeros((e, n), dtype=np.int64)
        self.controlled = np.zeros((e, n), dtype=bool)  # on an oCPM channel: cost control, compensation
        # Predictions: what the platform has seen of each plan (conversions and deep postbacks).
        self.conversions_seen = np.zeros((e, n))
        self.deep_seen = np.zeros((e, n))
        self.value_seen = np.zeros((e, n))
        # Cost control.
        self.mult = np.ones((e, n))
        self.smoothed_target = np.zeros((e, n))
        # Lifecycle.
        self.status = np.zeros((e, n), dtype=np.int64)  # STATUS_*
        self.learn_conversions = np.zeros((e, n))  # conversions since the plan (re)entered learning
        self.learn_start = np.zeros((e, n), dtype=np.int64)  # the step it (re)entered learning
        self.relearning = np.zeros((e, n), dtype=bool)
        self.learned_all_day = np.zeros((e, n), dtype=bool)
        # The day's books (edits, compensation).
        self.value = np.ones((e, n))  # bid value of the step being simulated
        self.day_budget = np.zeros((e, n))
        self.previous_day_budget = np.zeros((e, n))
        self.day_spend = np.zeros((e, n))
        self.day_target_spend = np.zeros((e, n))
        self.compensation = np.zeros((e, n))  # credited so far this episode, currency
        self.edits = np.zeros((e, n), dtype=np.int64)  # significant edits so far this episode
        # The fast kernels' arguments besides the step's own, in their signatures' order, built once:
        # every array here is updated in place (only the NumPy write_bids rebinds value).
        self._bid_arguments = (
            self.goal,
            self.target_cpa,
            self.prior_rate,
            self.prior_value,
            self.conversions_seen,
            self.deep_seen,
            self.value_seen,
            self.status,
            self.learn_conversions,
            self.relearning,
            self.mult,
            self.value,
        )
        self._bid_constants = (
            float(spec.deep_switch_events),
            float(spec.prior_strength),
            float(sc.learning_conversions),
            float(spec.relearn_level),
            float(spec.explore_premium),
            float(spec.failed_throttle),
        )
        self._after_step_arguments = (
            self.value,
            self.controlled,
            self.launch_step,
            self.conversions_seen,
            self.deep_seen,
            self.value_seen,
            self.mult,
            self.smoothed_target,
            self.status,
            self.learn_conversions,
            self.learn_start,
            self.relearning,
            self.learned_all_day,
            self.day_budget,
            self.previous_day_budget,
            self.day_spend,
            self.day_target_spend,
            self.compensation,
            self.edits,
            bool(spec.cost_control),
            float(self.rho),
            float(spec.controller_gain),
            float(spec.bid_mult_min),
            float(spec.bid_mult_max),
            float(sc.learning_conversions),
            float(self.learning_steps),
            int(sc.steps_per_day),
            bool(spec.compensation),
            float(spec.compensation_threshold),
            float(spec.edit_threshold),
        )

    def load(self, i: int, pf: Portfolio) -> None:
        """Start episode row ``i``: established plans learned, new ones learning from their launch."""
        sc = self.scenario
        self.goal[i] = pf.goal
        self.target_cpa[i] = pf.target_cpa
        self.prior_rate[i] = self.vertical_first_rate[pf.vertical]
        self.prior_value[i] = self.vertical_value[pf.vertical]
        self.launch_step[i] = pf.launch_step
        self.controlled[i] = self.channel_controlled[pf.channel]
        # An established plan's history: its conversions and, in expectation, their deep postbacks.
        self.conversions_seen[i] = pf.prior_conversions
        self.deep_seen[i] = pf.prior_conversions * pf.stage_rate[:, 0]
        self.value_seen[i] = pf.prior_conversions * _plan_value_per_conversion(pf)
        self.mult[i] = 1.0
        self.smoothed_target[i] = 0.0
        learned = pf.prior_conversions >= sc.learning_conversions
        self.status[i] = np.where(learned, STATUS_LEARNED, STATUS_LEARNING)
        self.learn_conversions[i] = pf.prior_conversions
        self.learn_start[i] = pf.launch_step
        self.relearning[i] = False
        self.learned_all_day[i] = learned
        self.day_budget[i] = self.previous_day_budget[i] = 0.0
        self.day_spend[i] = self.day_target_spend[i] = 0.0
        self.compensation[i] = 0.0
        self.edits[i] = 0

    def write_bids(self, dyn: np.ndarray) -> None:
        """Fill ``dyn`` (E, P, N_DYN_FIELDS) for the step about to be simulated."""
        spec, sc = self.spec, self.scenario
        if self.fast:
            write_bids_kernel(*self._bid_arguments, dyn, *self._bid_constants)
            return
        self.value = bid_values(
            self.goal,
            self.target_cpa,
            self.prior_rate,
            self.prior_value,
            self.conversions_seen,
            self.deep_seen,
            self.value_seen,
            spec.deep_switch_events,
            spec.prior_strength,
        )
        level = learning_level(
            self.status, self.learn_conversions, sc.learning_conversions, self.relearning, spec.relearn_level
        )
        dyn[..., DYN_BID_VALUE] = self.value
        dyn[..., DYN_LEARNING] = level
        dyn[..., DYN_BID_MULT] = self.mult * np.where(
            self.status == STATUS_LEARNING, 1.0 + spec.explore_premium * level, 1.0
        )
        dyn[..., DYN_DELIVERY] = np.where(self.status == STATUS_FAILED, spec.failed_throttle, 1.0)

    def after_step(self, t: np.ndarray, out: np.ndarray, budget: np.ndarray) -> None:
        """Update every controller from step ``t`` (E,) of each env: ``out`` (E, P, k), ``budget`` (E, P)."""
        spec, sc = self.spec, self.scenario
        if self.fast:
            self._after_step_fast(t, out, budget)
            return
        spend, conversions = out[..., SPEND], out[..., CONVERSIONS]
        target_spend = conversions * self.value
        self.conversions_seen += conversions
        self.deep_seen += out[..., DEEP0]
        self.value_seen += out[..., DEEP_VALUE]
        if spec.cost_control:
            self.mult[...], self.smoothed_target[...] = controller_update(
                self.mult,
                self.smoothed_target,
                spend,
                target_spend,
                self.value,
                # The controller converges once the plan has learned: learning plans explore instead.
                self.controlled & (budget > 0) & (self.status == STATUS_LEARNED),
                self.rho,
                spec.controller_gain,
                spec.bid_mult_min,
                spec.bid_mult_max,
            )
        self.day_budget += budget
        self.day_spend += spend
        self.day_target_spend += target_spend

        launched = self.launch_step <= t[:, None]
        learning = (self.status == STATUS_LEARNING) & launched
        self.learn_conversions += np.where(learning, conversions, 0.0)
        learned = learning & (self.learn_conversions >= sc.learning_conversions)
        timed_out = learning & ~learned & (t[:, None] + 1 - self.learn_start >= self.learning_steps)
        self.status[...] = np.where(learned, STATUS_LEARNED, np.where(timed_out, STATUS_FAILED, self.status))
        self.learned_all_day &= self.status == STATUS_LEARNED

        day_end = (t + 1) % sc.steps_per_day == 0
        if np.logical_or.reduce(day_end):
            self._end_of_day(day_end, t + 1)

    def _after_step_fast(self, t: np.ndarray, out: np.ndarray, budget: np.ndarray) -> None:
        after_step_kernel(t, out, budget, *self._after_step_arguments)

    def _end_of_day(self, rows: np.ndarray, next_step: np.ndarray) -> None:
        spec = self.spec
        rows = rows[:, None]
        if spec.compensation:
            overshoot = self.day_spend > (1.0 + spec.compensation_threshold) * self.day_target_spend
            credit = rows & self.controlled & self.learned_all_day & (self.day_target_spend > 0) & overshoot
            self.compensation += np.where(credit, self.day_spend - self.day_target_spend, 0.0)
        previous = self.previous_day_budget
        moved = np.abs(self.day_budget - previous) > spec.edit_threshold * previous
        edited = rows & (previous > 0) & (self.day_budget > 0) & moved
        self.relearning |= edited & (self.status == STATUS_LEARNED)
        self.status[...] = np.where(edited, STATUS_LEARNING, self.status)
        self.learn_conversions[...] = np.where(edited, 0.0, self.learn_conversions)
        self.learn_start[...] = np.where(edited, next_step[:, None], self.learn_start)
        self.edits += edited
        self.previous_day_budget[...] = np.where(rows, self.day_budget, previous)
        for books in (self.day_budget, self.day_spend, self.day_target_spend):
            books[np.broadcast_to(rows, books.shape)] = 0.0
        self.learned_all_day[...] = np.where(rows, self.status == STATUS_LEARNED, self.learned_all_day)


def _deep_value_per_conversion(vertical) -> float:
    """Expected deep value of one conversion at the vertical's rates (every stage reached in turn)."""
    reach, value = 1.0, 0.0
    for st in vertical.stages:
        reach *= st.rate
        value += reach * st.value
    return value


def _plan_value_per_conversion(pf: Portfolio) -> np.ndarray:
    """(P,) expected deep value of one of each plan's conversions at its true stage rates."""
    reach = np.cumprod(pf.stage_rate, axis=1)
    return (reach * pf.stage_value).sum(axis=1)
