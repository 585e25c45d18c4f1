"""The Hydra entry of every command: ``@command("sample")`` instead of ``@hydra.main(...)``.

It adds to ``hydra.main`` what every command needs the same way:

* bad input is one ``error: ...`` line, exit status 2 (``errors.friendly_errors``) — including Hydra's own
  composition errors (an unknown option of a group, an unknown key, an override it cannot parse), which Hydra
  raises before the command's function runs and would print over several lines with exit status 1. The line
  names the group's choices, or the nearest key of the command's config for a misspelt one.
* ``--help`` shows the command's own description and options (``conf/hydra/help/command.yaml``, or
  ``train.yaml`` for training), with the text the command passes as ``usage``.

``HYDRA_FULL_ERROR=1`` keeps Hydra's full report.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from .errors import USER_ERRORS, UserError, friendly_errors, refuse, root_cause

__all__ = [
    "CONFIG_DIR",
    "checkpoint_argument",
    "command",
    "composition_error_message",
    "experiment_summaries",
]


def _config_dir() -> str:
    """The configs: installed from a wheel they are the package's own ``diffusion_lab/conf``; in a source
    checkout (and its editable install) the top-level ``conf/`` beside ``src/``."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return str(installed if installed.is_dir() else package.parents[1] / "conf")


CONFIG_DIR = _config_dir()

# Hydra's syntax reference, named in the one-line message for an override it cannot parse.
GRAMMAR_URL = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def experiment_summaries() -> list[tuple[str, str]]:
    """(name, what it is for) of each ``conf/experiment/*.yaml``: its first comment line after the package
    directive."""
    out = []
    for path in sorted(Path(CONFIG_DIR, "experiment").glob("*.yaml")):
        comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
        first = next((c for c in comments if c and not c.startswith("@package")), "")
        out.append((path.stem, first))
    return out


def checkpoint_argument(cfg: Any, required: bool) -> str | None:
    """The checkpoint a command reads: ``ckpt_path=`` (the name ``train`` and Lightning use) or its alias
    ``ckpt=``; one of them, never both. The answer is also stored as ``cfg.ckpt_path``."""
    canonical, alias = cfg.get("ckpt_path"), cfg.get("ckpt")
    if canonical and alias:
        raise UserError(
            f"ckpt_path={canonical!r} and ckpt={alias!r} both given; ckpt= is an alias of ckpt_path=: pass one"
        )
    path = canonical or alias
    if required and not path:
        raise UserError("ckpt_path= is required (alias ckpt=): the .ckpt file of a training run")
    with open_dict(cfg):
        cfg.ckpt_path = str(path) if path else None
    return cfg.ckpt_path


def _config_keys(config_name: str) -> list[str]:
    """Every dotted key of the command's config composed without overrides (for 'did you mean')."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name)
    GlobalHydra.instance().clear()
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            keys.append(f"{prefix}{key}")
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def composition_error_message(
    err: Exception, config_name: str, unknown_key: Callable[[str], str | None] | None = None
) -> str | None:
    """One line for a Hydra composition error, or None when ``err`` is not one."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(err, OverrideParseException):
        detail = str(err.message).strip().splitlines()[0]
        return f"cannot parse the override {err.override!r}: {detail} (syntax: {GRAMMAR_URL})"
    if isinstance(err, MissingConfigException) and err.options is not None:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        return f"{group}={option} is not an option of {group}; choose one of: {', '.join(err.options)}"
    if not isinstance(err, ConfigCompositionException):
        return None
    text = str(err)
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown is None:
        cause = f" ({str(err.__cause__).strip().splitlines()[0]})" if err.__cause__ else ""
        return text.strip().splitlines()[0] + cause
    key = unknown.group(1)
    hint = unknown_key(key) if unknown_key is not None else None
    return hint or _unknown_key_message(key, text, config_name)


def _unknown_key_message(key: str, text: str, config_name: str) -> str:
    """A key the composed config lacks: a misspelling (the nearest key), or a key of the defaults that an option
    chosen drops or replaces (``process=edm schedule.num_timesteps=50``, ``model=mlp model.base_channels=8``)."""
    keys = _config_keys(config_name)
    if key in keys:
        group = key.split(".")[0]
        return (
            f"{key} is not a key of the {config_name} config with the options chosen (only of its defaults): "
            f"an option chosen drops or replaces {group}; drop the {key}= override"
        )
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    append = re.search(r"use (\+\S+)", text)
    message = f"{key} is not a key of the {config_name} config"
    message += f"; did you mean {close[0]}?" if close else ""
    return message + (f" (to add a new key: {append.group(1)})" if append else "")


def launcher_error_message(err: Exception) -> str | None:
    """One line for a multirun refused by its launcher before any job ran (a bad ``hydra.launcher`` setting,
    a sweep folder that already holds the jobs), or None for any other error."""
    cause = root_cause(err)
    wrapped = type(err).__name__ == "InstantiationException" and isinstance(cause, USER_ERRORS)
    if not (wrapped or isinstance(err, UserError)):
        return None
    return str(cause).strip().splitlines()[0]


@contextlib.contextmanager
def _one_line_composition_errors(
    config_name: str, unknown_key: Callable[[str], str | None] | None
) -> Iterator[None]:
    """While Hydra runs: a composition error is printed as one ``error:`` line, exit status 2.

    Hydra reports every error of its run (composition included) inside ``hydra._internal.utils.
    run_and_report``, which prints a multi-line report and exits 1; it offers no hook for composition
    errors, so the function it runs is wrapped here. SystemExit passes through it untouched."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                message = composition_error_message(err, config_name, unknown_key)
                message = message or launcher_error_message(err)
                if message is None:
                    raise
                refuse(message)

        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def command(
    config_name: str, usage: str = "", unknown_key: Callable[[str], str | None] | None = None
) -> Callable[[Callable[[Any], Any]], Callable[..., Any]]:
    """``hydra.main`` on ``conf/<config_name>.yaml`` with one-line errors (``friendly_errors`` around the
    task, composition errors as above). ``usage``: the text ``--help`` starts with (``${dl.usage:}`` in the
    help template). ``unknown_key(key)``: this command's own message for an override of a key its config does
    not have (e.g. ``schedule=`` when sampling), or None for the generic one."""
    import hydra

    def decorate(task: Callable[[Any], Any]) -> Callable[..., Any]:
        hydra_task = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(
            friendly_errors(task)
        )

        @functools.wraps(task)
        def main(cfg: Any = None) -> Any:
            OmegaConf.register_new_resolver("dl.usage", lambda: usage.strip("\n"), replace=True)
            with _one_line_composition_errors(config_name, unknown_key):
                return hydra_task(cfg)

        return main

    return decorate
