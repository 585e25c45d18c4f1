"""One actionable line for bad input, instead of a traceback wall.

Entry points wrap their body in ``friendly_errors``: a ``UserError`` (or a ValueError / FileNotFoundError
raised by a part while it checks its arguments, possibly wrapped by Hydra's ``instantiate``) is printed as
``error: <message>`` on stderr with exit status 2. ``HYDRA_FULL_ERROR=1`` re-raises with the full trace. In a
multirun the exception propagates, so the launcher can record that one job failed and go on. A run rejected
this way leaves no run folder behind: the folder Hydra created for it is removed if it holds nothing but
Hydra's own files (``.hydra/``, the log) and loggers' ``hparams.yaml`` — never one with anything else in it.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.experimental.callback import Callback

__all__ = [
    "UserError",
    "NonFiniteError",
    "friendly_errors",
    "refuse",
    "last_error_line",
    "LOG_COMMAND_PREFIX",
    "root_cause",
    "check_types",
    "OutputDirCheck",
    "unwritable_reason",
    "require_writable",
    "discard_rejected_run",
]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """Bad input: a wrong option value, a missing path, an impossible combination."""


class NonFiniteError(ArithmeticError):
    """Training produced a non-finite loss or gradient under ``nonfinite=stop``."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError, NonFiniteError)

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_types(cfg: Any, expected: dict[str, tuple]) -> None:
    """Raise a one-line ``UserError`` naming the key, the value and the expected type for the first value of
    ``cfg`` (a DictConfig) whose type is wrong. ``expected`` maps dotted keys to a tuple of accepted types
    (``int``, ``float`` — which accepts an int too —, ``str``, ``bool``, ``None``); absent keys are skipped.
    Catches ``trainer.max_steps=abc`` at start-up instead of deep inside a library, with a traceback."""
    from omegaconf import OmegaConf

    missing = object()
    for key, types in expected.items():
        value = OmegaConf.select(cfg, key, default=missing, throw_on_missing=False)
        if value is missing:
            continue
        if value is None:
            ok = None in types
        elif isinstance(value, bool):
            ok = bool in types
        elif isinstance(value, int):
            ok = int in types or float in types
        elif isinstance(value, float):
            ok = float in types
        else:
            ok = any(t is not None and t not in (int, float, bool) and isinstance(value, t) for t in types)
        if not ok:
            words = " or ".join(_TYPE_WORDS.get(t, "null") for t in types)
            example = {int: "3", float: "0.001", bool: "true", str: "name"}.get(types[0], "null")
            raise UserError(f"{key}={value!r} must be {words} (e.g. {key}={example})")


def root_cause(err: BaseException) -> BaseException:
    """Unwrap Hydra's InstantiationException (and similar wrappers) down to the part's own error."""
    seen = set()
    while (
        err.__cause__ is not None and id(err) not in seen and type(err).__name__ == "InstantiationException"
    ):
        seen.add(id(err))
        err = err.__cause__
    return err


def _missing_value_message(err: BaseException) -> str | None:
    """A required option (``???`` in the config, e.g. ``ckpt``) that was not given."""
    from omegaconf.errors import MissingMandatoryValue

    if not isinstance(err, MissingMandatoryValue):
        return None
    key = getattr(err, "full_key", None) or str(err).split(":")[-1].strip().splitlines()[0]
    return f"{key}= is required (the config has no default for it): pass {key}=<value>"


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


# The line that starts each attempt in a sweep job's log: its command (a job run again appends to its log).
LOG_COMMAND_PREFIX = "$ "


def last_error_line(log: Path) -> str:
    """The last attempt's last ``error:`` line (diffusion_lab's one-line errors) in a job's log, else its last
    line; "" when there is no log. The launcher names it for a failed job, ``status`` shows it."""
    if not log.is_file():
        return ""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith(LOG_COMMAND_PREFIX)]
    lines = lines[starts[-1] :] if starts else lines
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1].strip()


def refuse(message: str) -> NoReturn:
    """Stop on bad input: ``error: <message>`` on stderr, exit status 2 (every entry point and Hydra callback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def friendly_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = root_cause(err)
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
                raise
            missing = _missing_value_message(cause)
            if missing:
                discard_rejected_run()
                refuse(missing)
            if not isinstance(cause, USER_ERRORS) and type(err).__name__ != "InstantiationException":
                raise
            message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            if isinstance(cause, KeyError):
                message = f"missing key {message}"
            discard_rejected_run()
            refuse(message)

    return wrapper  # type: ignore[return-value]


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be created or written (without creating it), or None if it can be."""
    path = os.path.abspath(folder)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def require_writable(option: str, value: str, folder: str | os.PathLike, hint: str = "") -> None:
    """Refuse in one line, ``<option>=<value> cannot be written: <why><hint>``, when ``folder`` (the folder the
    option's path needs) cannot be created or written: before the command's work, not after it."""
    if (reason := unwritable_reason(folder)) is not None:
        raise UserError(f"{option}={value!r} cannot be written: {reason}{hint}")


# The run folder Hydra is about to create for this run (None if it existed before): only that one may be removed.
_created_run_dir: str | None = None


def _holds_nothing_of_value(folder: Path) -> bool:
    """Only Hydra's own files (.hydra/, the job log), loggers' hparams.yaml, the run lock, the run's record of
    its refusal (run_status.json) and empty folders."""
    from .run_lock import LOCK_FILE  # imported here: run_lock imports this module
    from .run_status import RUN_STATUS_FILE

    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if (
            path.is_dir()
            or rel.parts[0] == ".hydra"
            or path.name in ("hparams.yaml", LOCK_FILE, RUN_STATUS_FILE)
        ):
            continue
        if len(rel.parts) == 1 and path.suffix == ".log":
            continue
        return False
    return True


def discard_rejected_run() -> None:
    """Remove the run folder Hydra created for a run rejected at start-up, if nothing of value is in it."""
    global _created_run_dir
    folder, _created_run_dir = _created_run_dir, None
    if folder is None or _in_multirun():
        return
    path = Path(folder)
    if path.is_dir() and _holds_nothing_of_value(path):
        shutil.rmtree(path, ignore_errors=True)


class OutputDirCheck(Callback):
    """A Hydra callback (conf/hydra/default.yaml): checks that the run (or sweep) directory can be created
    before Hydra creates it — Hydra's own failure there is a traceback. One line, exit status 2. It also
    notes whether the run folder is new, so that ``discard_rejected_run`` removes only a folder of this run."""

    @staticmethod
    def _check(folder: Any, what: str) -> None:
        reason = unwritable_reason(str(folder))
        if reason is not None:
            refuse(
                f"cannot create the {what} directory {folder} ({reason}); "
                f"set paths.root_dir=<a writable folder> or hydra.{what}.dir"
            )

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        global _created_run_dir
        self._check(config.hydra.run.dir, "run")
        folder = os.path.abspath(str(config.hydra.run.dir))
        _created_run_dir = None if os.path.exists(folder) else folder

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "sweep")
