"""Independent float64 references for the diffusion tests, written from the papers' formulas in numpy/scipy.

Nothing here calls the library's derived tables: a schedule enters only through its betas (or the alpha-bars
of the kept steps of a respaced process), and every other quantity is recomputed from them.

The centrepiece is the exact denoiser for Gaussian data. With x_0 ~ N(mu, s^2) iid per dimension and
x_t = a x_0 + sigma eps (a = sqrt(abar_t), sigma^2 = 1 - abar_t), the pair (x_0, x_t) is jointly Gaussian:

    x_t ~ N(a mu, a^2 s^2 + sigma^2)
    E[eps | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2)
    E[x_0 | x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + sigma^2)
    Var(x_0 | x_t) = s^2 sigma^2 / (a^2 s^2 + sigma^2)

so every sampler driven by it is a linear-Gaussian recursion whose output distribution is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate
from scipy.stats import norm

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------- schedules
def tables(betas) -> dict[str, np.ndarray]:
    """The schedule's derived tables from its betas, in float64 (Ho et al. 2020, eqs. 4, 6, 7)."""
    betas = np.asarray(betas, dtype=np.float64)
    return tables_from_abar(np.cumprod(1.0 - betas))


def tables_from_abar(abar) -> dict[str, np.ndarray]:
    abar = np.asarray(abar, dtype=np.float64)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    betas = 1.0 - abar / abar_prev
    alphas = 1.0 - betas
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas": alphas,
        "abar": abar,
        "abar_prev": abar_prev,
        "post_var": post_var,
        # beta~ is 0 at index 0; the reverse process uses beta~ of index 1 there (IDDPM).
        "post_var_clipped": np.concatenate([[post_var[1] if len(abar) > 1 else betas[0]], post_var[1:]]),
        "coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }


# --------------------------------------------------------------------------------------------- Gaussian data
def posterior_stats(abar, mu: float, s: float):
    """(a, sigma^2, k, var_x0_given_xt): E[x_0 | x_t] = mu + k (x_t - a mu)."""
    abar = np.asarray(abar, dtype=np.float64)
    a = np.sqrt(abar)
    sig2 = 1.0 - abar
    marg = a * a * s * s + sig2
    return a, sig2, a * s * s / marg, s * s * sig2 / marg


