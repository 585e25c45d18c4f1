"""Timestep samplers (uniform, loss-aware importance sampling) and the respacing of the timestep grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_lab.diffusion import (
    TIMESTEP_SAMPLERS,
    Diffusion,
    ImportanceTimestepSampler,
    LinearSchedule,
    UniformTimestepSampler,
    build_timestep_sampler,
    parse_respacing,
)

Z = 5.0  # standard errors; a correct implementation fails one check with probability ~6e-7


# --------------------------------------------------------------------------------------------- uniform
def test_uniform_sampler_is_uniform():
    T, n = 20, 200_000
    sampler = UniformTimestepSampler(T)
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == w.shape == (n,)
    assert torch.all(w == 1)
    counts = np.bincount(t.numpy(), minlength=T)
    assert counts.shape == (T,)
    # each count ~ Binomial(n, 1/T)
    sd = math.sqrt(n * (1 / T) * (1 - 1 / T))
    assert np.all(np.abs(counts - n / T) < Z * sd)
    np.testing.assert_allclose(sampler.probabilities(), np.full(T, 1 / T))


# --------------------------------------------------------------------------------------------- importance
def loss_profile(T: int) -> np.ndarray:
    """A synthetic per-t loss, large at small t like the bound's terms."""
    t = np.arange(T)
    return 0.05 + 3.0 * np.exp(-t / 4.0) + 0.5 * (t / T) ** 2


def warmed_sampler(T=30, history=10, uniform_prob=0.1, seed=0):
    """Feed `history` noisy observations of the profile for every t, in shuffled batches."""
    rng = np.random.default_rng(seed)
    sampler = ImportanceTimestepSampler(T, history=history, uniform_prob=uniform_prob)
    ts = np.repeat(np.arange(T), history)
    rng.shuffle(ts)
    L = loss_profile(T)
    observed = L[ts] * rng.uniform(0.5, 1.5, size=ts.shape)
    for chunk in np.array_split(np.arange(len(ts)), 7):
        assert not sampler.warmed_up()
        np.testing.assert_allclose(sampler.probabilities(), np.full(T, 1 / T))  # uniform until warmed up
        sampler.update(torch.from_numpy(ts[chunk]), torch.from_numpy(observed[chunk]))
    assert sampler.warmed_up()
    return sampler, ts, observed


