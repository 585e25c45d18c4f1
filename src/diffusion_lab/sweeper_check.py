"""A Hydra callback (conf/hydra/default.yaml) that refuses, in one line before any trial, the settings with
which the Optuna sweeper would run no trial: ``hydra.sweeper.n_trials=0`` otherwise ends in Optuna's traceback
("No trials are completed yet") after the sweep folder was made, and ``n_jobs=0`` asks the sampler for nothing."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback

from .errors import refuse

__all__ = ["SweeperSettingsCheck"]


class SweeperSettingsCheck(Callback):
    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper") or {}
        for key in ("n_trials", "n_jobs"):  # the Optuna sweeper's; the basic sweeper has neither
            value = sweeper.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                refuse(f"hydra.sweeper.{key}={value} is invalid: it must be an integer >= 1")
