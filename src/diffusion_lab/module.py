"""The LightningModule: composes a network with the diffusion parts, logs, and holds no math of its own.

Every part is built elsewhere (Hydra, see ``build.py``) and injected: the network, the ``Diffusion``
(schedule × parameterization × variance), the loss (with its weighting), the timestep sampler, the sampler
used for previews, and the optimizer / learning-rate schedule as partials.
"""

from __future__ import annotations

import inspect
import random
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from .diffusion import Diffusion, Loss, TimestepSampler, q_sample, vb_terms_bpd
from .diffusion.guidance import drop_labels
from .diffusion.likelihood import bound_estimate_bpd
from .errors import NonFiniteError, UserError
from .samplers import Sampler

__all__ = ["DiffusionModule", "CHECKPOINT_KEY", "compile_mode", "compile_options"]


def compile_mode(value: bool | str | None) -> str | None:
    """The ``compile`` setting (train and evaluate configs) as a torch.compile mode name: None when off (false,
    none, null), "default" for true, else the mode itself ("reduce-overhead" = CUDA graphs, "max-autotune", ...).
    """
    if value in (False, None, "false", "none"):
        return None
    return "default" if value in (True, "true") else str(value)


def compile_options(mode: str, channels_last: bool = False) -> dict[str, Any]:
    """Inductor's options for the torch.compile ``mode`` ("default", "reduce-overhead", ...), and with
    ``channels_last`` its layout optimization forced on: ``torch.compile(net, options=compile_options(...))``.

    Inductor decides by itself whether a compiled graph runs its convolutions NHWC, and its heuristic says no for
    any training graph with a 3x3 convolution that at least halves the channels -- every UNet decoder (and a
    3-channel output convolution). The step then runs NCHW whatever the tensors' layout, and on a GPU cuDNN
    transposes to NHWC and back around every convolution (23% of the Ho et al. training step on an H200,
    BENCHMARKS.md). Forcing it is the only switch for that, so channels_last=true turns it on.
    """
    from torch._inductor import list_mode_options

    allowed = list(list_mode_options())
    if mode not in allowed:
        raise UserError(
            f"compile={mode} is not a torch.compile mode; choose from {['false', 'true', *allowed]}"
        )
    options = dict(list_mode_options(mode))
    if channels_last:
        options["force_layout_optimization"] = True
    return options


CHECKPOINT_KEY = "diffusion_lab"
NUM_BUCKETS = 10
NONFINITE_POLICIES = ("skip", "stop", "off")


