"""Capture and restore every RNG a training step draws from, so a resumed run continues the same streams
(Lightning's checkpoints do not carry them). The state is tensors, lists and scalars: it loads with
``weights_only=True``."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The torch, numpy, Python (and, when initialized, CUDA) RNG states as plain data."""
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
    """Set every RNG from ``capture_rng_state()``'s result (CUDA only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(tuple(s.numpy() if isinstance(s, Tensor) else s for s in np_state))
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