def test_importance_probabilities_follow_rms_loss():
    T, uniform_prob = 30, 0.1
    sampler, ts, observed = warmed_sampler(T, uniform_prob=uniform_prob)
    rms = np.array([math.sqrt(np.mean(observed[ts == t] ** 2)) for t in range(T)])
    expected = (1 - uniform_prob) * rms / rms.sum() + uniform_prob / T
    p = sampler.probabilities()
    np.testing.assert_allclose(p, expected, rtol=1e-6)  # the losses are recorded in float32
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_importance_history_is_a_sliding_window():
    sampler = ImportanceTimestepSampler(2, history=3, uniform_prob=0.0)
    for v in (1.0, 2.0, 3.0, 4.0, 5.0):  # t = 0 keeps the last three: 3, 4, 5
        sampler.update(torch.tensor([0]), torch.tensor([v]))
    sampler.update(torch.tensor([1, 1, 1]), torch.tensor([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(sampler.loss_history[0], [3.0, 4.0, 5.0])
    w0 = math.sqrt((9 + 16 + 25) / 3)
    np.testing.assert_allclose(sampler.probabilities(), [w0 / (w0 + 1), 1 / (w0 + 1)], rtol=1e-12)


def reference_update(history: np.ndarray, counts: np.ndarray, t, losses) -> None:
    """IDDPM's loop, one loss at a time (the sampler's update is its vectorized form)."""
    H = history.shape[1]
    for ti, loss in zip(t, losses):
        loss = float(np.float32(loss))
        if not math.isfinite(loss):
            continue
        if counts[ti] == H:
            history[ti, :-1] = history[ti, 1:]
            history[ti, -1] = loss
        else:
            history[ti, counts[ti]] = loss
            counts[ti] += 1


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    T=st.integers(1, 6),
    H=st.integers(1, 4),
    batches=st.lists(
        st.lists(
            st.tuples(st.integers(0, 5), st.sampled_from([0.5, 1.0, 2.0, 3.5, math.nan, math.inf])),
            max_size=12,
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_importance_update_matches_the_sequential_loop(T, H, batches):
    """Repeated t in one batch (more than H of them too), non-finite losses, empty batches: the same window."""
    sampler = ImportanceTimestepSampler(T, history=H)
    history, counts = np.zeros((T, H)), np.zeros(T, dtype=np.int64)
    for k, batch in enumerate(batches):
        t = [ti % T for ti, _ in batch]
        losses = [v * (k + 1) + i for i, (_, v) in enumerate(batch)]  # distinct values: order shows
        sampler.update(torch.tensor(t, dtype=torch.long), torch.tensor(losses, dtype=torch.float32))
        reference_update(history, counts, t, losses)
        np.testing.assert_array_equal(sampler.loss_counts, counts)
        np.testing.assert_array_equal(sampler.loss_history, history)


def test_importance_sampled_loss_is_unbiased():
    """E[weight · L(t)] under the importance distribution equals the uniform mean of L(t)."""
    T = 30
    sampler, _, _ = warmed_sampler(T, uniform_prob=0.1)
    L = loss_profile(T)
    n = 200_000
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(1))
    p = sampler.probabilities()
    # the weights are 1 / (T p_t) (p in float32 as sampled)
    np.testing.assert_allclose(w.double().numpy(), 1 / (T * p[t.numpy()]), rtol=1e-6)
    est = w.double().numpy() * L[t.numpy()]
    se = est.std(ddof=1) / math.sqrt(n)
    assert abs(est.mean() - L.mean()) < Z * se
    # and t really is drawn from p: per-t counts within 5 binomial standard errors
    counts = np.bincount(t.numpy(), minlength=T)
    assert np.all(np.abs(counts - n * p) < Z * np.sqrt(n * p * (1 - p)))
    # importance sampling does its job here: lower variance than uniform sampling of the same loss
    assert est.var() < L.var()


def test_importance_state_dict_round_trip():
    sampler, _, _ = warmed_sampler(20, history=5, uniform_prob=0.01)
    state = sampler.state_dict()
    fresh = ImportanceTimestepSampler(20, history=5, uniform_prob=0.01)
    np.testing.assert_allclose(fresh.probabilities(), np.full(20, 1 / 20))
    fresh.load_state_dict(state)
    assert fresh.warmed_up()
    np.testing.assert_array_equal(fresh.probabilities(), sampler.probabilities())
    # the state is a copy: further updates of one do not leak into the other
    sampler.update(torch.tensor([0]), torch.tensor([100.0]))
    assert not np.array_equal(fresh.probabilities(), sampler.probabilities())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    fresh.load_state_dict(sampler.state_dict())
    assert torch.equal(fresh.sample(64, generator=g1)[0], sampler.sample(64, generator=g2)[0])


@pytest.mark.parametrize(("T", "history"), [(21, 5), (20, 6)])
def test_importance_load_wrong_shape_raises(T, history):
    state = warmed_sampler(20, history=5)[0].state_dict()
    with pytest.raises(ValueError, match=r"loss history has shape \(20, 5\), this run needs"):
        ImportanceTimestepSampler(T, history=history).load_state_dict(state)


def test_sampler_errors_and_registry():
    assert sorted(TIMESTEP_SAMPLERS) == [
        "edm_lognormal",
        "edm_ve",
        "edm_vp",
        "flow_logit_normal",
        "flow_mode",
        "flow_uniform",
        "importance",
        "uniform",
    ]
    assert isinstance(build_timestep_sampler("importance", 10, history=3), ImportanceTimestepSampler)
    with pytest.raises(ValueError, match=r"timesteps='stratified' is unknown"):
        build_timestep_sampler("stratified", 10)
    with pytest.raises(ValueError, match=r"num_timesteps=0 must be >= 1"):
        UniformTimestepSampler(0)
    with pytest.raises(ValueError, match=r"history=0 must be >= 1"):
        ImportanceTimestepSampler(10, history=0)
    with pytest.raises(ValueError, match=r"uniform_prob=1\.5"):
        ImportanceTimestepSampler(10, uniform_prob=1.5)


# --------------------------------------------------------------------------------------------- respacing
def test_ddim_stride():
    assert parse_respacing(1000, "ddim50") == list(range(0, 1000, 20))
    assert parse_respacing(1000, "ddim1000") == list(range(1000))
    assert parse_respacing(100, "ddim30") == list(range(0, 90, 3))  # stride 100 // 30 = 3, first 30 steps


def test_section_counts():
    kept = parse_respacing(1000, "10,15,20")
    assert len(kept) == 45 and kept == sorted(set(kept))
    # sections [0, 334), [334, 667), [667, 1000): 10, 15 and 20 steps each, spanning every section
    sections = [(0, 334), (334, 667), (667, 1000)]
    for (lo, hi), count in zip(sections, (10, 15, 20)):
        inside = [k for k in kept if lo <= k < hi]
        assert len(inside) == count
        assert inside[0] == lo and inside[-1] == hi - 1
    # IDDPM's example: space_timesteps(300, [10, 15, 20]) keeps 10 of the first 100 steps, strided by 11
    kept = parse_respacing(300, "10,15,20")
    assert kept[:10] == [round(i * 99 / 9) for i in range(10)]
    assert parse_respacing(10, "1,1") == [0, 5]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)  # fixed examples, no .hypothesis/
@given(T=st.integers(1, 5000), data=st.data())
def test_int_steps_are_evenly_spread_and_exact(T, data):
    n = data.draw(st.integers(1, T))
    kept = parse_respacing(T, n)
    assert len(kept) == n
    assert kept == sorted(set(kept))
    assert kept[0] == 0 and all(0 <= k < T for k in kept)
    if n >= 2:
        assert kept[-1] == T - 1
        gaps = np.diff(kept)
        ideal = (T - 1) / (n - 1)
        assert gaps.max() - gaps.min() <= 1 and abs(gaps.mean() - ideal) < 1e-9
    assert parse_respacing(T, str(n)) == kept


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("abc", "does not parse"),
        ("ddimxyz", "does not parse"),
        ("10,a", "does not parse"),
        ("0", "between 1 and T=100"),
        (0, "between 1 and T=100"),
        (101, "between 1 and T=100"),
        ("ddim101", "between 1 and T=100"),
        ("ddim0", "between 1 and T=100"),
        ("60,10", "section 0 has 50 steps, cannot take 60"),
        ("10,0", "between 1 and T=100"),
    ],
)
def test_respacing_errors_name_the_option(spec, message):
    with pytest.raises(ValueError, match=rf"sampler\.steps={spec!r}.*{message}"):
        parse_respacing(100, spec)


def test_diffusion_respaced_maps_to_original_timesteps():
    d = Diffusion(LinearSchedule(1000))
    assert d.respaced(None) is d
    assert d.respaced(1000) is d
    r = d.respaced("ddim50")
    assert r.num_timesteps == 50
    assert r.timestep_map.tolist() == list(range(0, 1000, 20))
    assert torch.equal(r.schedule.alphas_cumprod, d.schedule.alphas_cumprod[r.timestep_map])
    assert r.model_timesteps(torch.tensor([0, 49])).tolist() == [0, 980]
    assert r.prediction is d.prediction and r.variance is d.variance
    # respacing a respaced process composes the maps
    rr = r.respaced(10)
    assert rr.timestep_map.tolist() == [r.timestep_map[k].item() for k in parse_respacing(50, 10)]
    assert torch.equal(rr.schedule.alphas_cumprod, d.schedule.alphas_cumprod[rr.timestep_map])
