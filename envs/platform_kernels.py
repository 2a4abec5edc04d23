"""The platform layer of :mod:`envs.platform` as Numba kernels: the fast backend's implementation.

:class:`envs.platform.Platform` holds the platform's per-plan state and two implementations of each
update: its NumPy methods (the reference, run by the ``reference`` backend and the readable
statement of the rules) and the kernels here (run by the ``numba`` backend). The kernels loop over
envs and plans once instead of some forty NumPy calls on ``(E, P)`` arrays, which cost more than the
arithmetic on a ``default`` portfolio. They follow the reference operation by operation (same
formulas, same order), so the two agree bit for bit except where the transcendental functions
differ: ``math.exp`` (libm) here against NumPy's vectorised ``exp`` in the controller, which
disagree in the last bit for a few per cent of arguments. The alignment test steps both backends
side by side, the platform's state included.
"""

from __future__ import annotations

import math

import numba as nb

from envs.kernels import CONVERSIONS, DEEP0, DEEP_VALUE, DYN_BID_MULT, DYN_BID_VALUE, DYN_DELIVERY, DYN_LEARNING, SPEND
from envs.scenario import GOAL_DEEP, GOAL_VALUE, STATUS_FAILED, STATUS_LEARNED, STATUS_LEARNING


@nb.njit(cache=True)
def write_bids_kernel(
    goal,  # (E, P) int64 GOAL_*
    target_cpa,  # (E, P)
    prior_rate,  # (E, P)
    prior_value,  # (E, P)
    conversions_seen,  # (E, P)
    deep_seen,  # (E, P)
    value_seen,  # (E, P)
    status,  # (E, P) int64 STATUS_*
    learn_conversions,  # (E, P)
    relearning,  # (E, P) bool
    mult,  # (E, P) the controller's multiplier
    value,  # (E, P) out: bid value per predicted conversion
    dyn,  # (E, P, N_DYN_FIELDS) out
    switch_events,
    prior_strength,
    learning_conversions,
    relearn,
    explore_premium,
    failed_throttle,
):
    """:meth:`Platform.write_bids`: bid values (:func:`envs.platform.bid_values`), learning levels
    (:func:`envs.platform.learning_level`) and the multiplier with exploration and throttling."""
    n_envs, n_plans = goal.shape
    for e in range(n_envs):
        for p in range(n_plans):
            target = target_cpa[e, p]
            v = target
            g = goal[e, p]
            if g == GOAL_DEEP or g == GOAL_VALUE:
                denominator = conversions_seen[e, p] + prior_strength
                if g == GOAL_DEEP:
                    prior = prior_rate[e, p]
                    rate = (deep_seen[e, p] + prior_strength * prior) / denominator
                    lift = rate / prior if prior > 0 else 1.0
                    if deep_seen[e, p] >= switch_events:
                        v = target * lift
                else:
                    prior = prior_value[e, p]
                    per_conversion = (value_seen[e, p] + prior_strength * prior) / denominator
                    lift = per_conversion / prior if prior > 0 else 1.0
                    v = target * lift
            value[e, p] = v
            st = status[e, p]
            level = 0.0
            if st != STATUS_LEARNED:
                level = 1.0 - learn_conversions[e, p] / learning_conversions
                if not level > 0.0:  # np.maximum(0, level); NaN stays NaN as in NumPy
                    level = level if level != level else 0.0
                level = level * (relearn if relearning[e, p] else 1.0)
            dyn[e, p, DYN_BID_VALUE] = v
            dyn[e, p, DYN_LEARNING] = level
            dyn[e, p, DYN_BID_MULT] = mult[e, p] * ((1.0 + explore_premium * level) if st == STATUS_LEARNING else 1.0)
            dyn[e, p, DYN_DELIVERY] = failed_throttle if st == STATUS_FAILED else 1.0


@nb.njit(cache=True)
def after_step_kernel(
    t,  # (E,) int64 the step just simulated
    out,  # (E, P, k) the step's output
    budget,  # (E, P) the step's budgets
    value,  # (E, P) bid values the step was simulated with
    controlled,  # (E, P) bool on an oCPM channel
    launch_step,  # (E, P) int64
    conversions_seen,  # (E, P) updated in place from here on
    deep_seen,
    value_seen,
    mult,
    smoothed_target,
    status,  # (E, P) int64
    learn_conversions,
    learn_start,  # (E, P) int64
    relearning,  # (E, P) bool
    learned_all_day,  # (E, P) bool
    day_budget,
    previous_day_budget,
    day_spend,
    day_target_spend,
    compensation,
    edits,  # (E, P) int64
    cost_control,  # bool: the spec's switch
    rho,
    gain,
    lo,
    hi,
    learning_conversions,
    learning_steps,
    steps_per_day,
    compensate,  # bool
    compensation_threshold,
    edit_threshold,
):
    """:meth:`Platform.after_step` (controller, books, lifecycle) and, for envs whose day ends with
    step ``t``, :meth:`Platform._end_of_day` (compensation, significant edits, the day's books)."""
    n_envs, n_plans = value.shape
    for e in range(n_envs):
        te = t[e]
        day_end = (te + 1) % steps_per_day == 0
        for p in range(n_plans):
            spend = out[e, p, SPEND]
            conversions = out[e, p, CONVERSIONS]
            v = value[e, p]
            target_spend = conversions * v
            conversions_seen[e, p] += conversions
            deep_seen[e, p] += out[e, p, DEEP0]
            value_seen[e, p] += out[e, p, DEEP_VALUE]
            if cost_control and controlled[e, p] and budget[e, p] > 0 and status[e, p] == STATUS_LEARNED:
                g = smoothed_target[e, p]
                x = -gain * (spend - target_spend) / (rho * g + v)
                x = min(max(x, -700.0), 700.0)
                mult[e, p] = min(max(mult[e, p] * math.exp(x), lo), hi)
                smoothed_target[e, p] = rho * g + target_spend
            day_budget[e, p] += budget[e, p]
            day_spend[e, p] += spend
            day_target_spend[e, p] += target_spend
            if status[e, p] == STATUS_LEARNING and launch_step[e, p] <= te:
                learn_conversions[e, p] += conversions
                if learn_conversions[e, p] >= learning_conversions:
                    status[e, p] = STATUS_LEARNED
                elif te + 1 - learn_start[e, p] >= learning_steps:
                    status[e, p] = STATUS_FAILED
            learned_all_day[e, p] = learned_all_day[e, p] and status[e, p] == STATUS_LEARNED
            if day_end:  # Platform._end_of_day: compensation, significant edits, the day's books
                spent, target = day_spend[e, p], day_target_spend[e, p]
                if compensate and controlled[e, p] and learned_all_day[e, p] and target > 0:
                    if spent > (1.0 + compensation_threshold) * target:
                        compensation[e, p] += spent - target
                previous, given = previous_day_budget[e, p], day_budget[e, p]
                if previous > 0 and given > 0 and abs(given - previous) > edit_threshold * previous:
                    if status[e, p] == STATUS_LEARNED:
                        relearning[e, p] = True
                    status[e, p] = STATUS_LEARNING
                    learn_conversions[e, p] = 0.0
                    learn_start[e, p] = te + 1
                    edits[e, p] += 1
                previous_day_budget[e, p] = given
                day_budget[e, p] = 0.0
                day_spend[e, p] = 0.0
                day_target_spend[e, p] = 0.0
                learned_all_day[e, p] = status[e, p] == STATUS_LEARNED
