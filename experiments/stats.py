"""Statistics over seeds and episodes: IQM with stratified-bootstrap intervals, normalised scores, paired comparisons.

A run's score is its mean over episodes; seeds are the runs. The IQM (``scipy.stats.trim_mean(x, 0.25)``,
rliable's definition) is bootstrapped over seeds with ``scipy.stats.bootstrap`` (percentile method,
fixed generator); with several envs each env's runs are resampled within the env, which is rliable's
stratified bootstrap. rliable's ``StratifiedBootstrap`` needs a rectangular (runs x tasks) matrix, and
an env with a failed run has fewer seeds than the others, so the IQM keeps scipy's bootstrap, which
takes ragged strata.

Normalised score: ``(s - s_uniform) / (s_oracle - s_uniform)`` (0 = uniform, 1 = oracle), with the
env's mean uniform and oracle scores over seeds as references (:func:`references`).

Paired comparisons (:func:`paired_comparisons`): every allocator plays the same episodes (the same env
seeds, :func:`experiments.common.episode_seeds`), so allocator A is compared with allocator B on the
per-episode difference ``d = score_A - score_B`` over the episodes both played, matched by env, env
seed and setup (:func:`experiments.sweep.episode_table`); episodes are never paired by position.
A pair whose runs share no episode, or hold episodes with the same env seed under different env
configs or ``max_steps``, or an allocator holding one episode twice, is refused, naming the run
folders; episodes only one side played are left out and listed. A trained allocator's training runs
(several ``agent.run`` under one name: its training seeds) are averaged per episode before pairing
(:func:`pool_training_runs`), if each played the same env seeds; the interval is then over episodes
for those trained models, not over training seeds. Statistics, rliable 1.2's
(``rliable.library.get_interval_estimates``, percentile method, stratified by env; computed here
with the same draws, vectorised, :func:`paired_interval`, and held to rliable's own by a test):

- the mean paired difference with a 95% bootstrap interval; with several envs (``env = all``) the
  mean over envs of each env's mean difference of normalised scores, episodes resampled within each
  env (this needs the same number of paired episodes in every env, else the ``all`` row is refused);
- the probability of improvement ``P(A > B)``: rliable's ``metrics.probability_of_improvement``
  (``S(x, y) = 1`` if ``x > y``, ``1/2`` if equal, 0 otherwise, averaged over tasks) with each paired
  episode as a task played once by each side, i.e. the share of paired episodes A wins, ties
  counting half (:func:`paired_improvement`); its interval from the same resamples;
- "A beats B" only where the difference's interval excludes 0; otherwise the difference is not
  resolved. Each comparison is a separate 95% interval, not corrected for multiplicity.

Performance profiles (:func:`performance_profiles`): rliable's score distribution, the fraction of
episodes whose normalised score exceeds tau, with stratified-bootstrap 95% bands
(``rliable.library.create_performance_profile``).

rliable's ``StratifiedBootstrap`` draws from NumPy's global generator whatever ``random_state`` says,
so every call here seeds it and puts the caller's state back (:func:`_global_numpy_seed`): the same
inputs give the same intervals. rliable 1.2.0 requires ``arch>=5.3.1,<8.0``, and arch 7.2.0 does not
import with pandas 3 (with pandas 3.1.1, ``import arch.bootstrap`` raises ``TypeError:
deprecate_kwarg() missing 1 required positional argument: 'new_arg_name'`` in
``arch/univariate/base.py``), hence ``pandas<3`` in ``pyproject.toml``; ``constraints.txt`` pins the
set checked together: rliable 1.2.0, arch 7.2.0, pandas 2.3.3, statsmodels 0.15.0 (with numpy 2.4.6,
scipy 1.17.1, torch 2.13.0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from rliable import library as rly
from scipy import stats

from agents.heuristics import HEURISTICS
from experiments.sweep import ordered_agents

REFERENCE_LOW, REFERENCE_HIGH = "uniform", "oracle"
#: The allocators every allocator is compared with, as they are named in the report's tables.
BEST_HEURISTIC, UNIFORM = "best heuristic", REFERENCE_LOW


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (rliable's definition)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def iqm_interval(samples: list[np.ndarray], reps: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """IQM of the pooled samples and its 95% percentile bootstrap interval, resampling within each sample."""
    samples = [np.asarray(s, dtype=float) for s in samples if len(s)]
    pooled = np.concatenate(samples) if samples else np.array([])
    if len(pooled) == 0:
        return math.nan, math.nan, math.nan
    point = float(iqm(pooled))
    if all(len(s) < 2 or np.ptp(s) == 0 for s in samples):
        return point, point, point

    def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return iqm(np.concatenate(xs, axis=axis), axis=axis)

    res = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=reps,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def references(table: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per env, the normalised score's references: the mean uniform and oracle scores over seeds (runs).

    An env without both, or where the oracle does not score above uniform, has none (its normalised
    scores are NaN: a flipped scale would flip every difference's sign).
    """
    refs = {}
    for env, group in table.groupby("env") if not table.empty else []:
        low = group.loc[group.agent == REFERENCE_LOW, "score"].mean()
        high = group.loc[group.agent == REFERENCE_HIGH, "score"].mean()
        if np.isfinite(low) and np.isfinite(high) and high > low:
            refs[env] = (float(low), float(high))
    return refs


