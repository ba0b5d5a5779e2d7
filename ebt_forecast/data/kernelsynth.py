"""KernelSynth: synthetic series drawn from Gaussian-process priors with random composite kernels.

As in Chronos (Ansari et al. 2024, Algorithm 2): a bank of scikit-learn kernels (linear, RBF,
rational quadratic, periodic at the natural periods of common frequencies, white noise, constant);
draw J ~ U{1..max_kernels} kernels from the bank with replacement, fold them together with a random
`+` or `*` at each step, and sample one path of the GP prior on a regular grid.

Contract:
    kernelsynth_series(n, length, seed) -> n float64 arrays of shape (length,)
    iter_kernelsynth(length, seed)      -> endless stream of the same arrays, in the same order
Same seed (int or numpy Generator state), same series. The grid is x_i = i / length, so a periodic
kernel with `periodicity = p / length` repeats every p samples whatever the length.

Speed: scikit-learn evaluates a composite kernel with pdist and trigonometry on every call
(~20 ms per leaf at length 1024). On a regular grid a stationary leaf's covariance is Toeplitz, so
`GridCovariance` evaluates each leaf's first row once, rebuilds the matrix from it and folds the
sums and products itself; the result equals `kernel(x)` (tested). Cholesky then dominates.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy.linalg import toeplitz
from sklearn.gaussian_process.kernels import (
    RBF,
    ConstantKernel,
    DotProduct,
    ExpSineSquared,
    Kernel,
    Product,
    RationalQuadratic,
    Sum,
    WhiteKernel,
)

from ebt_forecast.errors import ConfigError

# Natural periods (in samples) of common frequencies, as in Chronos' bank:
# hourly 24/48/96 (day, 2 days, 4 days) and 168/336/672 (weeks); daily 7/14 (weeks), 30/60
# (months), 365/730 (years); weekly 4/26/52; monthly 6/12; quarterly 4/40; yearly 10.
PERIODS: tuple[int, ...] = (24, 48, 96, 168, 336, 672, 7, 14, 30, 60, 365, 730, 4, 26, 52, 6, 12, 40, 10)


def kernel_bank(length: int = 1024) -> list[Kernel]:
    """The Chronos kernel bank with periodic kernels scaled to a grid of `length` points."""
    if length < 2:
        raise ConfigError(f"kernelsynth length must be >= 2, got {length}")
    periodic = [ExpSineSquared(length_scale=1.0, periodicity=p / length) for p in PERIODS]
    return periodic + [
        DotProduct(sigma_0=0.0), DotProduct(sigma_0=1.0), DotProduct(sigma_0=10.0),
        RBF(length_scale=0.1), RBF(length_scale=1.0), RBF(length_scale=10.0),
        RationalQuadratic(alpha=0.1), RationalQuadratic(alpha=1.0), RationalQuadratic(alpha=10.0),
        WhiteKernel(noise_level=0.1), WhiteKernel(noise_level=1.0),
        ConstantKernel(),
    ]


def random_kernel(rng: np.random.Generator, bank: Sequence[Kernel], max_kernels: int = 5) -> Kernel:
    """J ~ U{1..max_kernels} kernels from `bank` (with replacement) folded by random + or *."""
    if max_kernels < 1:
        raise ConfigError(f"kernelsynth max_kernels must be >= 1, got {max_kernels}")
    picks = rng.integers(len(bank), size=int(rng.integers(1, max_kernels + 1)))
    kernel = bank[picks[0]]
    for j in picks[1:]:
        kernel = kernel + bank[j] if rng.random() < 0.5 else kernel * bank[j]
    return kernel


class GridCovariance:
    """kernel -> its covariance matrix (length, length) on the grid i / length, leaves cached."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.x = np.arange(length, dtype=np.float64)[:, None] / length
        self._rows: dict[str, np.ndarray] = {}  # repr(stationary leaf) -> first row of its covariance

    def __call__(self, kernel: Kernel) -> np.ndarray:
        """The covariance of `kernel` on the grid: equal to kernel(x), computed faster."""
        if isinstance(kernel, Sum):
            return self(kernel.k1) + self(kernel.k2)
        if isinstance(kernel, Product):
            return self(kernel.k1) * self(kernel.k2)
        if not kernel.is_stationary():  # DotProduct: sigma_0^2 + x x', cheap as it is
            return kernel(self.x)
        key = repr(kernel)
        if key not in self._rows:
            # One full evaluation, not kernel(x[:1], x): WhiteKernel adds its noise only when Y is None.
            self._rows[key] = kernel(self.x)[0].copy()
        return toeplitz(self._rows[key])


def sample_gp(kernel: Kernel, length: int, rng: np.random.Generator, jitter: float = 1e-6,
              max_tries: int = 4, covariance: GridCovariance | None = None) -> np.ndarray:
    """One path (length,) of the zero-mean GP prior with `kernel` on the grid i / length.

    Cholesky with a diagonal jitter grown tenfold per failure; periodic and linear kernels give
    singular covariances, so when Cholesky keeps failing fall back to an eigendecomposition with
    negative eigenvalues clipped (Chronos samples with eigh throughout; Cholesky is ~3x faster).
    """
    covariance = covariance if covariance is not None and covariance.length == length else GridCovariance(length)
    cov = covariance(kernel)
    if not np.all(np.isfinite(cov)):
        raise np.linalg.LinAlgError("kernel covariance is not finite")
    z = rng.standard_normal(length)
    scale = max(float(np.mean(np.diag(cov))), 1e-12)
    for k in range(max_tries):
        try:
            chol = np.linalg.cholesky(cov + np.eye(length) * (jitter * 10.0 ** k * scale))
            return chol @ z
        except np.linalg.LinAlgError:
            continue
    w, v = np.linalg.eigh(cov)
    return v @ (np.sqrt(np.clip(w, 0.0, None)) * z)


def iter_kernelsynth(length: int = 1024, seed: int | np.random.Generator = 0,
                     max_kernels: int = 5) -> Iterator[np.ndarray]:
    """Endless stream of KernelSynth series of `length` points, reproducible from `seed`."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    bank, covariance = kernel_bank(length), GridCovariance(length)
    while True:
        kernel = random_kernel(rng, bank, max_kernels)
        try:
            y = sample_gp(kernel, length, rng, covariance=covariance)
        except np.linalg.LinAlgError:  # rare: even eigh failed; draw another kernel (Chronos does the same)
            continue
        if np.all(np.isfinite(y)):
            yield y


def kernelsynth_series(n: int, length: int = 1024, seed: int | np.random.Generator = 0,
                       max_kernels: int = 5) -> list[np.ndarray]:
    """`n` KernelSynth series of `length` points (float64), the same for the same seed."""
    if n < 0:
        raise ConfigError(f"kernelsynth n must be >= 0, got {n}")
    stream = iter_kernelsynth(length, seed, max_kernels)
    return [next(stream) for _ in range(n)]
