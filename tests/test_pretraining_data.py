"""Pretraining data: KernelSynth, TSMixup, the corpus sampler and cache, windows, disjointness."""
from __future__ import annotations

import gzip
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.gaussian_process.kernels import ExpSineSquared

from ebt_forecast.data.corpus import (
    CorpusSampler,
    ParquetCache,
    assert_disjoint,
    dataset_weights,
    index_corpus,
    load_series_table,
)
from ebt_forecast.data.kernelsynth import (
    PERIODS,
    GridCovariance,
    iter_kernelsynth,
    kernel_bank,
    kernelsynth_series,
    random_kernel,
    sample_gp,
)
from ebt_forecast.data.pretrain_windows import PretrainDataConfig, PretrainWindowStream, cut_window
from ebt_forecast.data.tsmixup import tsmixup
from ebt_forecast.errors import ConfigError, DataError


def write_long_parquet(path: Path, series: dict[str, np.ndarray], shuffle_seed: int | None = None) -> Path:
    """Write {item_id: values} as a corpus file (item_id, timestamp, target), rows optionally shuffled."""
    ids, stamps, values = [], [], []
    start = datetime(2000, 1, 1)
    for item, y in series.items():
        ids += [item] * len(y)
        stamps += [start + timedelta(hours=i) for i in range(len(y))]
        values += [float(v) for v in y]
    table = pa.table({"item_id": pa.array(ids, pa.string()), "timestamp": pa.array(stamps, pa.timestamp("ms")),
                      "target": pa.array(values, pa.float64())})
    if shuffle_seed is not None:
        table = table.take(np.random.default_rng(shuffle_seed).permutation(len(table)))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def random_walk(rng: np.random.Generator, n: int, level: float = 100.0) -> np.ndarray:
    return level + np.cumsum(rng.normal(size=n))


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """Three data sets of different sizes; the smallest has NaN gaps; rows stored out of order."""
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    write_long_parquet(root / "big" / "big_hourly.parquet", {"big/a": random_walk(rng, 900)}, shuffle_seed=1)
    write_long_parquet(root / "mid" / "mid_daily.parquet",
                       {"mid/a": random_walk(rng, 200), "mid/b": random_walk(rng, 200)}, shuffle_seed=2)
    gappy = random_walk(rng, 300)
    gappy[[5, 6, 7, 150]] = np.nan
    write_long_parquet(root / "small" / "small_weekly.parquet", {"small/a": gappy, "small/b": random_walk(rng, 50)})
    return root


# ---- KernelSynth ------------------------------------------------------------------------------

def test_kernelsynth_same_seed_same_series_different_seed_different():
    a = kernelsynth_series(3, length=128, seed=7)
    b = kernelsynth_series(3, length=128, seed=7)
    c = kernelsynth_series(3, length=128, seed=8)
    assert all(x.shape == (128,) and np.isfinite(x).all() for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.allclose(x, y) for x, y in zip(a, c))
    stream = iter_kernelsynth(128, seed=7)  # the stream yields the same series in the same order
    assert all(np.array_equal(next(stream), x) for x in a)


def test_grid_covariance_equals_sklearn_kernel():
    rng, length = np.random.default_rng(1), 96
    bank, grid = kernel_bank(length), GridCovariance(length)
    for _ in range(15):
        kernel = random_kernel(rng, bank, max_kernels=5)
        np.testing.assert_allclose(grid(kernel), kernel(grid.x), rtol=1e-9, atol=1e-12, err_msg=repr(kernel))


