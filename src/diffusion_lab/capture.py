"""``compile=capture``: the network's training forward and backward replayed from CUDA graphs, nothing compiled.

A small network's eager training step is bound by kernel launches; a CUDA graph replays them as one. torch.compile
with CUDA graphs (``compile=reduce-overhead``) adds fusion on top, for about a minute of tracing, AOTAutograd and
kernel generation on a cold start (BENCHMARKS.md, "Cold and warm starts"). ``torch.cuda.make_graphed_callables``
captures the eager kernels as they are: no tracing, no generated code, a cold start costs a few warm-up passes.
The price is the fusion; which wins in a fixed budget is measured, not assumed (BENCHMARKS.md).

Only the training step is captured: one call signature (shapes, dtypes, strides, autocast), recorded at the first
training call. Anything else runs the plain network: eval mode (validation, sampling), no grad, another signature
(a last short batch, say), keyword arguments. The optimizer and the rest of the step stay eager.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CapturedNet", "call_signature", "check_capture"]

# Autograd warns (once a process) when a parameter's gradient accumulator was made on another stream than the node
# feeding it: here the warm-up passes make_graphed_callables runs on its side stream. It warns that the capture may
# break or synchronise; with this network neither happened on an H100 (BENCHMARKS.md, 2026-12-07: every training
# step replayed, the same losses as the compiled step, and the GPU test's gradients equal the plain network's).
ACCUMULATE_GRAD_STREAM_WARNING = r"The AccumulateGrad node's stream does not match"


def check_capture(cuda: bool, world_size: int, accumulate: int = 1) -> None:
    """A one-line error where ``compile=capture`` cannot run: CUDA graphs need a CUDA device; the capture is made
    for one process (DDP's gradient hooks around a captured backward are not supported here); and each backward
    must be followed by an optimizer step, since the gradients handed to the parameters alias the graph's own
    output buffers, which the next replay overwrites (two accumulated micro-batches would count the second twice).
    """
    from .errors import UserError

    if not cuda:
        raise UserError(
            "compile=capture records CUDA graphs and needs a CUDA device (trainer=gpu on a machine with one); for a "
            "CPU run use compile=false trainer=cpu"
        )
    if world_size > 1:
        raise UserError(
            f"compile=capture runs on one GPU; this run has {world_size} processes: use compile=reduce-overhead "
            "or trainer.devices=1"
        )
    if accumulate != 1:
        raise UserError(
            f"compile=capture needs an optimizer step after every batch; trainer.accumulate_grad_batches="
            f"{accumulate}: use trainer.accumulate_grad_batches=1 or compile=reduce-overhead"
        )


def call_signature(args: tuple[Tensor, ...], device: str = "cuda") -> tuple:
    """What a replay must match: each argument's shape, stride, dtype, device and grad flag, and autocast's state
    (a graph captured under bf16 autocast replays bf16 kernels)."""
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
    return (*((a.shape, a.stride(), a.dtype, a.device, a.requires_grad) for a in args), autocast)


class CapturedNet:
    """``net`` called as the training step calls it, its forward and backward replayed from CUDA graphs.

    ``graph`` is the capturing function (``torch.cuda.make_graphed_callables``; tests pass a stand-in). It sets
    the graphed forward on the module as an instance attribute, which is taken off again here: the module stays
    the plain network for everything else (the EMA copy, checkpoints, eval), and this object decides per call.
    """

    def __init__(
        self,
        net: nn.Module,
        graph: Callable[..., Any] | None = None,
        device: str = "cuda",
        build: Callable[[Callable[[], object]], float | None] | None = None,
    ):
        self.net = net
        # Called with a forward and backward on the capture's inputs before capturing, to build kernels the step
        # would otherwise build on first use (nets.fused_norm.build_kernels_at_once); its seconds, or None.
        self._build = build
        self.build_s: float | None = None
        self.device = device  # the device type whose calls are captured (tests: "cpu" with a stand-in graph)
        # allow_unused_input: a parameter the step does not reach (a class embedding's null row, say) has no grad.
        self._graph = graph or partial(torch.cuda.make_graphed_callables, allow_unused_input=True)
        self._graphed: Callable[..., Tensor] | None = None
        self.signature: tuple | None = None
        self.capture_s: float | None = None
        self.replays = 0
        self.fallbacks = 0  # training calls of another signature, run by the plain network
        warnings.filterwarnings("ignore", message=ACCUMULATE_GRAD_STREAM_WARNING, category=UserWarning)

    def __call__(self, *args: Tensor, **kwargs: Any) -> Tensor:
        if kwargs or not self._replayable(args):
            return self.net(*args, **kwargs)
        signature = call_signature(args, self.device)
        if self._graphed is None:
            self._capture(args, signature)
        if signature != self.signature:
            self.fallbacks += 1
            return self.net(*args)
        self.replays += 1
        return self._graphed(*args)

    def _replayable(self, args: tuple) -> bool:
        return (
            self.net.training
            and torch.is_grad_enabled()
            and bool(args)
            and all(isinstance(a, Tensor) and a.device.type == self.device for a in args)
        )

    def _capture(self, args: tuple[Tensor, ...], signature: tuple) -> None:
        """Capture on copies of the first call's inputs. Autocast's cast cache is off while capturing: cached
        casts made outside the graph would be freed under it (torch's make_graphed_callables notes)."""
        start = time.perf_counter()
        sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        autocast_on, dtype = signature[-1]
        with torch.autocast(self.device, dtype=dtype, enabled=autocast_on, cache_enabled=False):
            if self._build is not None:
                self.build_s = self._build(lambda: self._forward_backward(sample))
            self._graph(self.net, sample)
        self._graphed = self.net.__dict__.pop("forward")  # the graphed forward; the class's forward is back
        self.signature = signature
        self.capture_s = time.perf_counter() - start

    def _forward_backward(self, args: tuple[Tensor, ...]) -> None:
        """One forward and backward of the network on ``args``, its gradients discarded (``.grad`` untouched)."""
        out = self.net(*args)
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        params = [p for p in self.net.parameters() if p.requires_grad]
        grads = [torch.ones_like(o) for o in outs]
        torch.autograd.grad(outs, params, grad_outputs=grads, allow_unused=True)

    def stats(self) -> dict[str, Any]:
        """For the run's summary: seconds spent capturing, replays, and training calls that ran the plain network
        (another signature); empty when nothing was captured."""
        if self.capture_s is None:
            return {}
        built = {} if self.build_s is None else {"capture_build_s": round(self.build_s, 1)}
        return {
            **built,
            "capture_s": round(self.capture_s, 1),
            "graph_replays": self.replays,
            "capture_fallbacks": self.fallbacks,
        }
