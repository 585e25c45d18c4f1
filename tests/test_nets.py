from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion_lab.nets import (
    DiT,
    DiTConfig,
    MLPDenoiser,
    UNet,
    UNetConfig,
    count_parameters,
    dit_b,
    dit_s,
    timestep_embedding,
)
from diffusion_lab.nets.unet import AttentionBlock

HO_CIFAR10 = dict(
    in_channels=3,
    out_channels=3,
    base_channels=128,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(16,),
    dropout=0.1,
    image_size=32,
)
HO_CIFAR10_PARAMS = 35_746_307  # matches the reference PyTorch port of Ho et al.'s CIFAR-10 model

SMALL_UNET = dict(
    base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), image_size=16
)
SMALL_DIT = dict(hidden_size=64, depth=2, num_heads=4, patch_size=2, image_size=16)


def small_nets(in_channels=3, out_channels=None, num_classes=None):
    """(name, net, example x) for one small instance of every network."""
    c = dict(out_channels=out_channels, num_classes=num_classes)
    return [
        ("unet", UNet(in_channels=in_channels, **SMALL_UNET, **c), torch.randn(2, in_channels, 16, 16)),
        ("dit", DiT(in_channels=in_channels, **SMALL_DIT, **c), torch.randn(2, in_channels, 16, 16)),
        (
            "mlp",
            MLPDenoiser(
                in_dim=in_channels, out_dim=out_channels, hidden=32, num_layers=2, num_classes=num_classes
            ),
            torch.randn(2, in_channels),
        ),
    ]


@torch.no_grad()
def perturb_zero_init_(net: nn.Module, std: float = 0.1) -> None:
    """Randomise every all-zero parameter (zero-init output layers, adaLN-Zero, zero biases)."""
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        if not p.any():
            p.copy_(torch.randn(p.shape, generator=g) * std)


T = torch.tensor([10, 700])


# --- timestep embedding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 128, 7])
def test_timestep_embedding_matches_formula(dim):
    t = torch.tensor([0, 1, 37, 999])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    half = dim // 2
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            freq = 10000.0 ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(tb * freq), abs=1e-4)
            assert emb[b, half + i].item() == pytest.approx(math.sin(tb * freq), abs=1e-4)
    if dim % 2:
        assert (emb[:, -1] == 0).all()


def test_timestep_embedding_float_and_int_agree():
    assert torch.allclose(
        timestep_embedding(torch.tensor([3, 500]), 16), timestep_embedding(torch.tensor([3.0, 500.0]), 16)
    )
    # fractional timesteps are embedded too
    a, b = timestep_embedding(torch.tensor([3.0, 3.5]), 16)
    assert not torch.allclose(a, b)


# --- shapes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_channels", [None, 6])
def test_output_shapes(out_channels):
    for name, net, x in small_nets(in_channels=3, out_channels=out_channels):
        out = net(x, T)
        expected = (x.shape[0], out_channels or 3, *x.shape[2:])
        assert out.shape == expected, name


def test_unet_28x28_single_channel():
    net = UNet(
        in_channels=1,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(14,),
        image_size=28,
    )
    # attention at 14x14 only: 1 res block down + 2 up at level 1, plus the middle block (at 7x7)
    assert sum(isinstance(m, AttentionBlock) for m in net.modules()) == 1 + 2 + 1
    x = torch.randn(2, 1, 28, 28)  # 28 -> 14 -> 7 -> 14 -> 28
    assert net(x, T).shape == (2, 1, 28, 28)
    perturb_zero_init_(net)
    assert net(x, T).shape == (2, 1, 28, 28)


def test_unet_adm_options():
    net = UNet(
        **{**SMALL_UNET, "channel_mult": (1, 2, 2)},
        num_head_channels=16,
        use_scale_shift_norm=True,
        resblock_updown=True,
        out_channels=6,
        num_classes=10,
    )
    perturb_zero_init_(net)
    x = torch.randn(2, 3, 16, 16)
    assert net(x, T, torch.tensor([1, 10])).shape == (2, 6, 16, 16)
    assert all(
        m.num_heads == m.qkv.out_channels // 3 // 16 for m in net.modules() if isinstance(m, AttentionBlock)
    )


def test_unet_config_validation_and_lists():
    with pytest.raises(ValueError):
        UNet(**{**SMALL_UNET, "image_size": 14, "channel_mult": (1, 2, 2)})  # 14 -> 7 -> cannot halve again
    cfg = UNetConfig(channel_mult=[1, 2], attention_resolutions=[8])  # lists, as from YAML
    assert cfg.channel_mult == (1, 2) and cfg.attention_resolutions == (8,) and cfg.out_channels == 3


def test_hydra_instantiate_with_lists():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.create(
        {
            "_target_": "diffusion_lab.nets.UNet",
            **SMALL_UNET,
            "channel_mult": [1, 2],
            "attention_resolutions": [8],
        }
    )
    net = instantiate(conf)
    assert net.config.channel_mult == (1, 2)
    assert net(torch.randn(1, 3, 16, 16), T[:1]).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("image_size", [28, 32])
