"""Peer baselines for the "quality per GPU-minute" comparison on Fashion-MNIST 28x28x1.

One plain-PyTorch loop (no Lightning, no Hydra) trains a peer's network for a fixed wall-clock budget, then
samples from its EMA weights with DDIM and scores the samples with diffusion_lab's metrics. Everything but the
network is shared, so the networks (and their libraries' layers) are what differs:

    data     the Fashion-MNIST train split of ``DiffusionDataModule`` (val_size 1000 held out, as in training),
             held on the device as one tensor in [-1, 1]; batches are gathered by index from a per-epoch
             permutation (the path of the framework's ``data.on_gpu=true``)
    process  ``LinearSchedule(1000)`` + ``q_sample``, L_simple (MSE on ε), uniform t
    optim    AdamW lr 2e-4 (``--lr-warmup-steps``: linear warm-up, as conf/lr_scheduler), betas (0.9, 0.999),
             weight decay 0 (conf/optimizer/adamw.yaml), grad-norm clip 1.0
             (conf/trainer/default.yaml), bf16 autocast on CUDA, EMA 0.999 of the parameters every step (one
             foreach lerp over the parameter lists, as the framework's EMA callback; ``--ema-warmup`` its warmup)
    compile  ``--compile-mode``: none (plain PyTorch), default, or reduce-overhead (CUDA graphs; the network is
             compiled as the framework's ``compile=`` does, the loss and optimizer step stay eager), or capture
             (nothing compiled: the network's training forward and backward captured as CUDA graphs by the
             framework's ``compile=capture``, ``capture.CapturedNet``; one CUDA device);
             ``--sample-compile-mode`` the same for sampling (none, default or reduce-overhead; default none, as
             ``diffusion_lab.evaluate``)
    seed     ``--seed`` seeds the initial weights, the data order, timesteps and noise; sampling uses seed + 1
    sampling DDIM (η = 0, 100 steps) of ``Diffusion(LinearSchedule(1000), "eps", "fixed_small")`` from the EMA
             weights, bf16 autocast, batches of 1000
    metrics  Fréchet distance / precision / recall / KID on the features of a domain classifier
             (``python -m diffusion_lab.features``) against the first ``n_real`` train-split images

Peers (``--peer``):
    diffusers   ``diffusers.UNet2DModel`` (64, 128, 128), attention at 14x14 and in the middle (7x7)
    lucidrains  ``denoising_diffusion_pytorch.Unet(dim=64, dim_mults=(1, 2, 2))``: 2 downsamples, 28->14->7
                (its last level does not downsample), so 28x28 runs unpadded
    ours-net    diffusion_lab's ``UNet`` with conf/model/unet_small.yaml, through this same loop

Training time is wall time with the device synchronised at each check (every ``--check-every`` steps), from
the first step on: cuDNN autotuning, and with ``--compile-mode`` the compilation, count against the budget.
Dropout (``--dropout``) is 0 by default, as in experiment=fmnist_fast.

On the GPU machine (``source benchmarks/gpu_env.sh`` first):
    python benchmarks/peers_fmnist.py --peer diffusers --compile-mode reduce-overhead \
        --features /tmp/dl/.cache/features/fashion_mnist_classifier.pt
The fair comparison against experiment=fmnist_fast, 3 seeds per system: ``python benchmarks/run.py quality``.
CPU smoke test:
    python benchmarks/peers_fmnist.py --peer lucidrains --device cpu --seconds 5 --n 16 --batch 8 --sample-steps 3

Prints the parameter count and progress on stderr, and one JSON line on stdout (also written to
``<out>/<peer>_result.json``), next to ``<out>/<peer>_samples.npz`` (uint8 NHWC) and ``<out>/<peer>_grid.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from diffusion_lab.capture import CapturedNet
from diffusion_lab.cli import CONFIG_DIR
from diffusion_lab.data import DiffusionDataModule
from diffusion_lab.diffusion import Diffusion, LinearSchedule, q_sample
from diffusion_lab.io import save_grid, save_samples_npz
from diffusion_lab.metrics import SampleQuality
from diffusion_lab.metrics.evaluation import QualitySettings, build_extractor, real_features_for
from diffusion_lab.nets import count_parameters
from diffusion_lab.optim import warmup_schedule
from diffusion_lab.samplers import DDIMSampler

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("diffusers", "lucidrains", "ours-net")
COMPILE_MODES = ("none", "default", "reduce-overhead")
TRAIN_COMPILE_MODES = (*COMPILE_MODES, "capture")
SHAPE = (1, 28, 28)  # Fashion-MNIST, C x H x W
NUM_TIMESTEPS = 1000

Forward = Callable[[nn.Module, Tensor, Tensor], Tensor]


def log(msg: str) -> None:
    print(f"[peers_fmnist] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- networks
def build_peer(peer: str, dropout: float = 0.0) -> tuple[nn.Module, Forward, str]:
    """(network, forward(net, x_t, t) -> ε prediction, description) for one peer at 28x28x1."""
    channels, size = SHAPE[0], SHAPE[1]
    if peer == "diffusers":
        from diffusers import UNet2DModel

        net = UNet2DModel(
            sample_size=size,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=2,
            block_out_channels=(64, 128, 128),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=32,
            dropout=dropout,
        )

        def forward(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
            return m(x, t, return_dict=False)[0]  # == m(x, t).sample

        return net, forward, "diffusers.UNet2DModel(block_out_channels=(64, 128, 128), attn at 14x14)"
    if peer == "lucidrains":
        from denoising_diffusion_pytorch import Unet

        net = Unet(dim=64, dim_mults=(1, 2, 2), channels=channels, dropout=dropout)
        factor = net.downsample_factor  # 2 ** (levels - 1): the last level keeps its resolution
        if size % factor:
            raise ValueError(f"lucidrains Unet needs sides divisible by {factor}; {size} is not")

        def forward(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
            return m(x, t)

        return net, forward, "denoising_diffusion_pytorch.Unet(dim=64, dim_mults=(1, 2, 2)), unpadded 28x28"
    if peer == "ours-net":
        from unet_small import CONFIG, unet_small

        net = unet_small(dropout=dropout, in_channels=channels, out_channels=channels, image_size=size)

        def forward(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
            return m(x, t)

        return net, forward, f"diffusion_lab.nets.UNet({CONFIG.relative_to(ROOT)}, image_size={size})"
    raise ValueError(f"--peer={peer!r}: choose one of {', '.join(PEERS)}")


# -------------------------------------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_train_set(datamodule: DiffusionDataModule, device: torch.device) -> Tensor:
    """The whole train split, (N, 1, 28, 28) float in [-1, 1], on ``device``."""
    datamodule.setup("fit")
    n = len(datamodule.dataset("train"))
    data = datamodule.real_images("train", n)  # unaugmented; Fashion-MNIST has no augmentation anyway
    if tuple(data.shape[1:]) != SHAPE:
        raise ValueError(f"expected train images of shape {SHAPE}, got {tuple(data.shape[1:])}")
    return data.to(device).contiguous()


def compiled(net: nn.Module, mode: str) -> nn.Module:
    """``net`` under torch.compile ``mode`` (a wrapper sharing its parameters), or ``net`` itself for none."""
    return net if mode == "none" else torch.compile(net, mode=mode)


class PositionalForward(nn.Module):
    """A peer's ``forward(net, x, t)`` as a module called ``(x, t)`` that returns one tensor: the call ``CapturedNet``
    captures (diffusers' keyword ``return_dict`` and tuple output stay inside). Its parameters are the peer's."""

    def __init__(self, net: nn.Module, forward: Forward):
        super().__init__()
        self.net = net
        self.peer_forward = forward

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.peer_forward(self.net, x, t)


def training_runner(
    net: nn.Module, forward: Forward, mode: str, graph=None, device: str = "cuda"
) -> tuple[Callable, Forward]:
    """(what the training step calls, forward(run, x_t, t)) for ``--compile-mode``: capture wraps the network in
    the framework's ``CapturedNet`` (``graph`` and ``device``: a stand-in capture on the CPU, for the tests), the
    others compile it."""
    if mode == "capture":
        captured = CapturedNet(PositionalForward(net, forward), graph=graph, device=device)
        return captured, lambda run, x, t: run(x, t)
    return compiled(net, mode), forward


# ------------------------------------------------------------------------------------------------- training
def ema_decay(count: int, decay: float, warmup: bool) -> float:
    """The decay of the EMA update after ``count`` earlier ones; with ``warmup`` min(decay, (1 + k) / (10 + k)),
    as the framework's EMA callback (callbacks/ema.py), so a short run is not averaged with its random init."""
    return min(decay, (1.0 + count) / (10.0 + count)) if warmup else decay


def ema_update(ema_params: list[Tensor], params: list[Tensor], decay: float, copy: bool = False) -> None:
    """ema <- decay * ema + (1 - decay) * param for every pair (``copy``: ema <- param), in one foreach kernel
    per dtype/device group."""
    if copy:
        torch._foreach_copy_(ema_params, params)
    else:
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def train(
    args: argparse.Namespace, net: nn.Module, ema: nn.Module, forward: Forward, data: Tensor, device
) -> dict:
    schedule = LinearSchedule(NUM_TIMESTEPS)
    params = [p for p in net.parameters() if p.requires_grad]
    ema_params = [p for p, q in zip(ema.parameters(), net.parameters()) if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    lr_schedule = warmup_schedule(
        opt, args.lr_warmup_steps
    )  # constant after the warm-up, as conf/lr_scheduler
    run, forward = training_runner(net, forward, args.compile_mode)
    # CUDA graphs overwrite a replay's outputs at the next replay: each step starts a new generation of them
    mark_step = args.compile_mode == "reduce-overhead"
    use_amp = device.type == "cuda"
    n_data, batch = len(data), args.batch
    if batch > n_data:
        raise ValueError(f"--batch {batch} is larger than the training set ({n_data})")

    net.train()
    perm, pos = torch.randperm(n_data, device=device), 0
    loss_sum = torch.zeros((), device=device)
    steps, window, loss_mean = 0, 0, float("nan")
    synchronize(device)
    started = last_print = time.perf_counter()
    while True:
        if pos + batch > n_data:  # a new epoch; the ragged end is dropped, as the train loader does
            perm, pos = torch.randperm(n_data, device=device), 0
        x0 = data[perm[pos : pos + batch]]
        pos += batch
        t = torch.randint(0, NUM_TIMESTEPS, (batch,), device=device)
        noise = torch.randn_like(x0)
        xt = q_sample(schedule, x0, t, noise)
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, use_amp):
            pred = forward(run, xt, t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        opt.step()
        lr_schedule.step()
        with torch.no_grad():
            first = args.ema_warmup and steps == 0  # the framework's first update copies the weights
            ema_update(ema_params, params, ema_decay(steps, args.ema, args.ema_warmup), copy=first)
            loss_sum += loss.detach()
        steps += 1
        window += 1
        if steps % args.check_every == 0:
            synchronize(device)
            now = time.perf_counter()
            elapsed = now - started
            loss_mean = float(loss_sum) / window
            loss_sum.zero_()
            window = 0
            if not math.isfinite(loss_mean):
                raise FloatingPointError(f"loss is {loss_mean} at step {steps}")
            if elapsed >= args.seconds:
                break
            if now - last_print >= args.log_every:
                last_print = now
                log(f"step {steps}  {elapsed:.0f}/{args.seconds:.0f} s  loss {loss_mean:.4f}  "
                    f"{steps * batch / elapsed:.0f} img/s")  # fmt: skip
    synchronize(device)
    seconds = time.perf_counter() - started
    # Every parameter-free module state (e.g. a BatchNorm's running stats) follows the live network.
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
    return {
        "lr_final": opt.param_groups[0]["lr"],
        "steps": steps,
        "seconds": seconds,
        "img_per_s": steps * batch / seconds,
        "loss": loss_mean,
    }


# ------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(args: argparse.Namespace, ema: nn.Module, forward: Forward, device) -> tuple[Tensor, float]:
    """``args.n`` DDIM samples of the EMA network, (N, 1, 28, 28) in [-1, 1] on the CPU, and the seconds."""
    diffusion = Diffusion(LinearSchedule(NUM_TIMESTEPS), "eps", "fixed_small")
    sampler = DDIMSampler(steps=args.sample_steps, eta=0.0)
    ema.eval()
    run = compiled(ema, args.sample_compile_mode)
    mark_step = args.sample_compile_mode == "reduce-overhead"
    use_amp = device.type == "cuda"

    def model(x: Tensor, t: Tensor) -> Tensor:
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, use_amp):
            out = forward(run, x, t)
        return out.float()  # the diffusion arithmetic stays in float32

    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    chunks = []
    synchronize(device)
    started = time.perf_counter()
    for i in range(0, args.n, args.sample_batch):
        b = min(args.sample_batch, args.n - i)
        x = sampler.sample(diffusion, model, (b, *SHAPE), device, generator=gen)
        chunks.append(x.clamp(-1, 1))
    synchronize(device)
    seconds = time.perf_counter() - started
    return torch.cat(chunks).cpu(), seconds


def score(args: argparse.Namespace, datamodule, samples: Tensor, device) -> dict:
    """FD / precision / recall / KID of ``samples`` on the classifier's features (evaluate.py's settings)."""
    settings = QualitySettings(
        features=str(args.features),
        real_split="train",
        n_real=args.n_real,
        cache_dir=args.cache_dir,
        kid_subset_size=min(1000, len(samples), args.n_real),
    )
    extractor = build_extractor(settings).to(device)
    real = real_features_for(datamodule, extractor, settings, device)
    metric = SampleQuality(
        extractor, real, kid_subset_size=settings.kid_subset_size, pr_num_samples=len(samples)
    ).to(device)
    for chunk in samples.split(settings.batch_size):
        metric.update(chunk.to(device))
    return metric.compute()


def step_flops(net: nn.Module, forward: Forward, batch: int) -> dict[str, float]:
    """GFLOPs of one training step (forward and backward of the ε loss) and of one forward at ``batch``, counted
    by torch.utils.flop_counter (matrix products and convolutions; norms and activations count nothing) on the
    CPU: what separates two networks' step rates where both run as fast per FLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, *SHAPE)
    t = torch.randint(0, NUM_TIMESTEPS, (batch,))
    with FlopCounterMode(display=False) as step:
        F.mse_loss(forward(net, x, t).float(), torch.randn_like(x)).backward()
    with FlopCounterMode(display=False) as ahead, torch.no_grad():
        forward(net, x, t)
    net.zero_grad(set_to_none=True)
    return {"train_step_gflop": step.get_total_flops() / 1e9, "forward_gflop": ahead.get_total_flops() / 1e9}


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", required=True, choices=PEERS)
    p.add_argument("--seconds", type=float, default=240.0, help="training wall-time budget")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-warmup-steps", type=int, default=0, help="linear lr warm-up steps, then constant")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm; 0 disables clipping")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay, applied every step")
    p.add_argument("--ema-warmup", action="store_true", help="decay min(ema, (1+k)/(10+k)) at update k")
    p.add_argument("--check-every", type=int, default=50, help="steps between device syncs / time checks")
    p.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--n", type=int, default=10000, help="samples to generate and score")
    p.add_argument("--sample-steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--sample-batch", type=int, default=1000)
    p.add_argument("--features", default=None, help="classifier from `python -m diffusion_lab.features`")
    p.add_argument("--n-real", type=int, default=10000, help="real train-split images for the metrics")
    default_cache = Path(os.environ.get("DIFFUSION_LAB_ROOT", ".")) / ".cache" / "metrics"
    p.add_argument("--cache-dir", default=str(default_cache), help="real-feature cache (the framework's)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST idx folder (default: Debian's)")
    p.add_argument("--out", default="outputs/peers_fmnist")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--compile-mode",
        choices=TRAIN_COMPILE_MODES,
        default="none",
        help="torch.compile mode of the trained network, or capture (CUDA graphs of the eager step, no compiler)",
    )
    p.add_argument(
        "--sample-compile-mode", choices=COMPILE_MODES, default="none", help="... of the sampler's"
    )
    p.add_argument("--compile", action="store_true", help="both compile modes 'default' (an alias)")
    p.add_argument("--dropout", type=float, default=0.0, help="the peer network's dropout probability")
    p.add_argument("--seed", type=int, default=0, help="initial weights, data order, timesteps and noise")
    p.add_argument(
        "--count",
        action="store_true",
        help="only count: the network's parameters and the FLOPs of one training step (forward + backward) "
        "and of one forward at --batch, on the CPU; one JSON line, no data, no training",
    )
    args = p.parse_args(argv)
    if args.compile:
        args.compile_mode = args.sample_compile_mode = "default"
    if args.compile_mode == "capture" and not args.device.startswith("cuda"):
        p.error(f"--compile-mode capture records CUDA graphs and needs --device cuda, not {args.device}")
    if args.lr_warmup_steps < 0:
        p.error("--lr-warmup-steps must be >= 0")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    for name in ("batch", "check_every", "n", "sample_steps", "sample_batch", "n_real"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.ema < 1.0:
        p.error("--ema must be in [0, 1)")
    return args


def cudnn_autotune() -> bool:
    """Whether cuDNN times every convolution's algorithms (torch.backends.cudnn.benchmark): the peers take what
    our GPU trainer preset (conf/trainer/gpu.yaml) takes, so the comparison keeps one setting for every system."""
    return bool(OmegaConf.load(Path(CONFIG_DIR) / "trainer" / "gpu.yaml").benchmark)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_autotune()
    torch.manual_seed(args.seed)

    net, forward, desc = build_peer(args.peer, args.dropout)
    params = count_parameters(net)
    log(f"{args.peer}: {desc}: {params:,} parameters")
    if args.count:
        counted = {
            "peer": args.peer,
            "params": params,
            "batch": args.batch,
            **step_flops(net, forward, args.batch),
        }
        print(json.dumps(counted), flush=True)
        return counted
    net = net.to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()

    datamodule = DiffusionDataModule(name="fashion_mnist", root=args.data_root)
    data = load_train_set(datamodule, device)
    log(f"train set {tuple(data.shape)} on {device} ({device_name(device)}); training {args.seconds:g} s")

    trained = train(args, net, ema, forward, data, device)
    del data
    log(f"trained {trained['steps']} steps in {trained['seconds']:.1f} s ({trained['img_per_s']:.0f} img/s), "
        f"loss {trained['loss']:.4f}; sampling {args.n} with DDIM-{args.sample_steps}")  # fmt: skip

    samples, sample_seconds = sample(args, ema, forward, device)
    out = Path(args.out)
    save_samples_npz(samples, out / f"{args.peer}_samples.npz")
    save_grid(samples[:100], out / f"{args.peer}_grid.png", nrow=10)
    log(f"sampled in {sample_seconds:.1f} s; wrote {out / f'{args.peer}_samples.npz'} and the grid PNG")

    scores: dict = {}
    if args.features:
        scores = score(args, datamodule, samples, device)
    result = {
        "peer": args.peer,
        "params": params,
        "steps_trained": trained["steps"],
        "train_seconds": round(trained["seconds"], 2),
        "img_per_s": round(trained["img_per_s"], 1),
        "fd": scores.get("fid"),
        "precision": scores.get("precision"),
        "recall": scores.get("recall"),
        "kid_mean": scores.get("kid_mean"),
        "sample_seconds": round(sample_seconds, 2),
        "device": device_name(device),
        "loss": round(trained["loss"], 5),
        "batch": args.batch,
        "n": args.n,
        "sample_steps": args.sample_steps,
        "compile_mode": args.compile_mode,
        "sample_compile_mode": args.sample_compile_mode,
        "dropout": args.dropout,
        "ema": args.ema,
        "ema_warmup": args.ema_warmup,
        "lr": args.lr,
        "lr_warmup_steps": args.lr_warmup_steps,
        "seed": args.seed,
    }
    line = json.dumps(result)
    (out / f"{args.peer}_result.json").write_text(line + "\n")
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
