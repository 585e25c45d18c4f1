"""Where the real training loop's time goes on a GPU: a callback that profiles a window of steps of
``python -m diffusion_lab.train`` and prints one JSON line (wall and GPU-busy ms per step, the GPU's idle gaps
and what the host was doing in them, host-device syncs, the host's own ms per step, the top host ops).

Usage (on the GPU machine, after ``source benchmarks/gpu_env.sh``):

    PYTHONPATH=benchmarks:$PYTHONPATH python3 -m diffusion_lab.train experiment=bench_train \
        +callbacks.loop_profile._target_=loop_profile.LoopProfile +callbacks.loop_profile.start=300

The chrome trace goes to ``$LOOP_PROFILE_TRACE`` when set. A measuring tool, not part of the package.
"""

from __future__ import annotations

import json
import os
import time

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class LoopProfile(L.Callback):
    def __init__(self, start: int = 300, steps: int = 20, gap_us: float = 50.0):
        self.start, self.steps, self.gap_us = start, steps, gap_us
        self._prof = None
        self._host: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.start:
            _sync()
            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._prof.__enter__()
            self._t0 = time.perf_counter()
        if self._prof is not None:
            self._host.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._prof is None or trainer.global_step < self.start + self.steps:
            return
        self._host.append(time.perf_counter())
        _sync()
        wall = time.perf_counter() - self._t0
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        print(json.dumps(self.summarize(prof, wall)), flush=True)
        trace = os.environ.get("LOOP_PROFILE_TRACE")
        if trace:
            prof.export_chrome_trace(trace)

    def summarize(self, prof, wall: float) -> dict:
        n = self.steps
        events = prof.events()
        kernels = sorted(
            (e.time_range.start, e.time_range.end)
            for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
        )
        busy, gaps, cur_s, cur_e = 0.0, [], None, None
        for s, e in kernels:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    busy += cur_e - cur_s
                    if s - cur_e > self.gap_us:
                        gaps.append((cur_e, s))
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            busy += cur_e - cur_s
        # host ops that were running when each large GPU gap began (outermost python-level names)
        host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        during: dict[str, float] = {}
        for gs, ge in gaps:
            for e in host:
                if e.time_range.start <= gs < e.time_range.end:
                    overlap = min(ge, e.time_range.end) - gs
                    during[e.name] = during.get(e.name, 0.0) + overlap / 1e3 / n
        syncs = {}
        for e in host:
            if e.name.startswith(SYNC_CALLS):
                c, t = syncs.get(e.name, (0, 0.0))
                syncs[e.name] = (c + 1, t + (e.time_range.end - e.time_range.start) / 1e3)
        table = prof.key_averages()
        top_host = sorted(table, key=lambda a: a.self_cpu_time_total, reverse=True)[:20]
        steps_host = [b - a for a, b in zip(self._host, self._host[1:])]
        return {
            "profile": "train_loop",
            "steps": n,
            "wall_ms_per_step": round(wall * 1e3 / n, 3),
            "gpu_busy_ms_per_step": round(busy / 1e3 / n, 3),
            "gpu_idle_gaps_per_step": round(len(gaps) / n, 2),
            "gpu_idle_ms_per_step": round(sum(e - s for s, e in gaps) / 1e3 / n, 3),
            "host_ms_per_step_median": round(sorted(steps_host)[len(steps_host) // 2] * 1e3, 3)
            if steps_host
            else None,
            "host_ops_at_gaps_ms_per_step": {
                k: round(v, 3) for k, v in sorted(during.items(), key=lambda kv: -kv[1])[:25]
            },
            "syncs": {
                k: {"count_per_step": c / n, "ms_per_step": round(t / n, 3)} for k, (c, t) in syncs.items()
            },
            "top_host_self_ms_per_step": {a.key: round(a.self_cpu_time_total / 1e3 / n, 3) for a in top_host},
        }