def normalise(frame: pd.DataFrame, refs: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """``frame`` (runs or episodes) with a ``normalised`` column: ``(score - low) / (high - low)`` per env."""
    frame = frame.copy()
    low = frame["env"].map(lambda e: refs.get(e, (np.nan, np.nan))[0]).astype(float)
    high = frame["env"].map(lambda e: refs.get(e, (np.nan, np.nan))[1]).astype(float)
    frame["normalised"] = (frame["score"] - low) / (high - low)
    return frame


def summarise(table: pd.DataFrame, reps: int = 5000) -> pd.DataFrame:
    """Per env and allocator: IQM score and normalised score with 95% intervals, and the means of the rest."""
    if table.empty:
        return pd.DataFrame()
    table = normalise(table, references(table))
    rows = []
    for (env, agent), g in table.groupby(["env", "agent"], sort=False):
        score, lo, hi = iqm_interval([g["score"].to_numpy()], reps)
        norm = g["normalised"].to_numpy()
        n_score, n_lo, n_hi = iqm_interval([norm], reps) if np.isfinite(norm).all() else (np.nan,) * 3
        rows.append(
            {
                "env": env,
                "agent": agent,
                "seeds": len(g),
                "episodes": int(g["episodes"].sum()),
                "score_iqm": score,
                "score_ci_low": lo,
                "score_ci_high": hi,
                "score_mean": g["score"].mean(),
                "score_std": g["score"].std(ddof=1) if len(g) > 1 else np.nan,
                "normalised_iqm": n_score,
                "normalised_ci_low": n_lo,
                "normalised_ci_high": n_hi,
                "cpa_ratio": g["cpa_ratio"].mean(),
                "billing_ratio": g["billing_ratio"].mean(),
                "budget_utilisation": g["budget_utilisation"].mean(),
                "cap_violation_steps": g["cap_violation_steps"].mean(),
                "spend_share_potential": g["spend_share_potential"].mean(),
                "spend_share_trap": g["spend_share_trap"].mean(),
                "budget_change": g["budget_change"].mean() if "budget_change" in g else np.nan,
                "learning_resets": g["learning_resets"].mean() if "learning_resets" in g else np.nan,
            }
        )
    summary = pd.DataFrame(rows)
    envs = table["env"].unique()
    if len(envs) > 1:  # normalised scores across envs, stratified by env
        for agent, g in table.groupby("agent", sort=False):
            per_env = [ge["normalised"].to_numpy() for _, ge in g.groupby("env")]
            if len(per_env) != len(envs) or not all(np.isfinite(x).all() for x in per_env):
                continue
            n_score, n_lo, n_hi = iqm_interval(per_env, reps)
            summary.loc[len(summary)] = {
                "env": "all",
                "agent": agent,
                "seeds": len(g),
                "episodes": int(g["episodes"].sum()),
                "normalised_iqm": n_score,
                "normalised_ci_low": n_lo,
                "normalised_ci_high": n_hi,
            }
    order = {a: i for i, a in enumerate(ordered_agents(summary["agent"].unique()))}
    summary["_o"] = summary["agent"].map(order)
    summary["_e"] = summary["env"].eq("all")
    return summary.sort_values(["_e", "env", "_o"]).drop(columns=["_o", "_e"]).reset_index(drop=True)


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator (rliable's ``StratifiedBootstrap`` draws from it) and restore it after."""
    state = np.random.get_state()  # noqa: NPY002 (rliable uses the legacy global generator)
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def paired_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y) over paired episodes: rliable's probability of improvement with each episode a task.

    ``scores_x[i, m]`` and ``scores_y[i, m]`` are X's and Y's scores on episode ``i`` of env ``m``.
    rliable's ``metrics.probability_of_improvement`` averages ``S(x, y)`` (1 if ``x > y``, 1/2 if
    equal, 0 otherwise) over all pairs of runs of a task, then over tasks; with each paired episode
    a task that X and Y played once, that is the mean of ``S`` over the paired episodes.
    """
    return float(_win_share(np.asarray(scores_x, dtype=float) - np.asarray(scores_y, dtype=float)))


def _win_share(diff: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The mean of ``S`` (1 if ``d > 0``, 1/2 if ``d == 0``, 0 otherwise) over ``axis`` of the differences ``d``."""
    return np.mean((diff > 0) + 0.5 * (diff == 0), axis=axis)


