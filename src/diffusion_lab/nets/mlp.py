"""A residual MLP denoiser for low-dimensional toy data (2-D mixtures, swiss roll, ...).

    x -> Linear -> [num_layers x ResidualBlock(., emb)] -> LayerNorm, SiLU, Linear (zero-init) -> out
    emb = MLP(sinusoidal(t)) [+ label_embed(y)]

Each block is pre-norm: LayerNorm, SiLU, Linear, add the projected conditioning, SiLU, Linear (zero-init),
added back to the residual stream. Zero-initialising the last layer of every branch makes a fresh network
output exactly zero, like the UNet and DiT in this package. Knows nothing of diffusion: maps (x, t, y) ->
tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import timestep_embedding


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)  # the block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.fc1(F.silu(self.norm(x)))  # (B, hidden)
        h = h + self.emb_proj(F.silu(emb))  # (B, hidden): condition on time (and label) in every block
        return x + self.fc2(F.silu(h))


class MLPDenoiser(nn.Module):
    """``forward(x (B, in_dim), t (B,), y (B,) | None) -> (B, out_dim)``.

    ``t`` is embedded as its raw value (see ``timestep_embedding``): pass step indices, or t scaled to
    ~[0, 1000].
    With ``num_classes`` set, label ``num_classes`` is the null (unconditional) class; ``y=None`` means null.
    """

    def __init__(
        self,
        in_dim: int = 2,
        out_dim: int | None = None,
        hidden: int = 256,
        num_layers: int = 4,
        time_embed_dim: int = 128,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = in_dim if out_dim is None else out_dim
        self.time_embed_dim = time_embed_dim
        self.num_classes = num_classes

        self.time_embed = nn.Sequential(
            nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.label_embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.in_proj = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, self.out_dim)
        nn.init.zeros_(self.out_proj.weight)  # a fresh network outputs zeros
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.time_embed_dim))  # (B, hidden)
        if self.label_embed is not None:
            if y is None:  # no labels given: condition on the null class
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)  # (B, hidden)
        elif y is not None:
            raise ValueError("labels y given to an MLPDenoiser built without num_classes")
        h = self.in_proj(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)
        return self.out_proj(F.silu(self.norm_out(h)))  # (B, out_dim)
