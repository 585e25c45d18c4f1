"""DiT: Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image (B, C, H, W) is cut into p x p patches, linearly embedded into N = (H/p) * (W/p) tokens, given a
fixed 2-D sin-cos position embedding, and processed by ``depth`` adaLN-Zero transformer blocks. Conditioning
c = t_embed(t) [+ y_embed(y)] regresses per-block shift/scale/gate vectors; the gates start at zero so every
block starts as the identity. A final adaLN layer maps tokens back to p*p*out_channels values, which are
"unpatchified" into (B, out_channels, H, W). Label dropout for classifier-free guidance is done outside the
network: the caller passes the null label, index ``num_classes``.

Sizes (at 32x32, patch 2, 3 channels in and out; see ``dit_s`` / ``dit_b``; a class table adds
(num_classes + 1) * hidden):
    DiT-S: hidden 384, depth 12, heads 6   -> 32,471,436 parameters (unconditional)
    DiT-B: hidden 768, depth 12, heads 12  -> 129,528,588 parameters (unconditional)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import timestep_embedding


@dataclass
class DiTConfig:
    in_channels: int = 3
    out_channels: int | None = None  # None -> in_channels; 2 * in_channels for a learned variance
    image_size: int = 32
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None  # label value num_classes is the null (unconditional) class
    frequency_embedding_size: int = 256  # width of the sinusoidal timestep embedding fed to the t-MLP

    def __post_init__(self) -> None:
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size {self.image_size} not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4 != 0:
            raise ValueError("hidden_size must be divisible by 4 for the 2-D sin-cos position embedding")


def sincos_pos_embed_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (MAE / DiT): half the channels encode the row, half the column.

    Returns (grid_size**2, dim), in row-major token order (matching ``flatten(2)`` of a conv patch embedding).
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # each (G, G)

    def embed_1d(pos: Tensor) -> Tensor:
        out = pos.reshape(-1)[:, None] * omega[None, :]  # (G*G, D/4)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (G*G, D/2)

    # DiT's numpy code puts the column (w) embedding first, then the row (h) embedding
    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()  # (G*G, D)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # x (B, N, D); shift, scale (B, D) broadcast over tokens
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t followed by a two-layer MLP, to hidden_size."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))  # (B, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)  # (B, N, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: c regresses shift/scale/gate for attention and MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        # no affine parameters: the conditioning supplies scale and shift
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        # six (B, D) vectors
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa[:, None, :] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp[:, None, :] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # (B, N, D)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # each (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


class DiT(nn.Module):
    """DiT: ``forward(x (B, C, H, W), t (B,), y (B,) | None) -> (B, out_channels, H, W)``, H = W = image_size.

    Construct with flat keyword arguments (those of ``DiTConfig``), as Hydra's ``instantiate`` does.
    """

    # The blocks repeated through the network, for regional compilation (``compile_scope=blocks``).
    repeated_blocks = (DiTBlock,)

    def __init__(self, **kwargs):
        super().__init__()
        self.config = cfg = DiTConfig(**kwargs)
        D, p = cfg.hidden_size, cfg.patch_size
        self.grid_size = cfg.image_size // p

        self.x_embedder = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)  # patchify + linear embed
        self.t_embedder = TimestepEmbedder(D, cfg.frequency_embedding_size)
        # one extra row, index num_classes, is the null label used for classifier-free guidance
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, D) if cfg.num_classes is not None else None
        # fixed, not learned; a non-persistent buffer so it follows .to(device) but stays out of checkpoints
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, self.grid_size)[None], persistent=False)

        self.blocks = nn.ModuleList([DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(D, p, cfg.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # as in the DiT reference code
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # patch embedding initialised like a linear layer (xavier over the flattened kernel)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block's gates (and shifts/scales) start at zero, so each block is the identity
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # zero output layer: a fresh DiT outputs exactly zero
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        g, p, c = self.grid_size, self.config.patch_size, self.config.out_channels
        x = x.reshape(B, g, g, p, p, c)  # (B, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, p)
        return x.reshape(B, c, g * p, g * p)  # (B, C, H, W)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        x = self.x_embedder(x)  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            if y is None:  # no labels given: condition on the null class
                y = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(y)  # (B, D)
        elif y is not None:
            raise ValueError("labels y given to a DiT built without num_classes")
        for block in self.blocks:
            x = block(x, c)  # (B, N, D)
        x = self.final_layer(x, c)  # (B, N, p*p*C_out)
        return self.unpatchify(x)  # (B, C_out, H, W)


def dit_s(**kwargs) -> DiT:
    """DiT-S: hidden 384, depth 12, 6 heads. Other ``DiTConfig`` fields via kwargs (e.g. patch_size)."""
    return DiT(**{"hidden_size": 384, "depth": 12, "num_heads": 6, **kwargs})


def dit_b(**kwargs) -> DiT:
    """DiT-B: hidden 768, depth 12, 12 heads. Other ``DiTConfig`` fields via kwargs (e.g. patch_size)."""
    return DiT(**{"hidden_size": 768, "depth": 12, "num_heads": 12, **kwargs})