def _paired_statistics(diff: np.ndarray) -> np.ndarray:
    """Mean paired difference (each env's mean, averaged over envs) and P(X > Y), of a (episodes, envs) matrix.

    rliable's statistic for :func:`paired_interval_rliable`, the reference of :func:`paired_interval`."""
    return np.array([np.mean(diff), paired_improvement(diff, np.zeros_like(diff))])


#: Bootstrap resamples drawn at once by :func:`paired_interval` (bounds its memory: chunk x episodes x envs).
PAIRED_CHUNK = 1000


def paired_interval(diff: np.ndarray, reps: int = 5000, seed: int = 0) -> dict[str, float]:
    """Mean paired difference and P(X > Y) with 95% stratified-bootstrap intervals (rliable's).

    :param diff: ``(episodes, envs)`` matrix of per-episode differences X - Y; episodes are
        resampled within each env (column), the difference and the probability from the same resamples.

    The same numbers as :func:`paired_interval_rliable` (``rliable.library.get_interval_estimates``
    with rliable's ``StratifiedBootstrap``, percentile method; ``tests/test_paired.py`` holds the two
    together), vectorised: rliable draws each resample's indices with
    ``np.random.choice(episodes, (episodes, envs))`` from NumPy's global generator seeded with
    ``seed`` and calls the statistic once per resample through arch (~70 us a resample, 25 s of a
    main-job report's 144 comparisons); here the same draws are taken ``PAIRED_CHUNK`` resamples at
    a time from a legacy ``RandomState(seed)`` (the same stream, the global generator untouched) and
    both statistics are computed for the whole chunk, then the 2.5th and 97.5th percentiles as arch
    takes them (``np.percentile``, linear interpolation).
    """
    diff = np.asarray(diff, dtype=float)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"diff must be a non-empty (episodes, envs) matrix, got shape {diff.shape}")
    n, m = diff.shape
    rng = np.random.RandomState(seed)  # noqa: NPY002 (rliable's legacy stream, drawn the same way)
    columns = np.arange(m)
    estimates = np.empty((reps, 2))
    for start in range(0, reps, PAIRED_CHUNK):
        size = min(PAIRED_CHUNK, reps - start)
        resampled = diff[rng.choice(n, (size, n, m), replace=True), columns]  # (size, n, m)
        flat = resampled.reshape(size, n * m)
        estimates[start : start + size, 0] = flat.mean(axis=1)
        estimates[start : start + size, 1] = _win_share(flat, axis=1)
    point = _paired_statistics(diff)
    diff_ci, poi_ci = (tuple(np.percentile(estimates[:, i], [2.5, 97.5])) for i in range(2))
    return _paired_result(point, diff_ci, poi_ci)