def test_bank_periodic_kernels_repeat_at_the_natural_periods_in_samples():
    length = 800
    grid = GridCovariance(length)
    periodic = [k for k in kernel_bank(length) if isinstance(k, ExpSineSquared)]
    assert len(periodic) == len(PERIODS)
    for kernel, period in zip(periodic, PERIODS):
        row = grid(kernel)[0]
        assert row[period] == pytest.approx(row[0], abs=1e-9), period  # one full period apart: fully correlated
        if period >= 4:
            assert row[period // 2] < 0.5 * row[0], period  # half a period apart: weakly correlated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_periodic_kernel_gives_autocorrelation_peak_at_its_period(seed):
    length, period = 512, 24
    y = sample_gp(ExpSineSquared(length_scale=1.0, periodicity=period / length), length, np.random.default_rng(seed))
    y = y - y.mean()
    acf = np.array([np.dot(y[:-k], y[k:]) / np.dot(y, y) for k in range(1, 41)])  # lags 1..40
    assert int(np.argmax(acf[1:])) + 2 == period  # lags 2..40: lag 1 is trivially high for smooth paths
    assert acf[period - 1] > 0.9 and acf[period // 2 - 1] < 0.6


# ---- TSMixup ----------------------------------------------------------------------------------

def test_tsmixup_is_a_convex_mix_of_scaled_windows():
    rng = np.random.default_rng(0)
    pool = [random_walk(rng, n, level) for n, level in [(300, 5.0), (500, -40.0), (90, 1000.0), (400, 0.1)]]
    draw = lambda r: pool[int(r.integers(len(pool)))]  # noqa: E731
    ks = set()
    for _ in range(200):
        mix = tsmixup(draw, rng, k_max=3, alpha=1.5, min_length=64, max_length=256)
        k, length = mix.components.shape
        ks.add(k)
        assert 64 <= length <= 256 or length == 90  # clipped only by the shortest source (90)
        assert mix.target.shape == (length,) and mix.weights.shape == (k,)
        assert np.all(mix.weights > 0) and mix.weights.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(np.abs(mix.components).mean(axis=1), 1.0, rtol=1e-9)  # each mean-abs scaled
        assert np.all(mix.target >= mix.components.min(axis=0) - 1e-9)
        assert np.all(mix.target <= mix.components.max(axis=0) + 1e-9)
        np.testing.assert_allclose(mix.target, mix.weights @ mix.components)
    assert ks == {1, 2, 3}
    a = tsmixup(draw, np.random.default_rng(5), min_length=64, max_length=256)
    b = tsmixup(draw, np.random.default_rng(5), min_length=64, max_length=256)
    assert np.array_equal(a.target, b.target)


def test_tsmixup_keeps_gaps_as_nan():
    gappy = np.arange(1.0, 101.0)
    gappy[10:20] = np.nan
    mix = tsmixup(lambda r: gappy, np.random.default_rng(0), k_max=1, min_length=100, max_length=100)
    assert np.isnan(mix.target[10:20]).all() and np.isfinite(np.delete(mix.target, range(10, 20))).all()


# ---- corpus: index, weights, sampling, cache --------------------------------------------------

def test_index_counts_series_and_observed_points(tiny_corpus):
    index = {d.name: d for d in index_corpus(tiny_corpus)}
    assert sorted(index) == ["big/big_hourly", "mid/mid_daily", "small/small_weekly"]
    assert (index["big/big_hourly"].n_series, index["big/big_hourly"].n_points) == (1, 900)
    assert (index["mid/mid_daily"].n_series, index["mid/mid_daily"].n_points) == (2, 400)
    assert (index["small/small_weekly"].n_series, index["small/small_weekly"].n_points) == (2, 346)  # 4 NaN


def test_index_names_the_file_and_missing_column(tmp_path):
    bad = tmp_path / "c" / "x.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.table({"item_id": ["a"], "value": [1.0], "timestamp": [datetime(2000, 1, 1)]}), bad)
    with pytest.raises(DataError, match=r"x\.parquet.*'target'"):
        index_corpus(tmp_path / "c")


def test_default_weights_are_sqrt_tempered_and_capped():
    w = dataset_weights([10_000, 100, 1], temperature=0.5, max_share=0.5)  # sqrt: 100, 10, 1
    np.testing.assert_allclose(w, [0.5, 0.5 * 10 / 11, 0.5 * 1 / 11])
    np.testing.assert_allclose(dataset_weights([400, 100], temperature=0.5, max_share=1.0), [2 / 3, 1 / 3])
    np.testing.assert_allclose(dataset_weights([400, 100, 0], temperature=0.0, max_share=1.0), [0.5, 0.5, 0.0])
    w = dataset_weights(np.arange(1, 30) ** 3, max_share=0.1)
    assert w.max() <= 0.1 + 1e-12 and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("weights", [None, {"big/big_hourly": 0.2, "mid/mid_daily": 0.7, "small/small_weekly": 0.1}])
def test_sampler_draws_data_sets_at_their_weights(tiny_corpus, weights):
    sampler = CorpusSampler(tiny_corpus, weights=weights, max_share=1.0)
    if weights is not None:
        np.testing.assert_allclose(sampler.weights, [0.2, 0.7, 0.1])
    else:
        np.testing.assert_allclose(sampler.weights, np.sqrt([900, 400, 346]) / np.sqrt([900, 400, 346]).sum())
    rng = np.random.default_rng(0)
    counts = np.bincount([sampler.sample_dataset(rng) for _ in range(5000)], minlength=3)
    np.testing.assert_allclose(counts / 5000, sampler.weights, atol=0.025)


def test_sampler_rejects_unknown_data_set_weight(tiny_corpus):
    with pytest.raises(ConfigError, match="'nope/x'"):
        CorpusSampler(tiny_corpus, weights={"nope/x": 1.0})


def test_sampled_series_are_the_files_series_in_time_order(tiny_corpus):
    rng = np.random.default_rng(3)
    sampler = CorpusSampler(tiny_corpus, max_share=1.0)
    truth = {}
    for path in tiny_corpus.rglob("*.parquet"):
        frame = pq.read_table(path).to_pandas().sort_values("timestamp")
        for item, group in frame.groupby("item_id"):
            truth[item] = group["target"].to_numpy()
    seen = set()
    for _ in range(60):
        s = sampler.sample_series(rng)
        np.testing.assert_array_equal(s.values, truth[s.item_id].astype(np.float32))
        seen.add(s.item_id)
    assert seen == set(truth)


def test_series_fraction_draws_only_a_fixed_seeded_subset_of_each_data_set(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    write_long_parquet(root / "many" / "many_daily.parquet", {f"many/{i:02d}": random_walk(rng, 40) for i in range(40)})
    full = CorpusSampler(root, max_share=1.0)
    draws = np.random.default_rng(1)
    seen_full = {full.sample_series(draws).item_id for _ in range(800)}
    assert len(seen_full) == 40
    quarter = [CorpusSampler(root, max_share=1.0, series_fraction=0.25, subset_seed=7) for _ in range(2)]
    seen = [{q.sample_series(np.random.default_rng(seed)).item_id for seed in range(400)} for q in quarter]
    assert len(seen[0]) == 10 and seen[0] == seen[1]  # 25% of 40, the same subset in every sampler of the seed
    other = CorpusSampler(root, max_share=1.0, series_fraction=0.25, subset_seed=8)
    assert {other.sample_series(np.random.default_rng(s)).item_id for s in range(400)} != seen[0]
    with pytest.raises(ConfigError, match="corpus_series_fraction"):
        PretrainWindowStream(make_stream_config(root, corpus_series_fraction=0.0))


def test_lru_cache_respects_byte_budget_and_evicts_least_recent(tmp_path):
    rng = np.random.default_rng(0)
    paths = [write_long_parquet(tmp_path / f"c/f{i}.parquet", {f"f{i}/a": rng.normal(size=200), f"f{i}/b": rng.normal(size=200)})
             for i in range(3)]
    size = load_series_table(paths[0]).nbytes
    cache = ParquetCache(max_bytes=2 * size + 10)
    a, b, c = paths
    cache.get(a), cache.get(b), cache.get(a)
    assert cache.paths == [b, a] and cache.loads == 2
    cache.get(c)
    assert cache.paths == [a, c] and cache.nbytes <= cache.max_bytes and cache.loads == 3
    small = ParquetCache(max_bytes=size - 1)  # no file fits: served, never kept
    assert len(small.get(a).item_ids) == 2 and len(small) == 0 and small.nbytes == 0


def test_sampler_cache_never_exceeds_budget(tiny_corpus):
    sizes = {p: load_series_table(p).nbytes for p in tiny_corpus.rglob("*.parquet")}
    budget = max(sizes.values()) + min(sizes.values())  # room for two files at most, never all three
    assert budget < sum(sizes.values())
    sampler = CorpusSampler(tiny_corpus, cache_bytes=budget, max_share=1.0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        sampler.sample_series(rng)
        assert sampler.cache.nbytes <= budget
        assert sampler.cache.nbytes == sum(sizes[p] for p in sampler.cache.paths)
    assert sampler.cache.loads > 3  # files were evicted and reloaded


# ---- windows ----------------------------------------------------------------------------------

def test_cut_window_pads_masks_gaps_and_scales():
    values = np.arange(1.0, 2001.0)  # value = index + 1, so a scaled value tells where it came from
    values[np.arange(2000) % 7 == 3] = np.nan
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = cut_window(values, rng, min_context=8, max_context=96, min_horizon=4, max_horizon=24)
        c, h = int(w["context_length"]), int(w["horizon"])
        assert 8 <= c <= 96 and 4 <= h <= 24
        assert w["context"].shape == w["context_mask"].shape == (96,)
        assert w["future"].shape == w["future_mask"].shape == (24,)
        assert all(w[k].dtype == torch.float32 for k in ("context", "context_mask", "future", "future_mask"))
        assert w["context_mask"][:96 - c].sum() == 0 and w["context"][:96 - c].abs().sum() == 0  # left pads
        assert w["future_mask"][h:].sum() == 0 and w["future"][h:].abs().sum() == 0  # right pads
        raw_ctx = (w["context"] * w["scale"]).double().numpy()
        raw_fut = (w["future"] * w["scale"]).double().numpy()
        first = np.rint(raw_ctx[96 - c:][w["context_mask"][96 - c:].numpy() > 0][0])
        offset = int(np.flatnonzero(w["context_mask"][96 - c:].numpy())[0])
        expected_ctx = first - offset + np.arange(c)  # the raw values of the whole context, gaps included
        np.testing.assert_array_equal(w["context_mask"][96 - c:].numpy(), (expected_ctx % 7 != 4))
        np.testing.assert_allclose(raw_ctx[96 - c:][expected_ctx % 7 != 4], expected_ctx[expected_ctx % 7 != 4], rtol=1e-5)
        expected_fut = expected_ctx[-1] + 1 + np.arange(h)
        np.testing.assert_array_equal(w["future_mask"][:h].numpy(), (expected_fut % 7 != 4))
        np.testing.assert_allclose(raw_fut[:h][expected_fut % 7 != 4], expected_fut[expected_fut % 7 != 4], rtol=1e-5)
        observed = expected_ctx[expected_ctx % 7 != 4]
        assert float(w["scale"]) == pytest.approx(observed.mean(), rel=1e-5)  # mean |x| of the observed context


def test_cut_window_short_series_keeps_context_at_least_horizon():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 30):
        for _ in range(20):
            w = cut_window(np.arange(1.0, n + 1), rng, min_context=16, max_context=64, min_horizon=8, max_horizon=32)
            c, h = int(w["context_length"]), int(w["horizon"])
            assert 1 <= h <= n // 2 and h <= c and c + h <= n
    assert cut_window(np.array([np.nan, np.nan, 1.0, 2.0]), rng, 2, 2, 2, 2) is None  # unobserved context


def make_stream_config(corpus: Path | None, **overrides) -> PretrainDataConfig:
    base = dict(corpus_root=None if corpus is None else str(corpus), min_context=8, max_context=64,
                min_horizon=2, max_horizon=16, kernelsynth_length=128, kernelsynth_pool=8, tsmixup_min_length=32,
                tsmixup_max_length=128, seed=11)
    if corpus is None:
        base["source_probs"] = {"kernelsynth": 1.0}
    base.update(overrides)
    return PretrainDataConfig(**base)


def test_stream_mixes_sources_with_fixed_shapes(tiny_corpus):
    cfg = make_stream_config(tiny_corpus, source_probs={"corpus": 0.5, "tsmixup": 0.3, "kernelsynth": 0.2})
    windows = list(PretrainWindowStream(cfg, num_windows=300))
    assert len(windows) == 300
    sources = [w["source"] for w in windows]
    fractions = {s: sources.count(s) / 300 for s in ("corpus", "tsmixup", "kernelsynth")}
    assert fractions == pytest.approx({"corpus": 0.5, "tsmixup": 0.3, "kernelsynth": 0.2}, abs=0.09)
    for w in windows:
        c, h = int(w["context_length"]), int(w["horizon"])
        assert 1 <= c <= 64 and 2 <= h <= 16
        assert w["context"].shape == (64,) and w["future"].shape == (16,)
        assert w["context_mask"][:64 - c].sum() == 0 and w["future_mask"][h:].sum() == 0
        assert torch.all((w["context"] == 0) | (w["context_mask"] == 1))  # masked -> zero
        assert torch.all((w["future"] == 0) | (w["future_mask"] == 1))
        assert w["context_mask"].sum() > 0 and w["future_mask"].sum() > 0 and torch.isfinite(w["context"]).all()
    gaps = [w for w in windows if (w["context_mask"][64 - int(w["context_length"]):] == 0).any()]
    assert gaps, "the gappy corpus series should show up as masked positions inside some context"
    batch = torch.utils.data.default_collate(windows[:8])
    assert batch["context"].shape == (8, 64) and len(batch["source"]) == 8


def test_stream_reproducible_and_workers_draw_different_windows(tiny_corpus):
    cfg = make_stream_config(tiny_corpus)
    first = [w["context"] for w in PretrainWindowStream(cfg, num_windows=20)]
    again = [w["context"] for w in PretrainWindowStream(cfg, num_windows=20)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = [w["context"] for w in PretrainWindowStream(make_stream_config(tiny_corpus, seed=12), num_windows=20)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))

    def run() -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(PretrainWindowStream(cfg, num_windows=16), batch_size=4, num_workers=2)
        return [b["context"] for b in loader]

    batches = run()
    assert len(batches) == 4 and all(torch.equal(a, b) for a, b in zip(batches, run()))
    # batches alternate between the workers; worker 0 is the single-process stream, worker 1 its own
    assert torch.equal(batches[0], torch.stack(first[:4])) and torch.equal(batches[2], torch.stack(first[4:8]))
    assert not any(torch.equal(batches[1][i], w) for i in range(4) for w in first)


def test_stream_config_errors_name_the_key(tiny_corpus):
    with pytest.raises(ConfigError, match="'bogus'"):
        PretrainWindowStream(make_stream_config(tiny_corpus, source_probs={"bogus": 1.0}))
    with pytest.raises(ConfigError, match="corpus_root"):
        PretrainWindowStream(make_stream_config(None, source_probs={"corpus": 1.0}))
    with pytest.raises(ConfigError, match="min_context"):
        PretrainWindowStream(make_stream_config(tiny_corpus, min_context=100))
    synthetic = list(PretrainWindowStream(make_stream_config(None), num_windows=5))
    assert {w["source"] for w in synthetic} == {"kernelsynth"}


# ---- disjointness from the evaluation suite ---------------------------------------------------

@pytest.fixture
def tiny_eval(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An evaluation folder in exchange_rate's format: header-less CSV, one column per series, gzip."""
    rng = np.random.default_rng(42)
    table = np.stack([0.5 + 0.4 * i + np.cumsum(rng.normal(0, 0.004, 300)) for i in range(3)], axis=1)  # rates
    table[:100, 0] = 0.0  # a flat stretch: not fingerprinted, so a corpus of zeros is no match
    root = tmp_path / "exchange_rate"
    root.mkdir()
    with gzip.open(root / "exchange_rate.txt.gz", "wt") as f:
        f.write("\n".join(",".join(f"{v:.6f}" for v in row) for row in table))
    return root, table


def test_assert_disjoint_passes_clean_corpus(tiny_corpus, tiny_eval):
    root, _ = tiny_eval
    write_long_parquet(tiny_corpus / "zeros" / "zeros.parquet", {"zeros/a": np.zeros(200)})
    report = assert_disjoint(tiny_corpus, [root])
    assert report.corpus_series == 6 and report.eval_series == 3 and report.eval_windows > 500


def test_assert_disjoint_names_a_copied_slice(tiny_corpus, tiny_eval):
    root, table = tiny_eval
    copy = table[50:170, 1].astype(np.float32)  # a slice, at another precision, under an unrelated id
    write_long_parquet(tiny_corpus / "leak" / "leak.parquet", {"leak/copy": np.r_[np.nan, 5.0, copy]})
    with pytest.raises(DataError, match=r"'leak/copy' matches evaluation series 'exchange_rate/exchange_rate/1' by 64 values equal to [34] significant digits"):
        assert_disjoint(tiny_corpus, [root])


def test_assert_disjoint_names_an_evaluation_item_id(tiny_corpus, tiny_eval):
    root, _ = tiny_eval
    write_long_parquet(tiny_corpus / "leak" / "leak.parquet", {"other/exchange_rate/2": np.arange(50.0)})
    with pytest.raises(DataError, match=r"'other/exchange_rate/2' matches evaluation series 'exchange_rate/exchange_rate/2' by item id"):
        assert_disjoint(tiny_corpus, [root])


def test_real_corpus_is_disjoint_from_the_evaluation_suite(shared_data):
    corpus = shared_data / "corpus"
    if not corpus.is_dir():
        pytest.skip(f"no pretraining corpus at {corpus}")
    report = assert_disjoint(corpus, [shared_data / "ett", shared_data / "m4", shared_data / "exchange_rate"])
    assert report.corpus_series > 20_000 and report.eval_series == 7 + 414 + 8
