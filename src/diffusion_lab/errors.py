"""One actionable line for bad input, instead of a traceback wall.

Entry points wrap their body in ``friendly_errors``: a ``UserError`` (or a ValueError / FileNotFoundError
raised by a part while it checks its arguments, possibly wrapped by Hydra's ``instantiate``) is printed as
``error: <message>`` on stderr with exit status 2. ``HYDRA_FULL_ERROR=1`` re-raises with the full trace. In a
multirun the exception propagates, so the launcher can record that one job failed and go on.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["UserError", "friendly_errors", "root_cause"]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """Bad input: a wrong option value, a missing path, an impossible combination."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def root_cause(err: BaseException) -> BaseException:
    """Unwrap Hydra's InstantiationException (and similar wrappers) down to the part's own error."""
    seen = set()
    while (
        err.__cause__ is not None and id(err) not in seen and type(err).__name__ == "InstantiationException"
    ):
        seen.add(id(err))
        err = err.__cause__
    return err


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def friendly_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = root_cause(err)
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
                raise
            if not isinstance(cause, USER_ERRORS) and type(err).__name__ != "InstantiationException":
                raise
            message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            if isinstance(cause, KeyError):
                message = f"missing key {message}"
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