def paired_interval_rliable(diff: np.ndarray, reps: int = 5000, seed: int = 0) -> dict[str, float]:
    """:func:`paired_interval` computed by rliable itself, one statistic call per resample (the reference)."""
    diff = np.asarray(diff, dtype=float)
    with _global_numpy_seed(seed):
        point, interval = rly.get_interval_estimates({"d": diff}, _paired_statistics, reps=reps)
    (mean_lo, poi_lo), (mean_hi, poi_hi) = interval["d"]
    return _paired_result(point["d"], (mean_lo, mean_hi), (poi_lo, poi_hi))


def _paired_result(point: np.ndarray, diff_ci: tuple[float, float], poi_ci: tuple[float, float]) -> dict[str, float]:
    return {
        "diff": float(point[0]),
        "diff_ci_low": float(diff_ci[0]),
        "diff_ci_high": float(diff_ci[1]),
        "poi": float(point[1]),
        "poi_ci_low": float(poi_ci[0]),
        "poi_ci_high": float(poi_ci[1]),
    }


def verdict(low: float, high: float) -> str:
    """``better`` or ``worse`` where the paired interval excludes 0, else ``not resolved``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not compared"
    return "better" if low > 0 else "worse" if high < 0 else "not resolved"


def _folders(run: Path | tuple[Path, ...]) -> list[Path]:
    return list(run) if isinstance(run, tuple) else [run]  # a pooled episode holds a tuple of folders


def _runs(frame: pd.DataFrame, column: str = "run") -> str:
    """The run folders of ``frame``'s rows, as a list of names."""
    return ", ".join(f"`{p.name}`" for p in sorted({p for run in frame[column] for p in _folders(run)}))


def _setup_difference(setup_a: str, setup_b: str) -> str:
    """The keys in which two episodes' setups (env config, max_steps) differ, with both values."""
    flat_a, flat_b = (pd.json_normalize(json.loads(s)).iloc[0].to_dict() for s in (setup_a, setup_b))
    keys = [k for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k, "<unset>") != flat_b.get(k, "<unset>")]
    return "; ".join(f"{k}: {flat_a.get(k, '<unset>')!r} vs {flat_b.get(k, '<unset>')!r}" for k in keys[:3])


def match_episodes(episodes: pd.DataFrame, env: str, agent: str, baseline: str) -> tuple[pd.DataFrame | None, str]:
    """The episodes of ``env`` that both ``agent`` and ``baseline`` played, side by side, and what was left out.

    Returns ``(pairs, note)``: ``pairs`` has ``env_seed``, ``score_x`` (agent), ``score_y`` (baseline),
    ``run_x`` and ``run_y``, sorted by env seed; None when the comparison is refused, with the reason
    (naming the run folders) in ``note``. A non-empty note with pairs lists the episodes left out.
    """
    sides = {}
    notes = []
    for who in (agent, baseline):
        mine = episodes[(episodes.env == env) & (episodes.agent == who)]
        unseeded = mine[mine.env_seed.isna()]
        if len(unseeded):
            notes.append(f"{len(unseeded)} episodes of {who} record no env seed, not paired ({_runs(unseeded)})")
        mine, refusal = pool_training_runs(mine, who)  # also drops the unseeded episodes
        if refusal:
            return None, refusal
        twice = mine[mine.env_seed.duplicated(keep=False)]
        if len(twice):
            return None, (
                f"{who} played the episode with env seed {twice.env_seed.iloc[0]} more than once "
                f"({_runs(twice)}): which one to pair is ambiguous"
            )
        sides[who] = mine
    x, y = sides[agent], sides[baseline]
    pairs = x.merge(y, on="env_seed", suffixes=("_x", "_y")).sort_values("env_seed")
    if pairs.empty:
        return None, f"no episode in common: {agent} ran {_runs(x) or 'none'}, {baseline} ran {_runs(y) or 'none'}"
    differ = pairs[(pairs.setup_x != pairs.setup_y) | (pairs.steps_x != pairs.steps_y)]
    if len(differ):
        first = differ.iloc[0]
        return None, (
            f"episodes with the same env seed ran under different setups in {_runs(differ.head(1), 'run_x')} "
            f"({agent}) and {_runs(differ.head(1), 'run_y')} ({baseline}): "
            f"{_setup_difference(first.setup_x, first.setup_y) or 'steps differ'}"
        )
    for who, side in ((agent, x), (baseline, y)):
        alone = side[~side.env_seed.isin(pairs.env_seed)]
        if len(alone):
            other = baseline if who == agent else agent
            notes.append(f"{len(alone)} episodes of {who} have no counterpart in {other} ({_runs(alone)}): left out")
    columns = ["env_seed", "score_x", "score_y", "run_x", "run_y", "training_set_x"]
    return pairs[columns].reset_index(drop=True), "; ".join(notes)


