"""The opportunity's draw primitives: 32-bit split uniforms and the table quantile functions.

The step kernel draws an opportunity's user quality and market bid from one hash split into two 32-bit
uniforms, each turned into a log-normal by :func:`envs.kernels.lognormal_quantile` (a knot table of
``exp(sigma z + shift)`` at the knots of :func:`envs.kernels.normal_quantile`, linear interpolation in
the body, ``exp`` of the exact normal tail beyond). These tests pin what the simulator's statistics
rely on: the quantiles match scipy's within the stated tolerance, the moments of z and of the
lognormal user quality are those of the exact normal, the two uniforms are in (0, 1) and independent,
and the kernel's split equals the reference's (Python integers) bit for bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from scipy import stats

from envs import reference
from envs.kernels import (
    NORMAL_KNOTS,
    QUANTILE_INTERVALS,
    QUANTILE_TAIL,
    SLOT_Z1,
    hash_at,
    lognormal_knots,
    lognormal_quantile,
    normal_quantile,
    pack_inputs,
    uniform_pair32,
)
from envs.scenario import load_scenario

# Linear interpolation between knots 1/2048 apart: the largest error is at the first body interval
# (u = 1/64, z = -2.15), 4.1e-5; the tail function is Acklam's approximation refined by a Halley step.
BODY_ATOL = 5e-5
TAIL_RTOL = 1e-12


@nb.njit
def _quantiles(u):
    z = np.empty(u.shape[0])
    for i in range(u.shape[0]):
        z[i] = normal_quantile(u[i])
    return z


@nb.njit
def _lognormals(u, sigma, shift, knots):
    x = np.empty(u.shape[0])
    for i in range(u.shape[0]):
        x[i] = lognormal_quantile(u[i], sigma, shift, knots)
    return x


@nb.njit
def _opportunity_normals(key, n):
    """The kernel's path for ``n`` opportunities: hash, split, quantile (quality and market halves)."""
    z = np.empty((n, 2))
    for o in range(n):
        u_quality, u_market = uniform_pair32(hash_at(hash_at(key, o), SLOT_Z1))
        z[o, 0] = normal_quantile(u_quality)
        z[o, 1] = normal_quantile(u_market)
    return z


@nb.njit
def _split(key, slot):
    return uniform_pair32(hash_at(key, slot))