class DiffusionModule(L.LightningModule):
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
        channels_last: bool = False,
        sample_bf16: bool = True,
        val_seed: int = 1234,
        nonfinite: str = "skip",
    ):
        super().__init__()
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r} is invalid; choose one of {list(NONFINITE_POLICIES)}")
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
        # torch.compile of the network: False, True / "default", "reduce-overhead" (CUDA graphs), "max-autotune", ...
        # NHWC activations and conv weights (and, compiled, NHWC convolutions inside the graph: compile_options):
        # 20% faster for the small UNet on a 2-core CPU, 17% for Ho et al.'s UNet with CUDA graphs on an H200
        # (BENCHMARKS.md); a switch, on in the experiments where it was measured.
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.compile_mode = compile_mode(compile)
        if self.compile_mode:
            compile_options(self.compile_mode)  # a wrong mode fails here, not at the first training step
        self.sample_bf16 = sample_bf16  # sample under bf16 autocast on CUDA (previews, metrics)
        self.val_seed = val_seed
        self._bucket_sums: Tensor | None = None
        self._bucket_counts: Tensor | None = None
        # Non-finite loss / gradients: "skip" the optimizer step (and count it), "stop" with an error, or "off".
        self.nonfinite = nonfinite
        self.skipped_steps = 0  # stored in checkpoints
        self._skipped_on_device: Tensor | float = (
            0.0  # steps skipped by a fused optimizer (see _check_finite)
        )
        self.step_skipped = False  # this step's update was dropped (the EMA callback then does not average)
        self._step_loss: Tensor | None = None
        self._step_terms: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ the network as the diffusion code sees it
    def model_fn(self, y: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        return partial(self.net, y=y) if y is not None else self.net

    def setup(self, stage: str) -> None:
        # After the callbacks' setup, so the EMA copy is made of the plain (uncompiled) network.
        if self.compile_mode and not getattr(self, "_compiled", False):
            # In place: parameter names (and so checkpoints) stay unchanged.
            self.net.compile(options=compile_options(self.compile_mode, self.channels_last))
            self._compiled = True

    # ------------------------------------------------------------------ training
    def _split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        x0, y = batch if isinstance(batch, list | tuple) else (batch, None)
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0, (y if self.num_classes else None)

    def _forward_terms(self, x0, y, t, noise, with_vb: bool = False) -> dict[str, Tensor]:
        """Noise x0 to x_t, call the network once, and return the loss terms (plus the bound's ``vb`` term when
        asked and the loss does not compute it)."""
        xt = q_sample(self.diffusion.schedule, x0, t, noise)
        out = self.net(xt, t, y) if y is not None else self.net(xt, t)
        terms = self.loss_fn(self.diffusion, out, x0, xt, t, noise)
        if with_vb and "vb" not in terms:
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
        self.step_skipped = False
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
        """Loss by timestep decile, summed on the device and logged every ``log_every_n_steps`` (no host sync)."""
        if self._bucket_sums is None or self._bucket_sums.device != losses.device:
            self._bucket_sums = torch.zeros(NUM_BUCKETS, device=losses.device)
            self._bucket_counts = torch.zeros(NUM_BUCKETS, device=losses.device)
        bucket = (t * NUM_BUCKETS) // self.diffusion.num_timesteps
        finite = torch.isfinite(losses)  # a skipped (non-finite) step must not poison the logged means
        self._bucket_sums.index_add_(0, bucket, torch.where(finite, losses, 0).float())
        self._bucket_counts.index_add_(0, bucket, finite.float())
        if self._should_log():
            means = self._bucket_sums / self._bucket_counts.clamp(min=1)
            for k in range(NUM_BUCKETS):
                self.log(f"train_bucket/loss_t{k}", means[k])
            self._bucket_sums.zero_()
            self._bucket_counts.zero_()

    def last_loss(self) -> float | None:
        """The last training step's loss (mean over its batch) as a number -- a host read, so for progress bars
        and summaries, not for every step."""
        loss = self._step_terms.get("loss")
        return float(loss.mean()) if loss is not None else None

    def _should_log(self) -> bool:
        trainer = self._trainer
        return trainer is not None and (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after backward (and after unscaling under 16-mixed), before clipping and the
        # optimizer step.
        log = self._should_log()
        norm = None
        if log or self.nonfinite != "off":
            grads = [p.grad for p in _params(optimizer) if p.grad is not None]
            if grads:
                norm = _total_norm(grads)
        if self.nonfinite != "off":
            self._check_finite(norm)
        if log:
            if norm is not None:
                self.log("train/grad_norm", norm)
            self.log("train/lr", optimizer.param_groups[0]["lr"])
        if log or self.step_skipped:
            self._fold_skipped()
            self.log("train/skipped_steps", float(self.skipped_steps))

    def _check_finite(self, grad_norm: Tensor | None) -> None:
        """Drop this step's update if the loss or the gradients are not finite (``nonfinite=skip``: the
        gradients are set to None, so the optimizer leaves the weights and its moments untouched and the EMA
        does not average), or raise (``stop``). Nothing non-finite reaches the weights, the EMA or a checkpoint.

        Cost: finiteness is computed on the device (the gradient norm: one read of the gradients, which
        clipping reads again) and read by the host once per step — one device sync per step, placed after
        backward, so only the launch of the optimizer kernels waits for it (tens of microseconds; it matters
        only for steps of a few milliseconds, e.g. CUDA-graphed small models: ``nonfinite=off`` removes it).
        Under 16-mixed the GradScaler already skips steps with inf/nan gradients (its normal scale search), so
        only the loss is checked there. With several processes the decision is all-reduced, so every rank
        skips (or stops at) the same steps.
        """
        trainer = self.trainer
        loss = self._step_loss
        ok = (
            torch.isfinite(loss) if loss is not None else torch.ones((), dtype=torch.bool, device=self.device)
        )
        if grad_norm is not None and str(trainer.precision) not in ("16-mixed", "16"):
            ok = ok & torch.isfinite(grad_norm)
        bad = (~ok).float()
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if self.nonfinite == "skip" and _skips_on_device(self.trainer.optimizers[0], trainer):
            # Fused Adam/AdamW read ``found_inf`` on the device and leave weights, moments and step counts
            # untouched when it is non-zero (the mechanism GradScaler uses): no host sync, so a CUDA-graphed
            # step keeps the CPU running ahead. The count is read only when it is logged.
            optimizer = self.trainer.optimizers[0]
            optimizer.found_inf = (bad > 0).float()
            self._skipped_on_device = self._skipped_on_device + optimizer.found_inf
            return
        if not bad.item():  # the one host sync per step
            return
        what = self._describe_nonfinite(loss, grad_norm)
        step = trainer.global_step
        if self.nonfinite == "stop":
            raise NonFiniteError(
                f"{what} at step {step} (nonfinite=stop); nonfinite=skip skips such steps, or lower optimizer.lr"
            )
        for p in self.parameters():
            p.grad = None
        self.skipped_steps += 1
        self.step_skipped = True
        n = self.skipped_steps
        if trainer.is_global_zero and (n <= 10 or n % 100 == 0):
            print(
                f"warning: {what} at step {step}: optimizer step skipped (nonfinite=skip; {n} skipped so far)",
                file=sys.stderr,
                flush=True,
            )

    def _fold_skipped(self) -> int:
        """Add the device-side count of skipped steps (fused optimizers) to ``skipped_steps`` (one host read)."""
        if isinstance(self._skipped_on_device, Tensor):
            self.skipped_steps += int(self._skipped_on_device.item())
            self._skipped_on_device = 0.0
        return self.skipped_steps

    def on_train_end(self) -> None:
        self._fold_skipped()

    def _describe_nonfinite(self, loss: Tensor | None, grad_norm: Tensor | None) -> str:
        """Which loss term (or the gradients) went non-finite: host reads, on the failure path only."""
        bad_terms = [
            f"{name}={_first_nonfinite(value)}"
            for name, value in self._step_terms.items()
            if not bool(torch.isfinite(value).all())
        ]
        if loss is not None and not bool(torch.isfinite(loss)):
            return "non-finite loss (" + (", ".join(bad_terms) if bad_terms else f"loss={loss.item()}") + ")"
        if grad_norm is not None and not bool(torch.isfinite(grad_norm)):
            names = [
                n
                for n, p in self.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            first = f", first in {names[0]}, {len(names)} tensor(s)" if names else ""
            return f"non-finite gradients (norm={grad_norm.item()}{first})"
        return "non-finite loss or gradients on another rank"

    # ------------------------------------------------------------------ validation (EMA weights, fixed noise)
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, y = self._split_batch(batch)
        # A fixed generator per batch: the same t and noise at every validation, so curves are comparable and
        # validation draws nothing from the global RNG (which exact resume restores).
        gen = torch.Generator(device=x0.device).manual_seed(self.val_seed + batch_idx)
        T = self.diffusion.num_timesteps
        t = torch.randint(0, T, (x0.shape[0],), device=x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        terms = self._forward_terms(x0, y, t, noise, with_vb=True)
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
        """``n`` samples in [-1, 1] from the current weights (EMA while an EMA callback has swapped them in);
        on the CPU unless ``on_device`` (metrics keep them on the GPU)."""
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
            with torch.autocast(
                "cuda", dtype=torch.bfloat16, enabled=self.sample_bf16 and self.device.type == "cuda"
            ):
                x = sampler.sample(
                    self.diffusion,
                    self.model_fn(y),
                    noise.shape,
                    self.device,
                    noise=noise,
                    generator=generator,
                    progress=progress,
                )
            x = x.clamp(-1, 1).float()
            chunks.append(x if on_device else x.cpu())
        self.net.train(was_training)
        return torch.cat(chunks)

    # ------------------------------------------------------------------ optimization
    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip directly unless a float16 GradScaler is in play. Lightning's mixed-precision plugin refuses to
        clip for fused optimizers (they unscale internally) even under bf16, where nothing is scaled."""
        if gradient_clip_val is None:
            return
        if str(self.trainer.precision) in ("16-mixed", "16"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(_params(optimizer), gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(_params(optimizer), gradient_clip_val, foreach=True)

    def configure_optimizers(self):
        factory = self.optimizer_factory
        keywords = getattr(factory, "keywords", {})
        accepts_fused = "fused" in inspect.signature(getattr(factory, "func", factory)).parameters
        if self.device.type == "cuda" and accepts_fused and keywords.get("fused") is None:
            factory = partial(factory, fused=True)  # one kernel for the whole update on the GPU
        optimizer = factory(params=self.net.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "spec": plain_data(self.spec),  # loaded with weights_only=True: no OmegaConf or other classes
            "skipped_steps": self._fold_skipped(),
            "timesteps": {k: torch.as_tensor(v) for k, v in self.timesteps.state_dict().items()},
            "rng": capture_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY, {})
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        if extra.get("timesteps"):
            self.timesteps.load_state_dict({k: v.numpy() for k, v in extra["timesteps"].items()})
        if extra.get("rng"):
            restore_rng_state(extra["rng"])


def plain_data(value: Any) -> Any:
    """``value`` as plain dicts, lists and scalars (OmegaConf nodes resolved, tuples as lists)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(item) for item in value]
    return value


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters the optimizer updates, from its lists: walking the module tree (``net.parameters()``)
    on every step costs host time that a CUDA-graphed step cannot hide."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _total_norm(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` together (multi-tensor kernels where torch has them)."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(tensors, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in tensors]))


def _skips_on_device(optimizer: torch.optim.Optimizer, trainer) -> bool:
    """Whether the optimizer can skip a step from a device-side flag: fused Adam/AdamW (CUDA or CPU), and no float16
    GradScaler (which owns ``found_inf`` itself)."""
    fused = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and optimizer.param_groups[0].get(
        "fused"
    )
    return bool(fused) and str(trainer.precision) not in ("16-mixed", "16")


def _first_nonfinite(value: Tensor) -> str:
    bad = value[~torch.isfinite(value)]
    return str(bad.flatten()[0].item()) if bad.numel() else "?"


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from (Lightning's checkpoints do not carry them)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            torch.from_numpy(np.asarray(s)) if isinstance(s, np.ndarray) else s for s in np.random.get_state()
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(tuple(s.numpy() if isinstance(s, Tensor) else s for s in np_state))
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
