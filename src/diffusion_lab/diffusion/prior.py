"""A Gaussian mixture over summary vectors: cold diffusion's prior of the fully degraded image.

Fitted with scikit-learn (full covariances), held as plain float64 tensors (so it travels in a checkpoint that
loads with ``weights_only=True``), and sampled with torch, so a seeded generator gives the same draws anywhere.

    prior = GaussianMixturePrior()
    prior.fit(z, components=10, seed=0)          # z: (N, d)
    draws = prior.sample(64, generator=gen)      # (64, d)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GaussianMixturePrior"]

STATE_KEYS = ("weights", "means", "covariances")


class GaussianMixturePrior:
    def __init__(self) -> None:
        self.weights: Tensor | None = None  # (K,)
        self.means: Tensor | None = None  # (K, d)
        self.covariances: Tensor | None = None  # (K, d, d)

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, z: Tensor, components: int, seed: int = 0) -> None:
        """Fit K = min(components, N) full-covariance components to z (N, d); ``seed`` fixes the initialisation."""
        from sklearn.mixture import GaussianMixture

        if z.ndim != 2 or len(z) < 1:
            raise ValueError(f"the prior is fitted to summaries (N, d), got shape {tuple(z.shape)}")
        k = max(1, min(int(components), len(z)))
        gmm = GaussianMixture(k, covariance_type="full", random_state=int(seed), reg_covar=1e-6)
        gmm.fit(z.detach().double().cpu().numpy())
        self.weights = torch.from_numpy(gmm.weights_).double()
        self.means = torch.from_numpy(gmm.means_).double()
        self.covariances = torch.from_numpy(gmm.covariances_).double()

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """n draws (n, d), float64 on ``device``: a component by weight, then its Gaussian, both from
        ``generator`` (which must live on ``device``)."""
        if not self.fitted:
            raise ValueError(
                "process=cold has no fitted prior: `python -m diffusion_lab.train` fits it to the training data "
                "before training (or call fit_prior(images))"
            )
        weights, means = self.weights.to(device), self.means.to(device)
        chol = torch.linalg.cholesky(self.covariances).to(device)  # (K, d, d)
        k = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, means.shape[1], 1, generator=generator, device=device, dtype=torch.float64)
        return means[k] + (chol[k] @ eps)[..., 0]

    def state_dict(self) -> dict[str, Tensor]:
        if not self.fitted:
            return {}
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if sorted(state) != sorted(STATE_KEYS):
            raise ValueError(f"a Gaussian mixture prior holds {list(STATE_KEYS)}, got {sorted(state)}")
        self.weights, self.means, self.covariances = (state[key].double().cpu() for key in STATE_KEYS)

    def __repr__(self) -> str:
        if not self.fitted:
            return "GaussianMixturePrior(unfitted)"
        return f"GaussianMixturePrior(components={len(self.weights)}, dim={self.means.shape[1]})"