def _midpoints(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def test_body_quantiles_match_scipy_within_the_interpolation_bound():
    lo, hi = QUANTILE_TAIL / QUANTILE_INTERVALS, 1.0 - QUANTILE_TAIL / QUANTILE_INTERVALS
    u = lo + (hi - lo) * _midpoints(1 << 20)
    error = np.abs(_quantiles(u) - stats.norm.ppf(u))
    assert error.max() <= BODY_ATOL
    assert error.max() > 1e-6  # the body really is interpolated (the bound is not vacuous)


def test_tail_quantiles_are_exact():
    # Down to the smallest 32-bit uniform, 2**-33 (|z| = 6.34: where a 32-bit draw truncates the normal).
    u = np.geomspace(2.0**-33, QUANTILE_TAIL / QUANTILE_INTERVALS, 4000, endpoint=False)
    np.testing.assert_allclose(_quantiles(u), stats.norm.ppf(u), rtol=TAIL_RTOL)
    np.testing.assert_allclose(_quantiles(1.0 - u), stats.norm.ppf(1.0 - u), rtol=1e-9)


def test_quantile_function_is_monotone_and_continuous_at_the_tail_boundary():
    z = _quantiles(_midpoints(1 << 22))
    assert np.all(np.diff(z) > 0)
    edge = QUANTILE_TAIL / QUANTILE_INTERVALS
    for u in (edge, 1.0 - edge):
        below, above = _quantiles(np.array([np.nextafter(u, 0.0), u]))
        assert abs(above - below) < 1e-9


@pytest.mark.parametrize("sigma", [0.4, 1.0])
def test_moments_equal_the_normals(sigma):
    """Moments by quadrature over u (midpoints of 2**22 cells: deterministic, no sampling noise)."""
    z = _quantiles(_midpoints(1 << 22))
    assert abs(z.mean()) < 1e-9  # antisymmetric knots
    assert z.var() == pytest.approx(1.0, abs=2e-5)  # the quadrature itself cuts |z| > 5.1
    # The user quality exp(sigma z - sigma^2 / 2) has mean 1 (it only scales conversion rates).
    assert np.exp(sigma * z - 0.5 * sigma * sigma).mean() == pytest.approx(1.0, abs=5e-5)


def test_opportunity_normals_are_standard_and_independent():
    z = _opportunity_normals(np.uint64(20261129), 400_000)
    for column in z.T:
        assert stats.kstest(column, "norm").pvalue > 1e-3
        assert abs(column.mean()) < 5.0 / np.sqrt(len(column))
        assert column.var() == pytest.approx(1.0, abs=0.01)
    assert abs(np.corrcoef(z.T)[0, 1]) < 5.0 / np.sqrt(len(z))


# Linear interpolation of exp(sigma z(u)) between knots 1/2048 apart: the relative error grows with
# sigma (the curvature of exp(sigma z) in u), largest in the first and last body intervals.
LOGNORMAL_BODY_RTOL = {0.15: 1e-5, 0.4: 3e-5, 2.0: 2e-4, 3.0: 3.5e-4}  # 3: the largest market_sigma


@pytest.mark.parametrize("sigma", sorted(LOGNORMAL_BODY_RTOL))
def test_lognormal_quantiles_match_the_exact_ones(sigma):
    shift = -0.5 * sigma * sigma
    knots = lognormal_knots(sigma, shift)
    lo, hi = QUANTILE_TAIL / QUANTILE_INTERVALS, 1.0 - QUANTILE_TAIL / QUANTILE_INTERVALS
    body = lo + (hi - lo) * _midpoints(1 << 20)
    exact = np.exp(sigma * stats.norm.ppf(body) + shift)
    error = np.abs(_lognormals(body, sigma, shift, knots) / exact - 1.0)
    assert error.max() <= LOGNORMAL_BODY_RTOL[sigma]
    assert error.max() > 1e-3 * LOGNORMAL_BODY_RTOL[sigma]  # the body really is interpolated
    # The tails are exp of normal_quantile's exact tail function.
    tail = np.geomspace(2.0**-33, lo, 2000, endpoint=False)
    for u in (tail, 1.0 - tail):
        exact_tail = np.exp(sigma * _quantiles(u) + shift)
        np.testing.assert_allclose(_lognormals(u, sigma, shift, knots), exact_tail, rtol=1e-14)
    # Monotone, and continuous where body and tails meet.
    assert np.all(np.diff(_lognormals(_midpoints(1 << 20), sigma, shift, knots)) > 0)
    for u in (lo, hi):
        below, above = _lognormals(np.array([np.nextafter(u, 0.0), u]), sigma, shift, knots)
        assert abs(above / below - 1.0) < 1e-8


@pytest.mark.parametrize("preset", ["default", "credit"])
def test_pack_inputs_builds_each_tables_knots_from_the_scenario(preset):
    """The kernel and the reference read the same tables, so alignment cannot catch a wrong one: each
    channel's market table is exp(its own market_sigma z), the quality's exp(sigma z - sigma^2 / 2)."""
    sc = load_scenario(preset)
    inputs = pack_inputs(sc, 2)
    z = NORMAL_KNOTS
    sigma_q = sc.user_quality_sigma
    np.testing.assert_allclose(inputs.quality_knots, np.exp(sigma_q * z - 0.5 * sigma_q**2), rtol=1e-15)
    assert len({spec.market_sigma for spec in sc.channels}) > 1  # a channel mix-up would show
    assert inputs.market_knots.shape == (len(sc.channels), len(z))
    for c, spec in enumerate(sc.channels):
        np.testing.assert_allclose(inputs.market_knots[c], np.exp(spec.market_sigma * z), rtol=1e-15)


@pytest.mark.parametrize("sigma", [0.4, 1.0])
def test_table_user_quality_has_mean_one(sigma):
    """The user quality exp(sigma z - sigma^2 / 2) read off its table still averages 1 (quadrature)."""
    shift = -0.5 * sigma * sigma
    quality = _lognormals(_midpoints(1 << 22), sigma, shift, lognormal_knots(sigma, shift))
    assert quality.mean() == pytest.approx(1.0, abs=5e-5)


@pytest.mark.parametrize("word", [0, 1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 0x9E3779B97F4A7C15])
def test_split_uniforms_lie_in_the_open_unit_interval(word):
    for u in uniform_pair32(np.uint64(word)):
        assert 0.0 < u < 1.0


def test_kernel_split_equals_reference_split():
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, 500, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    for i, key in enumerate(keys):
        slot = int(i % 17)
        assert _split(key, slot) == reference.uniform_pair32(int(key), slot)
