"""Classifier-free guidance: what it reduces to (w = 0, a label-blind network), that guiding an x_0- or
v-network's output is guiding ε, that a learned variance stays conditional — and the CLIs on a tiny conditional
checkpoint: the sample grid has one row per class, and evaluate writes
one row per guidance scale."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_train, small_train_cfg
from diffusion_lab.diffusion import Diffusion, build_schedule
from diffusion_lab.diffusion.guidance import ClassifierFreeGuidance, drop_labels
from diffusion_lab.samplers import DDIMSampler, DDPMSampler, DPMSolverPPSampler, HeunSampler

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 3
NULL = NUM_CLASSES
C = 2
SHAPE = (6, C, 3, 3)


class ToyNet:
    """A conditional 'network' whose ε depends on x, t and the label (the null class included), returned in the
    output space of ``prediction`` (the x_0 / v a perfect network of that kind would give for this ε); with
    ``learned`` it appends C label-dependent variance channels. ``blind``: ignores the label. Records batch
    sizes."""

    def __init__(self, schedule, prediction="eps", learned=False, blind=False):
        self.schedule, self.prediction, self.learned, self.blind = schedule, prediction, learned, blind
        self.batches: list[int] = []

    def eps(self, x, t, y):
        yb = torch.zeros_like(y) if self.blind else y
        yb = yb.to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(x) * (1 + 0.3 * yb) + 0.2 * yb - 0.1 + 1e-3 * t.to(x.dtype).reshape(-1, 1, 1, 1)

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        eps = self.eps(x, t, y)
        a = self.schedule.at("sqrt_alphas_cumprod", t, x.ndim)
        s = self.schedule.at("sqrt_one_minus_alphas_cumprod", t, x.ndim)
        x0 = (x - s * eps) / a
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.prediction]
        if self.learned:
            yb = torch.zeros_like(y) if self.blind else y
            out = torch.cat([out, 0.5 * torch.tanh(x) - 0.2 * yb.to(x.dtype).reshape(-1, 1, 1, 1)], dim=1)
        return out


def labels(b=SHAPE[0]):
    return torch.arange(b) % NUM_CLASSES


def setup(prediction="eps", variance="fixed_small", blind=False, T=100):
    s = build_schedule("linear", T)
    d = Diffusion(s, prediction, variance)
    return d, ToyNet(s, prediction, d.variance.learned, blind)


def cfg_model(net, w, learned=False):
    return ClassifierFreeGuidance(net, labels(), w, NULL, mean_channels=C if learned else None)


SAMPLERS = [DDPMSampler(10), DDIMSampler(10, eta=0.5), DPMSolverPPSampler(8), HeunSampler(5)]


def run(sampler, d, model):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return sampler.sample(d, model, SHAPE, noise=noise, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_scale_zero_is_plain_conditional_sampling(sampler):
    d, net = setup(variance="learned_range")
    guided = run(sampler, d, cfg_model(net, 0.0, learned=True))
    assert set(net.batches) == {SHAPE[0]}  # w = 0: one conditional pass of B, no unconditional one
    y = labels()
    plain = run(sampler, d, lambda x, t: net(x, t, y))
    assert torch.equal(guided, plain)
    # ... and with w > 0 the result differs (the toy net's output depends on the label)
    assert not torch.allclose(run(sampler, d, cfg_model(net, 2.0, learned=True)), plain, atol=1e-3)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
@pytest.mark.parametrize("w", [1.0, 4.0])
def test_label_blind_network_gives_unconditional_sampling(sampler, w):
    """(1 + w) out(x, c) - w out(x, ∅) = out(x) when the network ignores c, for any w."""
    d, net = setup(prediction="v", blind=True)
    net.batches.clear()
    guided = run(sampler, d, cfg_model(net, w))
    assert set(net.batches) == {2 * SHAPE[0]}  # conditional and unconditional passes in one batch of 2B
    null = torch.full((SHAPE[0],), NULL)
    unconditional = run(sampler, d, lambda x, t: net(x, t, null))
    torch.testing.assert_close(guided, unconditional, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- parameterizations
@pytest.mark.parametrize("w", [0.5, 3.0])
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_guiding_x0_or_v_output_is_guiding_eps(prediction, w):
    """x_0 and v are affine in ε at fixed x_t with weights (1 + w) - w = 1, so guiding the x_0 / v output gives
    exactly the x_0 / v implied by the guided ε: ε̃ = (1 + w) ε_c - w ε_∅."""
    d_eps, eps_net = setup("eps")
    d, net = setup(prediction)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    y = labels()
    for i in (99, 50, 5, 0):
        t = torch.full((SHAPE[0],), i)
        eps_c, eps_u = eps_net.eps(x, t, y), eps_net.eps(x, t, torch.full_like(y, NULL))
        assert not torch.allclose(eps_c, eps_u)  # the label matters
        eps_guided = (1 + w) * eps_c - w * eps_u
        out = d.denoise(cfg_model(net, w)(x, t), x, t)
        ref = d_eps.denoise(eps_guided, x, t)
        torch.testing.assert_close(out.pred_eps, eps_guided, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.pred_x0, ref.pred_x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.mean, ref.mean, rtol=1e-4, atol=1e-4)
    # and so whole sampling runs agree
    for sampler in (DPMSolverPPSampler(8, clip_denoised=False), DDPMSampler(10, clip_denoised=False)):
        a = run(sampler, d, cfg_model(net, w))
        b = run(sampler, d_eps, cfg_model(eps_net, w))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variance", ["learned", "learned_range"])
def test_learned_variance_channels_are_the_conditional_ones(variance):
    d, net = setup("eps", variance)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    y = labels()
    w = 2.0
    for i in (90, 3):
        t = torch.full((SHAPE[0],), i)
        guided = cfg_model(net, w, learned=True)(x, t)
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, NULL))
        assert not torch.allclose(cond[:, C:], uncond[:, C:])
        assert torch.equal(guided[:, C:], cond[:, C:])
        torch.testing.assert_close(guided[:, :C], (1 + w) * cond[:, :C] - w * uncond[:, :C])
        out, out_cond = d.denoise(guided, x, t), d.denoise(cond, x, t)
        torch.testing.assert_close(out.log_variance, out_cond.log_variance)
        assert torch.equal(out.var_out, cond[:, C:])


def test_drop_labels():
    y = torch.arange(10_000) % NUM_CLASSES
    assert torch.equal(drop_labels(y, 0.0, NULL), y)
    assert (drop_labels(y, 1.0, NULL) == NULL).all()
    dropped = drop_labels(y, 0.2, NULL, generator=torch.Generator().manual_seed(0))
    kept = dropped != NULL
    assert torch.equal(dropped[kept], y[kept])
    assert abs((~kept).float().mean().item() - 0.2) < 0.02
    again = drop_labels(y, 0.2, NULL, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)


# ------------------------------------------------------------------------------------------- CLIs
@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory, one_thread) -> Path:
    """A tiny class-conditional Fashion-MNIST UNet (T = 50) trained for one step, its sampler DPM-Solver++.
    (debug=fast_dev_run writes no checkpoint, hence trainer.max_steps=1.)"""
    out = tmp_path_factory.mktemp("conditional")
    cfg = small_train_cfg(
        out,
        "conditional=true",
        "p_uncond=0.2",
        "sampler=dpmpp2m",
        "final_samples=0",
        "trainer.max_steps=1",
    )
    assert cfg.model.base_channels == 8 and cfg.schedule.num_timesteps == 50
    from diffusion_lab.train import train

    return Path(train(cfg)["checkpoint"])


def grid_tiles(png: Path, rows: int, cols: int, size: int = 28, pad: int = 2) -> np.ndarray:
    """The (rows, cols, size, size) tiles of a torchvision grid of 1-channel images."""
    img = np.asarray(Image.open(png).convert("L"))
    assert img.shape == (rows * (size + pad) + pad, cols * (size + pad) + pad)
    return np.stack(
        [
            np.stack(
                [
                    img[pad + r * (size + pad) : pad + r * (size + pad) + size, pad + c * (size + pad) :][
                        :, :size
                    ]
                    for c in range(cols)
                ]
            )
            for r in range(rows)
        ]
    )


def test_sample_cli_grid_has_one_row_per_class(conditional_checkpoint, tmp_path):
    from diffusion_lab.sample import sample

    cfg = compose_train(
        [
            f"ckpt={conditional_checkpoint}",
            f"out_dir={tmp_path}",
            "device=cpu",
            "progress=false",
            "n=20",
            "steps=2",
            "guidance=1.5",
            "name=cond",
        ],
        config_name="sample",
    )
    result = sample(cfg)
    assert "DPMSolverPPSampler" in result["sampler"]  # the trained sampler
    saved = np.load(result["samples_npz"])
    # one row per class: 20 samples of 10 classes -> 2 a row; row r, column c holds sample 2 r + c, of class r
    assert saved["labels"].tolist() == [i // 2 for i in range(20)]
    tiles = grid_tiles(Path(result["grid"]), rows=10, cols=2)
    images = saved["images"][..., 0].astype(int)
    for r in range(10):
        for c in range(2):
            assert np.abs(tiles[r, c].astype(int) - images[2 * r + c]).max() <= 1
    # chosen classes: a row for each
    cfg = compose_train(
        [
            f"ckpt={conditional_checkpoint}",
            f"out_dir={tmp_path}",
            "device=cpu",
            "progress=false",
            "n=4",
            "steps=2",
            "classes=[3,7]",
            "name=chosen",
        ],
        config_name="sample",
    )
    result = sample(cfg)
    assert np.load(result["samples_npz"])["labels"].tolist() == [3, 3, 7, 7]
    grid_tiles(Path(result["grid"]), rows=2, cols=2)


def test_evaluate_cli_one_row_per_guidance(conditional_checkpoint, tmp_path):
    from diffusion_lab.evaluate import evaluate
    from diffusion_lab.metrics.classifier import SmallClassifier, save_classifier

    torch.manual_seed(0)
    features = save_classifier(SmallClassifier(1, 10, 28, width=4, feature_dim=8), tmp_path / "clf.pt")
    cfg = compose_train(
        [
            f"ckpt={conditional_checkpoint}",
            f"out_dir={tmp_path / 'eval'}",
            f"cache_dir={tmp_path / 'cache'}",
            f"features={features}",
            "metrics=[fid]",
            "guidance=[0,1]",
            "steps=[3]",
            "n=8",
            "n_real=16",
            "batch_size=8",
            "device=cpu",
            "progress=false",
        ],
        config_name="evaluate",
    )
    result = evaluate(cfg)
    rows = result["rows"]
    assert [r["guidance"] for r in rows] == [0.0, 1.0]
    assert all(r["sampler"] == "dpmpp2m" and r["steps"] == 3 and r["n"] == 8 for r in rows)
    assert all(np.isfinite(r["fd_classifier"]) for r in rows)
    with open(result["paths"]["table_csv"]) as f:
        table = list(csv.DictReader(f))
    assert [float(r["guidance"]) for r in table] == [0.0, 1.0]
    assert json.loads(Path(result["paths"]["json"]).read_text())["rows"] == rows