def test_dit_sizes(image_size):
    net = DiT(
        in_channels=1,
        hidden_size=64,
        depth=2,
        num_heads=4,
        patch_size=2,
        image_size=image_size,
        out_channels=2,
    )
    assert net.pos_embed.shape == (1, (image_size // 2) ** 2, 64)
    perturb_zero_init_(net)
    assert net(torch.randn(2, 1, image_size, image_size), T).shape == (2, 2, image_size, image_size)


def test_dit_unpatchify_inverts_patchify():
    net = DiT(in_channels=3, **SMALL_DIT)
    x = torch.randn(2, 3, 16, 16)
    p, g = 2, 8
    tokens = (
        x.reshape(2, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p * 3)
    )  # (B, N, p*p*C)
    assert torch.equal(net.unpatchify(tokens), x)


# --- parameter counts --------------------------------------------------------------------------------------


def test_ho_cifar10_parameter_count():
    n = count_parameters(UNet(**HO_CIFAR10))
    assert n == HO_CIFAR10_PARAMS
    assert round(n / 1e6, 1) == 35.7
    assert UNetConfig() == UNetConfig(**HO_CIFAR10)  # the default config *is* Ho et al.'s


def test_dit_presets_parameter_counts():
    cfg = dict(in_channels=3, image_size=32, patch_size=2)
    assert count_parameters(dit_s(**cfg)) == 32_471_436
    assert count_parameters(dit_b(**cfg)) == 129_528_588
    assert DiTConfig(**cfg).out_channels == 3


# --- conditioning ------------------------------------------------------------------------------------------


def test_fresh_nets_output_zero():
    # every net zero-initialises its output layer, so an untrained net predicts exactly 0
    for name, net, x in small_nets(num_classes=5):
        assert torch.equal(net(x, T), torch.zeros_like(net(x, T))), name


def test_different_t_give_different_outputs():
    for name, net, x in small_nets():
        perturb_zero_init_(net)
        net.eval()
        x = x[:1].expand(2, *x.shape[1:])  # same input twice
        out = net(x, torch.tensor([10, 11]))
        assert not torch.allclose(out[0], out[1]), name


def test_class_conditioning_and_null_class():
    for name, net, x in small_nets(num_classes=5):
        perturb_zero_init_(net)
        net.eval()
        x = x[:1].expand(3, *x.shape[1:])
        t = torch.tensor([100, 100, 100])
        out = net(x, t, torch.tensor([0, 3, 5]))  # 5 is the null class
        assert torch.isfinite(out).all(), name
        assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2]), name
        # y=None means "unconditional": the null class
        assert torch.allclose(net(x, t), net(x, t, torch.full((3,), 5)), atol=1e-6), name


def test_labels_without_num_classes_raise():
    for _, net, x in small_nets():
        with pytest.raises(ValueError, match="without num_classes"):
            net(x, T, torch.tensor([0, 1]))


def test_gradients_reach_every_parameter():
    for name, net, x in small_nets(out_channels=6, num_classes=5):
        perturb_zero_init_(net)
        net.train()
        out = net(x, T, torch.tensor([1, 5]))
        loss = (out - torch.randn_like(out)).pow(2).mean()
        loss.backward()
        dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
        assert not dead, (name, dead)


# --- memory format / precision / compile -------------------------------------------------------------------


def test_unet_channels_last_and_bf16_autocast():
    net = UNet(**SMALL_UNET, use_scale_shift_norm=True)
    perturb_zero_init_(net)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    ref = net(x, T)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last), T)
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = net_cl(x.to(memory_format=torch.channels_last), T)
    assert out_bf16.shape == ref.shape and torch.isfinite(out_bf16).all()
    assert torch.allclose(out_bf16.float(), ref, atol=0.1 * ref.abs().max().item())


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attention_keeps_channels_last_through_forward_and_backward(num_heads):
    """In channels_last the attention block computes the same thing, returns NHWC storage, and hands its qkv
    convolution an NHWC gradient (an NCHW one makes cuDNN transpose on every backward)."""
    torch.manual_seed(0)
    block = AttentionBlock(32, num_heads=num_heads, groups=8)
    nn.init.normal_(block.proj_out.weight, std=0.1)  # zero-initialised: the attention would not show
    x = torch.randn(2, 32, 6, 5)
    ref = block(x)
    grads = []
    block.qkv.register_full_backward_hook(lambda m, gin, gout: grads.append(gout[0]))
    block_cl = block.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = block_cl(x_cl)
    assert torch.allclose(out, ref, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    (out * torch.randn_like(out)).sum().backward()
    assert grads and grads[0].is_contiguous(memory_format=torch.channels_last)
    # and the NCHW path is untouched: its gradient stays NCHW
    grads.clear()
    block_nchw = block.to(memory_format=torch.contiguous_format)
    block_nchw(x.clone().requires_grad_()).sum().backward()
    assert grads[0].is_contiguous()


def test_dit_bf16_autocast():
    net = DiT(in_channels=3, **SMALL_DIT)
    perturb_zero_init_(net)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, T)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["unet", "dit", "mlp"])
def test_fullgraph_compile_traces(kind):
    # dynamo tracing with the eager backend: proves there are no graph breaks (no data-dependent Python
    # control flow) without paying for inductor code generation on CPU
    name, net, x = next(n for n in small_nets(num_classes=5) if n[0] == kind)
    perturb_zero_init_(net)
    net.eval()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    y = torch.tensor([0, 5])
    assert torch.allclose(compiled(x, T, y), net(x, T, y), atol=1e-5)