def pool_training_runs(mine: pd.DataFrame, who: str) -> tuple[pd.DataFrame, str]:
    """One allocator's episodes on one env, unseeded ones dropped, training seeds averaged: ``(episodes, refusal)``.

    A learned allocator is judged over several training seeds (issue 12: at least 3), each evaluated
    on the same episodes as the heuristics. Its rows then hold each env seed once per training run
    (``training_run``, :func:`experiments.sweep.episode_table`); pooled, each env seed's score is the
    mean over the training runs, so the paired difference is that of the training runs' average on
    the same episodes. Its interval resamples episodes and holds these trained models fixed: it says
    whether these runs beat the baseline on average, not how a new training seed would do. Every
    training run must have played the same env seeds under the same setup, and trained and untrained
    runs must not share a name; else ``refusal`` names the runs and nothing is averaged. The episodes
    come back with ``training_set``, the tuple of their training runs' ``agent.run`` (empty for an
    allocator that was not trained; a single run is left as it is), and a pooled episode's ``run`` is
    the tuple of its run folders.
    """
    trained = mine.training_run.notna()
    runs = sorted(mine.training_run[trained].unique())
    if trained.any() and not trained.all():
        return mine, (
            f"{who} names both trained runs ({_runs(mine[trained])}) and runs that are not "
            f"({_runs(mine[~trained])}): which episodes are its is ambiguous"
        )
    seeded = mine.dropna(subset=["env_seed"])
    seeded = seeded.assign(training_set=[tuple(runs)] * len(seeded))
    if len(runs) < 2:
        return seeded, ""
    lost = sorted(set(runs) - set(seeded.training_run))
    if lost:
        return seeded, f"{who}'s training run `{lost[0]}` recorded no env seed ({_runs(mine)}): nothing averaged"
    by_run = {run: g for run, g in seeded.groupby("training_run")}
    if any(g.env_seed.duplicated().any() for g in by_run.values()):
        return seeded, ""  # one training run holding an episode twice: left to the ambiguity check
    first, *rest = runs
    seeds = set(by_run[first].env_seed)
    for run in rest:
        if set(by_run[run].env_seed) != seeds:
            return seeded, (
                f"{who}'s training runs `{first}` and `{run}` played different episodes "
                f"({_runs(by_run[first])} vs {_runs(by_run[run])}): its training seeds are averaged only "
                "over the same env seeds"
            )
    by_seed = seeded.groupby("env_seed")
    if by_seed.setup.nunique().max() > 1 or by_seed.steps.nunique().max() > 1:
        return seeded, f"{who}'s training runs played the same env seeds under different setups ({_runs(seeded)})"
    pooled = by_seed.agg(
        env=("env", "first"),
        agent=("agent", "first"),
        steps=("steps", "first"),
        score=("score", "mean"),
        setup=("setup", "first"),
        run=("run", lambda folders: tuple(sorted(folders))),
        training_set=("training_set", "first"),
    ).reset_index()
    return pooled, ""


def best_heuristic(episodes: pd.DataFrame, env: str) -> str | None:
    """The heuristic with the highest mean episode score on ``env``; on ``all``, the highest mean over envs of
    its mean normalised score, among those that played every env.

    Candidates: the rules of :data:`agents.heuristics.HEURISTICS` but uniform (the other baseline); the
    oracles, which see the hidden truth, are references, not heuristics.
    """
    candidates = [h for h in HEURISTICS if h != REFERENCE_LOW]
    if env != "all":
        mine = episodes[(episodes.env == env) & episodes.agent.isin(candidates)]
        means = mine.groupby("agent")["score"].mean()
    else:
        per_env = episodes[episodes.agent.isin(candidates)].groupby(["agent", "env"])["normalised"].mean()
        per_env = per_env.unstack("env").reindex(columns=episodes.env.unique())
        means = per_env[per_env.notna().all(axis=1)].mean(axis=1)
    return str(means.idxmax()) if len(means) else None


