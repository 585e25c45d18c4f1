"""Host time the training loop adds: the framework's loop (Lightning, callbacks, logging, EMA, the non-finite check)
against a plain PyTorch loop doing the same arithmetic on the same network (q_sample, the network, the loss,
backward, AdamW, one EMA lerp), in one process; prints one JSON line.

With a tiny network on a CPU nearly all of a step is host time, so the difference is what Lightning and our
hooks cost per step -- time a CUDA-graphed GPU step can only hide while the host stays ahead of the GPU.

    python benchmarks/loop_overhead.py                         # toy MLP, batch 8, CPU
    python benchmarks/loop_overhead.py data.batch_size=64      # any train overrides, appended to the defaults
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
from hydra.utils import instantiate

from diffusion_lab.build import build_module
from diffusion_lab.diffusion import q_sample
from diffusion_lab.train import compose_config, train

STEPS, WARMUP = 3000, 500
DEFAULTS = [
    "experiment=toy2d",
    "callbacks=default",
    "callbacks.sample_grid=null",
    "callbacks.lr_monitor=null",
    "data.batch_size=8",
    "data.toy_n=100000",
    "+data.on_gpu=true",
    "model.hidden=16",
    "model.num_layers=2",
    "model.time_embed_dim=16",
    f"trainer.max_steps={STEPS}",
    "trainer.limit_val_batches=0",
    "trainer.val_check_interval=1000000",
    "trainer.gradient_clip_val=null",
    "trainer.enable_model_summary=false",
    "progress_refresh_rate=100",
    "trainer.log_every_n_steps=100",
    "final_samples=0",
    f"callbacks.throughput.window={STEPS - WARMUP}",
    f"callbacks.throughput.warmup_steps={WARMUP}",
    "logger=none",
]


def raw_ms_per_step(cfg, device: torch.device) -> float:
    """The same network and loss in a plain loop: ms per step after WARMUP steps."""
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule.data_shape, None).to(device)
    net, diffusion, loss_fn = module.net, module.diffusion, module.loss_fn
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg.optimizer.lr), fused=device.type == "cuda")
    ema = [p.detach().clone() for p in net.parameters()]
    live = [p.detach() for p in net.parameters()]
    batch = int(cfg.data.batch_size)
    data = torch.randn(batch * 64, *datamodule.data_shape, device=device)
    T = diffusion.num_timesteps

    def step(i: int) -> None:
        x0 = data[(i % 64) * batch : (i % 64 + 1) * batch]
        t = torch.randint(0, T, (batch,), device=device)
        noise = torch.randn_like(x0)
        xt = q_sample(diffusion.schedule, x0, t, noise)
        loss = loss_fn(diffusion, net(xt, t), x0, xt, t, noise)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema, live, 0.001)

    for i in range(WARMUP):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for i in range(STEPS - WARMUP):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / (STEPS - WARMUP) * 1e3


def main(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config([*DEFAULTS, *overrides], output_dir=out)
        device = torch.device(
            "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
        )
        raw = raw_ms_per_step(cfg, device)
        result = train(cfg)
    loop = int(cfg.data.batch_size) / result["train_img_per_s"] * 1e3
    row = {
        "workload": "loop_overhead",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "raw_ms_per_step": round(raw, 3),
        "loop_ms_per_step": round(loop, 3),
        "host_ms_added_per_step": round(loop - raw, 3),
        "loop_over_raw_rate": round(raw / loop, 3),
        "overrides": overrides,
    }
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
