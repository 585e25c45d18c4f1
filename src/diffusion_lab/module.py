"""The LightningModule: composes a network with the diffusion parts, logs, and holds no math of its own.

Every part is built elsewhere (Hydra, see ``build.py``) and injected: the network, the process (the Gaussian
``Diffusion`` — schedule × parameterization × variance —, EDM's σ-space process or a flow; the interface it
relies on is ``diffusion/process_base.py``'s), the loss (with its weighting), the timestep sampler, the sampler
used for previews, and the optimizer / learning-rate schedule as partials.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from .capture import CapturedNet, check_capture
from .compile_policy import (
    CAPTURE,
    check_scope,
    compile_mode,
    compile_network,
    compile_options,
    eval_stance,
    fused_norm_warning,
)
from .diffusion import Diffusion, Loss, TimestepSampler, vb_terms_bpd
from .diffusion.guidance import drop_labels
from .diffusion.likelihood import bound_estimate_bpd
from .latent.decoder import sample_images
from .net_training import NetTraining
from .nets.fused_norm import kernel_builder
from .nonfinite import NonFiniteGuard
from .rng_state import capture_rng_state, restore_rng_state
from .samplers import Sampler
from .score_names import NUM_BUCKETS, bucket_key

__all__ = ["DiffusionModule", "CHECKPOINT_KEY"]


CHECKPOINT_KEY = "diffusion_lab"


class DiffusionModule(NetTraining):
    def __init__(
        self,
        net: nn.Module,
        diffusion: Diffusion,
        loss: Loss,
        timesteps: TimestepSampler,
        sampler: Sampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        data_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int | None = None,
        p_uncond: float = 0.0,
        spec: dict | None = None,
        compile: bool | str = False,
        compile_eval: bool = False,
        compile_scope: str = "net",
        channels_last: bool = False,
        sample_bf16: bool = True,
        val_seed: int = 1234,
        nonfinite: str = "skip",
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        # Non-finite loss / gradients: "skip" the optimizer step (and count it), "stop" with an error, or "off".
        self.nonfinite_guard = NonFiniteGuard(nonfinite)
        self.net = net
        self.diffusion = diffusion
        self.loss_fn = loss
        self.timesteps = timesteps
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes
        self.p_uncond = p_uncond
        self.spec = spec or {}  # the resolved config of every diffusion part, stored in each checkpoint
        # Latent diffusion: the frozen decoder from latents to pixels (its weights travel in the checkpoint).
        self.decoder = decoder
        # torch.compile of the network: False, True / "default", "reduce-overhead" (CUDA graphs), "max-autotune", ...
        # NHWC activations and conv weights (and, compiled, NHWC convolutions inside the graph: compile_options):
        # convolution kernels run faster on NHWC on most hardware, but not for every network and device, so it is
        # a switch, on in the experiments whose speed was checked with it (BENCHMARKS.md).
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.compile_mode = compile_mode(compile)
        # Validation and sampling run eagerly unless compile_eval (compile_policy.eval_stance); compile_scope: the
        # whole network or its repeated blocks (compile_policy.compile_network).
        self.compile_eval = compile_eval
        self.compile_scope = compile_scope
        # A wrong mode or scope fails here, not at the first training step.
        if self.torch_compiled:
            compile_options(self.compile_mode)
            check_scope(net, compile_scope)
        # compile=capture: the training step's network calls replayed from CUDA graphs (capture.py), not compiled.
        # The fused norm op's kernels are built all at once before the capture, not one by one inside it.
        capture = self.compile_mode == CAPTURE
        self.captured = CapturedNet(self.net, build=kernel_builder(self.net)) if capture else None
        self.sample_bf16 = sample_bf16  # sample under bf16 autocast on CUDA (previews, metrics)
        self.val_seed = val_seed
        self._bucket_sums: Tensor | None = None
        self._bucket_counts: Tensor | None = None
        self._step_loss: Tensor | None = None
        self._step_terms: dict[str, Tensor] = {}

    @property
    def torch_compiled(self) -> bool:
        """Whether torch.compile compiles the network (any compile mode but off and capture)."""
        return self.compile_mode not in (None, CAPTURE)

    # ------------------------------------------------------------------ the network as the diffusion code sees it
    def model_fn(self, y: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        return partial(self.net, y=y) if y is not None else self.net

    def setup(self, stage: str) -> None:
        cuda = self._trainer is not None and self._trainer.strategy.root_device.type == "cuda"
        if self.compile_mode == CAPTURE:
            trainer = self._trainer
            world, accumulate = (trainer.world_size, trainer.accumulate_grad_batches) if trainer else (1, 1)
            check_capture(cuda, world, accumulate)
            return
        # After the callbacks' setup, so the EMA copy is made of the plain (uncompiled) network.
        if self.compile_mode and not getattr(self, "_compiled", False):
            if warning := fused_norm_warning(self.net, self.compile_mode, cuda):
                rank_zero_warn(warning)
            # In place: parameter names (and so checkpoints) stay unchanged.
            compile_network(
                self.net, compile_options(self.compile_mode, self.channels_last), self.compile_scope
            )
            self._compiled = True

    # ------------------------------------------------------------------ training
    def _split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        x0, y = batch if isinstance(batch, list | tuple) else (batch, None)
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0, (y if self.num_classes else None)

    def _forward_terms(self, x0, y, t, noise, with_vb: bool = False) -> dict[str, Tensor]:
        """Corrupt x0 to x_t, call the network once, and return the loss terms (plus the bound's ``vb`` term when
        asked, the process has a likelihood and the loss does not compute it)."""
        xt = self.diffusion.corrupt(x0, t, noise)
        net_x, net_t = self.diffusion.net_input(xt, t)  # preconditioned where the process needs it (EDM)
        net = self.captured or self.net
        out = net(net_x, net_t, y) if y is not None else net(net_x, net_t)
        terms = self.loss_fn(self.diffusion, out, x0, xt, t, noise)
        if with_vb and self.diffusion.has_likelihood and "vb" not in terms:
            terms["vb"] = vb_terms_bpd(self.diffusion, out.float(), x0, xt, t)
        return terms

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0, y = self._split_batch(batch)
        if y is not None and self.p_uncond > 0:
            y = drop_labels(y, self.p_uncond, null_class=self.num_classes)
        t, weights = self.timesteps.sample(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        terms = self._forward_terms(x0, y, t, noise)
        loss = (terms["loss"] * weights).mean()
        self.nonfinite_guard.step_skipped = False
        self._step_loss, self._step_terms = loss.detach(), {k: v.detach() for k, v in terms.items()}
        if (
            type(self.timesteps).update is not TimestepSampler.update
        ):  # loss-aware: record every rank's losses
            all_t, all_losses = self.all_gather((t, terms["loss"].detach()))
            self.timesteps.update(all_t.flatten(), all_losses.flatten())
        # The terms only on the logger's steps: each self.log costs host time that a CUDA-graphed step cannot hide
        # (~1 ms on a slow CPU), and none with prog_bar -- Lightning reads a progress-bar metric back to the host
        # (a device sync) after every step. LossProgressBar and the run's summary read last_loss() instead.
        if self._should_log():
            for name, value in terms.items():
                self.log(f"train/{name}", value.mean())
        self._accumulate_buckets(t, terms["loss"].detach())
        return loss

    def _accumulate_buckets(self, t: Tensor, losses: Tensor) -> None:
        """Loss by noise-level decile (the process's ``bucket``), summed on the device and logged every ``log_every_n_steps`` (no host sync)."""
        if self._bucket_sums is None or self._bucket_sums.device != losses.device:
            self._bucket_sums = torch.zeros(NUM_BUCKETS, device=losses.device)
            self._bucket_counts = torch.zeros(NUM_BUCKETS, device=losses.device)
        bucket = self.diffusion.bucket(t, NUM_BUCKETS)
        finite = torch.isfinite(losses)  # a skipped (non-finite) step must not poison the logged means
        self._bucket_sums.index_add_(0, bucket, torch.where(finite, losses, 0).float())
        self._bucket_counts.index_add_(0, bucket, finite.float())
        if self._should_log():
            means = self._bucket_sums / self._bucket_counts.clamp(min=1)
            for k in range(NUM_BUCKETS):
                self.log(bucket_key(k), means[k])
            self._bucket_sums.zero_()
            self._bucket_counts.zero_()

    # ------------------------------------------------------------------ validation (EMA weights, fixed noise)
    def eval_stance(self):
        return eval_stance(self.torch_compiled, self.compile_eval)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        with self.eval_stance():
            self._validate(batch, batch_idx)

    def _validate(self, batch: Any, batch_idx: int) -> None:
        x0, y = self._split_batch(batch)
        # A fixed generator per batch: the same t and noise at every validation, so curves are comparable and
        # validation draws nothing from the global RNG (which exact resume restores).
        gen = torch.Generator(device=x0.device).manual_seed(self.val_seed + batch_idx)
        t = self.diffusion.draw_validation_t(x0.shape[0], x0.device, gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        # The bound in bits/dim is a likelihood of pixels; on latents it would not be comparable with one.
        terms = self._forward_terms(x0, y, t, noise, with_vb=self.decoder is None)
        if "vb" in terms:
            terms["bpd_one_t_mc"] = bound_estimate_bpd(self.diffusion, terms["vb"], x0)
        for name, value in terms.items():
            self.log(f"val/{name}", value.mean(), prog_bar=name == "loss", sync_dist=True)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        n: int,
        sampler: Sampler | None = None,
        batch_size: int = 256,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        on_device: bool = False,
    ) -> Tensor:
        """``n`` samples in [-1, 1] from the current weights (EMA while an EMA callback has swapped them in),
        decoded to pixels for a latent model; on the CPU unless ``on_device`` (metrics keep them on the GPU)."""
        sampler = sampler or self.sampler
        was_training = self.net.training
        self.net.eval()
        chunks = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            y = labels[start : start + b].to(self.device) if labels is not None else None
            noise = torch.randn((b, *self.data_shape), device=self.device, generator=generator)
            # The step noise too comes from ``generator``: previews must not draw from the global RNG (which
            # exact resume restores) and are then the same at every validation, whatever the sampler.
            with (
                torch.autocast(
                    "cuda", dtype=torch.bfloat16, enabled=self.sample_bf16 and self.device.type == "cuda"
                ),
                self.eval_stance(),
            ):
                x = sample_images(
                    sampler, self.diffusion, self.model_fn(y), noise, generator, progress, self.decoder
                )
            chunks.append(x if on_device else x.cpu())
        self.net.train(was_training)
        return torch.cat(chunks)

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "spec": plain_data(self.spec),  # loaded with weights_only=True: no OmegaConf or other classes
            "skipped_steps": self.nonfinite_guard.fold(),
            "timesteps": {k: torch.as_tensor(v) for k, v in self.timesteps.state_dict().items()},
            "rng": capture_rng_state(),
            "process_state": self.diffusion.state_dict(),  # what the process fitted from data, if anything
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY, {})
        self.nonfinite_guard.skipped_steps = int(extra.get("skipped_steps", 0))
        if extra.get("timesteps"):
            self.timesteps.load_state_dict({k: v.numpy() for k, v in extra["timesteps"].items()})
        if extra.get("rng"):
            restore_rng_state(extra["rng"])
        if extra.get("process_state"):
            self.diffusion.load_state_dict(extra["process_state"])


def plain_data(value: Any) -> Any:
    """``value`` as plain dicts, lists and scalars (OmegaConf nodes resolved, tuples as lists)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(item) for item in value]
    return value
