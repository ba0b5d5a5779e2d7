"""Pretraining windows: an endless, seeded stream mixing real, KernelSynth and TSMixup series.

Each window is drawn in three steps: a source by `source_probs` (corpus: a real series sampled by
data set; tsmixup: a mix of real series; kernelsynth: a Gaussian-process series); a context length
C ~ U{min_context..max_context} and a horizon H ~ U{min_horizon..max_horizon}; a random cut of the
series. Windows are padded to the fixed maxima so any batch stacks:

    context      (max_context,)  [ 0 ... 0 | c_1 ... c_C ]    left-padded, mask 0 on the pads
    future       (max_horizon,)  [ f_1 ... f_H | 0 ... 0 ]    right-padded, mask 0 on the pads
    context_mask, future_mask    float32, 1 = observed; NaN gaps are 0 in values and masks
    scale        ()              mean |x| of the observed context; values are divided by it
    context_length, horizon ()   int64: C and H as cut (C is shorter only when the series is)
    source       str             "corpus", "tsmixup" or "kernelsynth"

Scaling, padding and masks follow `TrainWindowDataset` (data/windows.py), so pretraining and
per-data-set training feed the model the same thing. Seeding: worker w of rank r draws from
numpy Generator([seed, r, w, epoch]); the stream is reproducible from one seed for a fixed number
of workers, and no two workers repeat each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ebt_forecast.data.corpus import DEFAULT_CACHE_BYTES, CorpusSampler
from ebt_forecast.data.kernelsynth import iter_kernelsynth
from ebt_forecast.data.tsmixup import tsmixup
from ebt_forecast.data.windows import SCALINGS, context_scaling
from ebt_forecast.errors import ConfigError, DataError

SOURCES = ("corpus", "tsmixup", "kernelsynth")


@dataclass
class PretrainDataConfig:
    """Where pretraining windows come from and how they are cut (Hydra fills it)."""

    corpus_root: Optional[str] = None  # e.g. ../shared/data/corpus; None: synthetic only
    source_probs: dict[str, float] = field(
        default_factory=lambda: {"corpus": 0.6, "tsmixup": 0.3, "kernelsynth": 0.1})
    min_context: int = 16
    max_context: int = 512
    min_horizon: int = 1
    max_horizon: int = 64
    corpus_weights: Optional[dict[str, float]] = None  # {data set name: weight}; None: tempered shares
    corpus_temperature: float = 0.5  # data set weight ~ points ** temperature ...
    corpus_max_share: float = 0.1  # ... capped at this share
    corpus_series_fraction: float = 1.0  # a data budget: draw from this seeded share of each data set's series
    cache_bytes: int = DEFAULT_CACHE_BYTES  # decoded corpus files held per worker
    kernelsynth_length: int = 1024
    kernelsynth_max_kernels: int = 5
    # A GP path costs ~40 ms (Cholesky of 1024 x 1024), a real window ~0.3 ms. Paths wait in a pool of
    # kernelsynth_pool; each draw takes a random one and replaces it with a fresh path with probability
    # 1 / kernelsynth_reuse, so a path serves `reuse` windows on average (random cuts, spread over
    # batches). Chronos' 1M pre-generated paths were each seen ~5 times; reuse 1 = a fresh path per window.
    kernelsynth_reuse: float = 4.0
    kernelsynth_pool: int = 64
    tsmixup_k_max: int = 3
    tsmixup_alpha: float = 1.5
    tsmixup_min_length: int = 128
    tsmixup_max_length: int = 2048
    min_scale: float = 1e-5
    scaling: str = "mean"  # how a window is normalised from its context: mean (|x|) or standard (mean, std)
    seed: int = 0

    def validate(self) -> None:
        if self.scaling not in SCALINGS:
            raise ConfigError(f"pretrain data: scaling={self.scaling!r} is invalid: must be one of {', '.join(SCALINGS)}")
        """ConfigError naming the first bad key."""
        for key in ("min_context", "min_horizon", "kernelsynth_length", "kernelsynth_reuse", "kernelsynth_pool"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain data: {key} must be >= 1, got {getattr(self, key)}")
        for lo, hi in (("min_context", "max_context"), ("min_horizon", "max_horizon")):
            if getattr(self, lo) > getattr(self, hi):
                raise ConfigError(f"pretrain data: {lo}={getattr(self, lo)} exceeds {hi}={getattr(self, hi)}")
        if not 0 < self.corpus_series_fraction <= 1:
            raise ConfigError(f"pretrain data: corpus_series_fraction must be in (0, 1], got {self.corpus_series_fraction}")
        unknown = sorted(set(self.source_probs) - set(SOURCES))
        if unknown:
            raise ConfigError(f"pretrain data: source_probs has unknown source {unknown[0]!r}; known: {list(SOURCES)}")
        probs = self.source_probs
        if any(not np.isfinite(v) or v < 0 for v in probs.values()) or sum(probs.values()) <= 0:
            raise ConfigError(f"pretrain data: source_probs must be >= 0 and not all 0, got {dict(probs)}")
        if self.corpus_root is None and (probs.get("corpus", 0) > 0 or probs.get("tsmixup", 0) > 0):
            raise ConfigError("pretrain data: corpus_root is None but source_probs gives the corpus or "
                              "tsmixup a positive probability (set corpus_root, or their probabilities to 0)")


def cut_window(values: np.ndarray, rng: np.random.Generator, min_context: int = 16, max_context: int = 512,
               min_horizon: int = 1, max_horizon: int = 64, min_scale: float = 1e-5,
               scaling: str = "mean") -> dict[str, torch.Tensor] | None:
    """One random (context, future) window of `values`, scaled and padded; None if either part is unobserved.

    The horizon is capped at half the series so a short series still gets as much context as future;
    the cut point is drawn so the context is full (C points) whenever the series allows.
    """
    n = len(values)
    if n < 2:
        return None
    c = int(rng.integers(min_context, max_context + 1))
    h = min(int(rng.integers(min_horizon, max_horizon + 1)), n // 2)
    t = int(rng.integers(min(c, n - h), n - h + 1))  # the first future index
    ctx = np.asarray(values[max(0, t - c):t], dtype=np.float32)
    fut = np.asarray(values[t:t + h], dtype=np.float32)
    ctx_obs, fut_obs = np.isfinite(ctx), np.isfinite(fut)
    if not ctx_obs.any() or not fut_obs.any():
        return None
    loc, scale = context_scaling(ctx, scaling, min_scale)
    context, context_mask = np.zeros(max_context, np.float32), np.zeros(max_context, np.float32)
    future, future_mask = np.zeros(max_horizon, np.float32), np.zeros(max_horizon, np.float32)
    context[max_context - len(ctx):] = np.where(ctx_obs, (ctx - loc) / scale, 0.0)
    context_mask[max_context - len(ctx):] = ctx_obs
    future[:h] = np.where(fut_obs, (fut - loc) / scale, 0.0)
    future_mask[:h] = fut_obs
    return {
        "context": torch.from_numpy(context),
        "context_mask": torch.from_numpy(context_mask),
        "future": torch.from_numpy(future),
        "future_mask": torch.from_numpy(future_mask),
        "scale": torch.tensor(scale, dtype=torch.float32),
        "loc": torch.tensor(loc, dtype=torch.float32),
        "context_length": torch.tensor(len(ctx), dtype=torch.int64),
        "horizon": torch.tensor(h, dtype=torch.int64),
    }


class PretrainWindowStream(IterableDataset):
    """Endless (or `num_windows` long) stream of pretraining windows; see the module docstring.

    The corpus is indexed once here (~0.5 s for the real corpus); each worker, forked or spawned,
    decodes files into its own bounded cache as it draws from them. `rank` separates the streams
    of distributed processes; `set_epoch` the streams of successive epochs.
    """

    def __init__(self, config: PretrainDataConfig, num_windows: int | None = None, rank: int = 0) -> None:
        config.validate()
        if num_windows is not None and num_windows < 0:
            raise ConfigError(f"pretrain data: num_windows must be >= 0, got {num_windows}")
        self.config, self.num_windows, self.rank, self.epoch = config, num_windows, rank, 0
        self.probs = np.array([float(config.source_probs.get(s, 0.0)) for s in SOURCES])
        self.probs /= self.probs.sum()
        self.sampler = None
        if config.corpus_root is not None:
            self.sampler = CorpusSampler(config.corpus_root, config.corpus_weights, config.corpus_temperature,
                                         config.corpus_max_share, config.cache_bytes,
                                         series_fraction=config.corpus_series_fraction, subset_seed=config.seed)

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still reproducible) stream for each epoch."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.config.seed, self.rank, worker, self.epoch])
        count = None
        if self.num_windows is not None:  # split the total across workers
            count = self.num_windows // workers + (worker < self.num_windows % workers)
        draw = self._series_drawer(rng)
        cfg, produced, failures = self.config, 0, 0
        while count is None or produced < count:
            source = SOURCES[int(rng.choice(len(SOURCES), p=self.probs))]
            window = cut_window(draw(source), rng, cfg.min_context, cfg.max_context,
                                cfg.min_horizon, cfg.max_horizon, cfg.min_scale, cfg.scaling)
            if window is None:  # an all-gap context or future: draw again
                failures += 1
                if failures > 1000:
                    raise DataError(f"pretrain data: 1000 draws in a row gave no observed window "
                                    f"(last source {source!r})")
                continue
            failures = 0
            window["source"] = source
            produced += 1
            yield window

    def _series_drawer(self, rng: np.random.Generator) -> Callable[[str], np.ndarray]:
        """source name -> one series from it, all draws from `rng`."""
        cfg, sampler = self.config, self.sampler
        synth = iter_kernelsynth(cfg.kernelsynth_length, rng, cfg.kernelsynth_max_kernels)
        pool: list[np.ndarray] = []

        def draw(source: str) -> np.ndarray:
            if source == "corpus":
                return sampler.sample_series(rng, min_length=2).values
            if source == "tsmixup":
                return tsmixup(lambda r: sampler.sample_series(r, min_length=cfg.tsmixup_min_length).values, rng,
                               cfg.tsmixup_k_max, cfg.tsmixup_alpha, cfg.tsmixup_min_length,
                               cfg.tsmixup_max_length).target
            if len(pool) < cfg.kernelsynth_pool:
                pool.append(next(synth))
                return pool[-1]
            i = int(rng.integers(len(pool)))
            if rng.random() < 1.0 / cfg.kernelsynth_reuse:
                pool[i] = next(synth)
            return pool[i]

        return draw