class GaussianDenoiser:
    """The Bayes-optimal network for x_0 ~ N(mu, s^2): ``model(x_t, t)`` returns E[target | x_t].

    ``abar`` is the alpha-bar table (float64) of the process the network is trained on, indexed by the
    original timesteps. ``variance`` picks the extra channels: ``None`` for a fixed variance, ``"zeros"`` for
    zero variance channels, ``"exact"`` for log Var(x_{t-1} | x_t) (the true reverse variance, for
    ``variance="learned"``). Counts its calls and records the timestep of each call (the first of the batch).
    """

    def __init__(self, abar, mu: float, s: float, prediction: str, variance: str | None = None):
        self.abar = torch.as_tensor(np.asarray(abar, dtype=np.float64))
        self.mu, self.s = mu, s
        self.prediction = prediction
        self.variance = variance
        self.calls = 0
        self.timesteps: list[int] = []

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.timesteps.append(int(t[0]))  # every sampler step uses one t for the whole batch
        abar = self.abar[t.long()].reshape((-1,) + (1,) * (xt.ndim - 1))
        a, sig = abar.sqrt(), (1.0 - abar).sqrt()
        x = xt.double()
        marg = a * a * self.s**2 + sig * sig
        eps = sig * (x - a * self.mu) / marg
        x0 = self.mu + a * self.s**2 * (x - a * self.mu) / marg
        if self.prediction == "mean":
            out = self.step_mean(t, x0, x)
        else:
            out = {"eps": eps, "x0": x0, "v": a * eps - sig * x0}[self.prediction]
        if self.variance == "zeros":
            out = torch.cat([out, torch.zeros_like(out)], dim=1)
        elif self.variance == "exact":
            out = torch.cat([out, self.exact_log_variance(t, x)], dim=1)
        return out.to(xt.dtype)

    def step_mean(self, t: torch.Tensor, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """E[mu~_t(x_t, x_0) | x_t] on the trained chain: beta_t sqrt(abar_{t-1}) / (1 - abar_t) E[x_0 | x_t]
        + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t (abar_{-1} = 1)."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        abar_prev_all = torch.cat([torch.ones(1, dtype=self.abar.dtype), self.abar[:-1]])
        abar, abar_prev = self.abar[t.long()].reshape(shape), abar_prev_all[t.long()].reshape(shape)
        alpha = abar / abar_prev
        return ((1 - alpha) * abar_prev.sqrt() * x0 + (1 - abar_prev) * alpha.sqrt() * x) / (1 - abar)

    def exact_log_variance(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log Var(x_{t-1} | x_t) = log(beta~_t + coef1_t^2 Var(x_0 | x_t)); at index 0 the decoder is
        only Var(x_0 | x_1) (coef1 = 1, beta~ = 0)."""
        tb = tables_from_abar(self.abar.numpy())
        _, _, _, v0 = posterior_stats(tb["abar"], self.mu, self.s)
        var = tb["post_var"] + tb["coef1"] ** 2 * v0
        lv = torch.as_tensor(np.log(var))[t.long()].reshape((-1,) + (1,) * (x.ndim - 1))
        return lv.expand_as(x).to(x.dtype)


def sampler_moments(abar_kept, mu: float, s: float, kind: str, eta: float = 0.0, reverse_var=None):
    """Mean and variance of the output of a sampler driven by the exact denoiser, started at N(0, 1).

    ``abar_kept``: the alpha-bars of the steps the sampler visits (increasing). One step at position i maps
    x -> A x + b + sd z, so (m, V) -> (A m + b, A^2 V + sd^2); the last step (i = 0) adds no noise.
    ``kind``: "ddpm" (posterior mean of E[x_0 | x_t], variance ``reverse_var[i]``, default beta~ clipped) or
    "ddim" (Song et al. eq. 12 with sigma_i = eta sqrt(beta~_i)).
    """
    tb = tables_from_abar(abar_kept)
    a, sig2, k, _ = posterior_stats(tb["abar"], mu, s)
    if reverse_var is None:
        reverse_var = tb["post_var_clipped"]
    m, V = 0.0, 1.0
    for i in range(len(a) - 1, -1, -1):
        # x0_hat = c0 + k x,   eps_hat = (x - a x0_hat) / sigma
        c0 = mu - k[i] * a[i] * mu
        if kind == "ddpm":
            A = tb["coef1"][i] * k[i] + tb["coef2"][i]
            b = tb["coef1"][i] * c0
            var = reverse_var[i]
        elif kind == "ddim":
            sd2 = eta**2 * tb["post_var"][i]
            ap = tb["abar_prev"][i]
            ce = math.sqrt(max(1.0 - ap - sd2, 0.0))
            sg = math.sqrt(sig2[i])
            # x_prev = sqrt(ap) x0_hat + ce (x - a x0_hat) / sg
            A = math.sqrt(ap) * k[i] + ce * (1.0 - a[i] * k[i]) / sg
            b = math.sqrt(ap) * c0 - ce * a[i] * c0 / sg
            var = sd2
        else:
            raise ValueError(kind)
        m, V = A * m + b, A * A * V + (var if i > 0 else 0.0)
    return m, V


# --------------------------------------------------------------------------------------------- bits per dim
def analytic_vb_bits(betas, mu: float, s: float) -> tuple[np.ndarray, float]:
    """Expected L_t (bits/dim) for t >= 1 (index >= 1) under fixed_small with the exact denoiser, and the prior.

    KL(N(m_q, v_q) || N(m_p, v_p)) = 0.5 (log(v_p / v_q) + v_q / v_p - 1 + (m_q - m_p)^2 / v_p); here
    m_q - m_p = coef1 (x_0 - E[x_0 | x_t]) so E[(m_q - m_p)^2] = coef1^2 Var(x_0 | x_t), v_q = v_p = beta~_t.
    Index 0 (the decoder) is returned as NaN: see ``analytic_decoder_bits``.
    """
    tb = tables(betas)
    _, sig2, _, v0 = posterior_stats(tb["abar"], mu, s)
    vq = tb["post_var"]
    vp = tb["post_var_clipped"]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = 0.5 * (np.log(vp / vq) + vq / vp - 1.0 + tb["coef1"] ** 2 * v0 / vp)
    kl[0] = np.nan
    # prior: KL(N(a x0, sig2) || N(0, 1)) averaged over x0: E[x0^2] = mu^2 + s^2
    aT2, sT2 = tb["abar"][-1], sig2[-1]
    prior = 0.5 * (-1.0 - math.log(sT2) + sT2 + aT2 * (mu * mu + s * s))
    return kl / LN2, prior / LN2


def analytic_decoder_bits(betas, mu: float, s: float, bins: int = 256) -> float:
    """E[-log2 P(x_0 | x_1)] for continuous x_0 ~ N(mu, s^2) by quadrature, the decoder being
    N(E[x_0 | x_1], beta~ at index 1) integrated over the bin of width 2/(bins-1) around x_0, with the bins
    beyond +-(1 - half a bin) extending to infinity.

    Write r = x_0 - E[x_0 | x_1] (the decoder's error). Given x_0, r ~ N((1 - k a)(x_0 - mu), k^2 sigma^2), so
    the expectation is a double integral over x_0 and r.
    """
    tb = tables(betas)
    a, sig2, k, _ = (float(v[0]) for v in posterior_stats(tb["abar"], mu, s))
    sd_p = math.sqrt(tb["post_var_clipped"][0])
    h = 1.0 / (bins - 1)
    edge = 1.0 - h
    r_sd = k * math.sqrt(sig2)

    # Inner integral over r by Gauss-Hermite (the integrand -log(bin mass) is smooth in r); outer over x_0 by
    # adaptive quadrature, split where the bin becomes an edge bin.
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()

    def neg_log_mass(x0: float, r: np.ndarray) -> np.ndarray:
        hi, lo = (r + h) / sd_p, (r - h) / sd_p
        if x0 < -edge:
            p = norm.cdf(hi)
        elif x0 > edge:
            p = norm.sf(lo)
        else:  # difference of cdfs, taken in the tail where it keeps its precision
            p = np.where(lo > 0, norm.sf(lo) - norm.sf(hi), norm.cdf(hi) - norm.cdf(lo))
        return -np.log(np.maximum(p, 1e-300))

    def integrand(x0: float) -> float:
        r = (1.0 - k * a) * (x0 - mu) + r_sd * z
        return float(w @ neg_log_mass(x0, r)) * norm.pdf(x0, mu, s)

    lo_x, hi_x = mu - 12 * s, mu + 12 * s
    cuts = [lo_x, *[p for p in (-edge, edge) if lo_x < p < hi_x], hi_x]
    total = sum(
        integrate.quad(integrand, x_a, x_b, epsabs=1e-11, limit=200)[0] for x_a, x_b in zip(cuts, cuts[1:])
    )
    return total / LN2


# --------------------------------------------------------------------------------------------- as parts of a spec
class GaussianDenoiserNet(torch.nn.Module):
    """The exact denoiser as the network of a checkpoint spec (``model._target_``): built by ``build_parts``
    with ``in_channels`` / ``out_channels`` / ``image_size`` (ignored), it holds one dummy parameter so that it
    has a state dict, and computes in float64 whatever the input dtype."""

    def __init__(
        self,
        abar,
        mu: float,
        s: float,
        prediction: str = "eps",
        in_channels: int | None = None,
        out_channels: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        self.oracle = GaussianDenoiser(
            np.asarray(list(abar), dtype=np.float64), float(mu), float(s), prediction
        )
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.oracle(xt, t) + self.dummy.to(xt.dtype)


class GaussianImages:
    """A datamodule of iid N(mu, s^2) pixels (continuous, not clipped), for a checkpoint spec's ``data``: what
    ``diffusion_lab.evaluate`` uses of a datamodule (``name``, ``root``, ``data_shape``, ``setup``,
    ``real_images``). Each split has its own fixed draw."""

    SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, mu: float, s: float, shape, size: int = 4096, **ignored):
        self.name = "gaussian_images"
        self.root = None
        self.mu, self.s = float(mu), float(s)
        self.data_shape = tuple(int(v) for v in shape)
        self.size = int(size)

    def setup(self, stage: str | None = None) -> None:
        pass

    def real_images(self, split: str, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.SPLIT_SEEDS[split])
        return self.mu + self.s * torch.randn(min(n, self.size), *self.data_shape, generator=g)


# --------------------------------------------------------------------------------------------- EDM and flow
# Karras et al. 2022, Table 1, written out here in float64 (the library's preconditionings are checked against
# these): (c_skip, c_out, c_in, c_noise) of sigma, and sigma back from c_noise.
VP_BETA_D, VP_BETA_MIN, VP_M = 19.9, 0.1, 1000


def vp_sigma_of_time(t):
    return np.sqrt(np.exp(0.5 * VP_BETA_D * np.square(t) + VP_BETA_MIN * np.asarray(t)) - 1.0)


def table1_scalings(precond: str, sigma, sigma_data: float = 0.5):
    sigma = np.asarray(sigma, dtype=np.float64)
    one = np.ones_like(sigma)
    if precond == "vp":
        t = (np.sqrt(VP_BETA_MIN**2 + 2 * VP_BETA_D * np.log1p(sigma**2)) - VP_BETA_MIN) / VP_BETA_D
        return one, -sigma, 1 / np.sqrt(sigma**2 + 1), (VP_M - 1) * t
    if precond == "ve":
        return one, sigma, one, np.log(0.5 * sigma)
    sd2 = sigma_data**2
    return (
        sd2 / (sigma**2 + sd2),
        sigma * sigma_data / np.sqrt(sigma**2 + sd2),
        1 / np.sqrt(sigma**2 + sd2),
        0.25 * np.log(sigma),
    )


def sigma_from_c_noise(precond: str, c_noise: torch.Tensor) -> torch.Tensor:
    c = c_noise.double()
    if precond == "vp":
        t = c / (VP_M - 1)
        return torch.sqrt(torch.exp(0.5 * VP_BETA_D * t * t + VP_BETA_MIN * t) - 1.0)
    if precond == "ve":
        return 2.0 * torch.exp(c)
    return torch.exp(4.0 * c)


def edm_posterior_mean(x: torch.Tensor, sigma: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    """E[x_0 | x_0 + sigma n = x] for x_0 ~ N(mu, s^2): mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    return mu + s * s / (s * s + sigma * sigma) * (x - mu)


class EDMGaussianNet:
    """The network F that makes a preconditioning's D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) the exact
    denoiser of x_0 ~ N(mu, s^2): it reads sigma back from c_noise and x from c_in x (Table 1, in float64) and
    returns F = (E[x_0 | x] - c_skip x) / c_out. Counts its calls and records the sigma of each."""

    def __init__(self, precond: str, mu: float, s: float, sigma_data: float = 0.5):
        self.precond, self.mu, self.s, self.sigma_data = precond, mu, s, sigma_data
        self.calls = 0
        self.sigmas: list[float] = []

    def __call__(self, net_x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma_from_c_noise(self.precond, c_noise)
        self.sigmas.append(float(sigma[0]))
        c_skip, c_out, c_in, _ = (
            torch.as_tensor(v).reshape((-1,) + (1,) * (net_x.ndim - 1))
            for v in table1_scalings(self.precond, sigma.numpy(), self.sigma_data)
        )
        sig = sigma.reshape((-1,) + (1,) * (net_x.ndim - 1))
        x = net_x.double() / c_in
        return ((edm_posterior_mean(x, sig, self.mu, self.s) - c_skip * x) / c_out).to(net_x.dtype)


def flow_velocity(x: torch.Tensor, t: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    """E[eps - x_0 | x_t = x] for x_t = (1 - t) x_0 + t eps, x_0 ~ N(mu, s^2): with m = (1 - t) mu and
    v_t = (1 - t)^2 s^2 + t^2, E[eps | x] = t (x - m) / v_t and E[x_0 | x] = mu + (1 - t) s^2 (x - m) / v_t."""
    m = (1 - t) * mu
    var = (1 - t) ** 2 * s * s + t * t
    return t * (x - m) / var - (mu + (1 - t) * s * s * (x - m) / var)


class FlowGaussianNet:
    """The exact velocity network of x_0 ~ N(mu, s^2) (or of a mixture: see ``FlowMixtureNet``), called as the
    flow process calls it: ``net(x, time_scale * t)``. Counts its calls and records each t."""

    def __init__(self, mu: float, s: float, time_scale: float = 1000.0):
        self.mu, self.s, self.time_scale = mu, s, time_scale
        self.calls = 0
        self.times: list[float] = []

    def __call__(self, x: torch.Tensor, scaled_t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = (scaled_t.double() / self.time_scale).reshape((-1,) + (1,) * (x.ndim - 1))
        self.times.append(float(t.flatten()[0]))
        return flow_velocity(x.double(), t, self.mu, self.s).to(x.dtype)


def toy_mixture() -> tuple[np.ndarray, float]:
    """data=toy2d name=gaussian_mixture as a population: 8 equal components N(c_k, s^2 I) with centres 2·(cos, sin)
    of 2πk/8 and s = 0.1, scaled (as make_toy2d scales its points) by the population's standard deviation
    sqrt(2 + 0.1^2) (each axis of the centres has variance 2^2 / 2). Returns (centres (8, 2), s)."""
    angles = 2 * np.pi * np.arange(8) / 8
    scale = math.sqrt(2.0 + 0.01)
    return 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1) / scale, 0.1 / scale


class FlowMixtureNet:
    """The exact velocity of x_0 ~ (1/K) Σ_k N(c_k, s^2 I) in 2-D. Given component k, x_t ~ N((1 - t) c_k, v_t I)
    with v_t = (1 - t)^2 s^2 + t^2, and E[eps - x_0 | x_t, k] is ``flow_velocity`` per coordinate; the velocity is
    its average under the responsibilities r_k(x) ∝ exp(-|x - (1 - t) c_k|^2 / (2 v_t)). Called as the flow
    process calls it: ``net(x, time_scale * t)``."""

    def __init__(self, centres: np.ndarray, s: float, time_scale: float = 1000.0):
        self.centres = torch.as_tensor(centres, dtype=torch.float64)  # (K, 2)
        self.s, self.time_scale = s, time_scale
        self.calls = 0

    def __call__(self, x: torch.Tensor, scaled_t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = (scaled_t.double() / self.time_scale)[:, None, None]  # (B, 1, 1)
        xx = x.double()[:, None, :]  # (B, 1, 2)
        c = self.centres[None]  # (1, K, 2)
        var = (1 - t) ** 2 * self.s**2 + t * t
        logits = -((xx - (1 - t) * c) ** 2).sum(-1) / (2 * var[..., 0])  # (B, K)
        r = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
        m = (1 - t) * c
        per_component = t * (xx - m) / var - (c + (1 - t) * self.s**2 * (xx - m) / var)  # (B, K, 2)
        return (r * per_component).sum(1).to(x.dtype)
