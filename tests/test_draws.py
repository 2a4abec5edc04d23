"""The opportunity's draw primitives: 32-bit split uniforms and the table normal quantile function.

The step kernel draws an opportunity's user quality and market bid from one hash split into two 32-bit
uniforms, each turned into a normal by :func:`envs.kernels.normal_quantile` (knot table with linear
interpolation in the body, an exact tail function beyond). These tests pin what the simulator's
statistics rely on: the quantiles match scipy's within the stated tolerance, the moments of z and of the
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
    QUANTILE_INTERVALS,
    QUANTILE_TAIL,
    SLOT_Z1,
    hash_at,
    normal_quantile,
    uniform_pair32,
)

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