def _comparison(
    episodes: pd.DataFrame, refs: dict[str, tuple[float, float]], env: str, agent: str, baseline: str, reps: int
) -> dict[str, object]:
    """One row of :func:`paired_comparisons`: ``agent`` against ``baseline`` on ``env`` (or ``all``)."""
    row: dict[str, object] = {"env": env, "agent": agent, "baseline": baseline, "episodes": 0}
    envs = [env] if env != "all" else sorted(episodes.env.unique())
    matched, notes = [], []
    for e in envs:
        pairs, note = match_episodes(episodes, e, agent, baseline)
        if note:
            notes.append(f"{e}: {note}" if env == "all" else note)
        if pairs is None:
            return {**row, "verdict": "not compared", "note": "; ".join(notes)}
        matched.append((e, pairs))
    sets = {e: p.training_set_x.iloc[0] for e, p in matched}
    row["training_runs"] = len(sets[envs[0]])  # 0: not trained
    if len(set(sets.values())) > 1:  # `all` would average different models on different envs
        listed = "; ".join(f"{e}: {', '.join(runs) or 'none'}" for e, runs in sets.items())
        return {
            **row,
            "verdict": "not compared",
            "note": f"{agent} was trained by different runs on different envs ({listed})",
        }
    if env == "all":
        missing = [e for e in envs if e not in refs]
        counts = {e: len(p) for e, p in matched}
        if missing:
            return {**row, "verdict": "not compared", "note": f"no uniform and oracle references on {missing}"}
        if len(set(counts.values())) > 1:
            notes.append(f"envs have different numbers of paired episodes ({counts}); stratified bootstrap needs equal")
            return {**row, "verdict": "not compared", "note": "; ".join(notes)}
        scale = {e: refs[e][1] - refs[e][0] for e in envs}
        diff = np.column_stack([(p.score_x - p.score_y).to_numpy() / scale[e] for e, p in matched])
        result = paired_interval(diff, reps)
        row.update(
            episodes=int(diff.size),
            normalised_diff=result["diff"],
            normalised_diff_ci_low=result["diff_ci_low"],
            normalised_diff_ci_high=result["diff_ci_high"],
            **{k: v for k, v in result.items() if k.startswith("poi")},
        )
        low, high = result["diff_ci_low"], result["diff_ci_high"]
    else:
        pairs = matched[0][1]
        result = paired_interval((pairs.score_x - pairs.score_y).to_numpy()[:, None], reps)
        row.update(episodes=len(pairs), **result, diff_pct=result["diff"] / pairs.score_y.mean())
        if env in refs:
            scale = refs[env][1] - refs[env][0]
            bounds = sorted((result["diff_ci_low"] / scale, result["diff_ci_high"] / scale))
            row.update(
                normalised_diff=result["diff"] / scale,
                normalised_diff_ci_low=bounds[0],
                normalised_diff_ci_high=bounds[1],
            )
        low, high = result["diff_ci_low"], result["diff_ci_high"]
    return {**row, "verdict": verdict(low, high), "note": "; ".join(notes)}


PAIRED_COLUMNS = [
    "env",
    "agent",
    "baseline",
    "role",
    "episodes",
    "training_runs",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "diff_pct",
    "normalised_diff",
    "normalised_diff_ci_low",
    "normalised_diff_ci_high",
    "poi",
    "poi_ci_low",
    "poi_ci_high",
    "verdict",
    "note",
]


def paired_comparisons(episodes: pd.DataFrame, table: pd.DataFrame, reps: int = 5000) -> pd.DataFrame:
    """Every allocator against the best heuristic and against uniform, per env (and ``all`` with several envs).

    :param episodes: :func:`experiments.sweep.episode_table` of the counted runs.
    :param table: :func:`experiments.sweep.run_table` of the same runs (for the normalisation's references).
    :return: one row per (env, allocator, baseline) in :data:`PAIRED_COLUMNS`: ``diff`` is the mean
        paired difference allocator - baseline in score units (per env; ``diff_pct`` relative to the
        baseline's mean on the paired episodes), ``normalised_diff`` in normalised-score units (the only
        one on ``all``), ``poi`` is P(allocator > baseline), ``verdict`` is ``better``, ``worse``,
        ``not resolved`` or ``not compared`` (with the reason in ``note``, which also lists episodes
        left out of a comparison).
    """
    if episodes.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    refs = references(table)
    episodes = normalise(episodes, refs)
    envs = sorted(episodes.env.unique())
    rows = []
    for env in [*envs, "all"] if len(envs) > 1 else envs:
        present = episodes.agent.unique() if env == "all" else episodes[episodes.env == env].agent.unique()
        baselines = {BEST_HEURISTIC: best_heuristic(episodes, env), UNIFORM: UNIFORM if UNIFORM in present else None}
        for agent in ordered_agents(list(present)):
            for role, baseline in baselines.items():
                if baseline is None or baseline == agent:
                    continue
                rows.append({"role": role, **_comparison(episodes, refs, env, agent, baseline, reps)})
    return pd.DataFrame(rows).reindex(columns=PAIRED_COLUMNS)


def with_paired(summary: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with each allocator's paired comparison to the best heuristic (``vs_best_*``) and to
    uniform (``vs_uniform_*``): the baseline's name, the differences with intervals, P(better), the verdict."""
    summary = summary.copy()
    for role, prefix in ((BEST_HEURISTIC, "vs_best"), (UNIFORM, "vs_uniform")):
        mine = paired[paired.role == role].set_index(["env", "agent"])
        columns = {
            "baseline": prefix,
            "training_runs": f"{prefix}_training_runs",
            "diff": f"{prefix}_diff",
            "diff_ci_low": f"{prefix}_diff_ci_low",
            "diff_ci_high": f"{prefix}_diff_ci_high",
            "normalised_diff": f"{prefix}_normalised_diff",
            "normalised_diff_ci_low": f"{prefix}_normalised_diff_ci_low",
            "normalised_diff_ci_high": f"{prefix}_normalised_diff_ci_high",
            "poi": f"{prefix}_poi",
            "verdict": f"{prefix}_verdict",
        }
        joined = mine[list(columns)].rename(columns=columns)
        summary = summary.join(joined, on=["env", "agent"])
    return summary


def performance_profiles(
    episodes: pd.DataFrame, table: pd.DataFrame, env: str, taus: np.ndarray | None = None, reps: int = 2000
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's performance profile of every allocator on ``env`` (``all``: every env, stratified by env).

    The fraction of episodes whose normalised score is above tau (rliable's score distribution),
    with 95% stratified-bootstrap bands. On ``all`` an allocator is drawn only if it played the same
    number of episodes in every env (rliable's (runs x tasks) matrix).

    :return: ``(taus, profiles, bands)``; ``bands[agent]`` is ``(2, len(taus))``: lower and upper bounds.
        Empty dicts when the env has no normalisation references.
    """
    episodes = normalise(episodes, references(table))
    mine = episodes if env == "all" else episodes[episodes.env == env]
    mine = mine[np.isfinite(mine["normalised"])]
    scores: dict[str, np.ndarray] = {}
    for agent in ordered_agents(list(mine.agent.unique())):
        per_env = [g["normalised"].to_numpy() for _, g in mine[mine.agent == agent].groupby("env")]
        if len({len(x) for x in per_env}) == 1 and len(per_env) == mine.env.nunique():
            scores[agent] = np.column_stack(per_env)
    if taus is None:
        pooled = np.concatenate([s.ravel() for s in scores.values()]) if scores else np.array([0.0, 1.0])
        taus = np.linspace(min(pooled.min(), 0.0), max(pooled.max(), 1.0), 101)
    if not scores:
        return taus, {}, {}
    with _global_numpy_seed(0):
        profiles, bands = rly.create_performance_profile(
            scores, taus, custom_profile_func=score_distribution, reps=reps
        )
    return taus, profiles, bands


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's ``score_distributions`` (the fraction of all runs x tasks scores above each tau), vectorised
    over tau: rliable's loops over tau in Python on every bootstrap resample."""
    return (np.asarray(scores, dtype=float).reshape(-1, 1) > np.asarray(taus)[None, :]).mean(axis=0)
