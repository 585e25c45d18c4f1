"""Continuing a stopped evaluation: ``evaluate ... out_dir=<its folder> resume=true``.

An evaluation rewrites its table after every setting, marked ``"complete": false`` until the last (a time limit or
a lost machine leaves the settings it scored). Continued, it scores only the settings the table lacks, and its
bits/dim when the table has none, and writes one table: the rows already there are kept as they are. Each setting
draws its samples from the same seeds whatever ran before it, so a continued evaluation's rows are those of an
uninterrupted one. It must measure the same thing: the same checkpoint (by sha256), feature network, sample
counts, seeds, batch size and every other option except those below (``CHANGEABLE``); any other difference is
refused in one line naming it. Each continuation is recorded in the summary (``continued``: when, which code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["CHANGEABLE", "check_same_measurement", "done_rows", "partial_evaluation", "setting_key"]

# Options a continuation may change: none of them changes a number in the table.
CHANGEABLE = ("resume", "progress", "compile_cache", "cache_dir", "data_root", "out_dir", "ckpt", "ckpt_path")
# Provenance entries that describe the run rather than the measurement.
RUN_FACTS = ("started", "versions", "code_sha256", "device")


def partial_evaluation(out_dir: Path) -> dict[str, Any]:
    """The stopped evaluation in ``out_dir`` ({"summary", "rows"}); one-line errors where there is none to
    continue."""
    table = out_dir / "evaluation.json"
    if not table.is_file():
        raise UserError(
            f"resume=true: {out_dir} holds no evaluation.json to continue; give the folder of a stopped "
            "evaluation as out_dir"
        )
    earlier = json.loads(table.read_text())
    if earlier.get("summary", {}).get("complete") is not False:
        raise UserError(f"resume=true: the evaluation in {out_dir} is complete; there is nothing to continue")
    return earlier


def _measurement(record: dict[str, Any]) -> dict[str, Any]:
    """A provenance record without what may change between an evaluation and its continuation."""
    kept = {k: v for k, v in record.items() if k not in RUN_FACTS}
    kept["checkpoint"] = {k: v for k, v in record.get("checkpoint", {}).items() if k != "path"}
    kept["config"] = {k: v for k, v in record.get("config", {}).items() if k not in CHANGEABLE}
    return kept


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else (where, a, b)


def check_same_measurement(earlier: dict[str, Any], now: dict[str, Any], out_dir: Path) -> None:
    """Refuse to continue an evaluation that measured something else (``earlier`` and ``now``: provenance)."""
    found = _first_difference(_measurement(earlier), _measurement(now))
    if found:
        where, was, is_now = found
        raise UserError(
            f"resume=true: {where} is {is_now!r} here but {was!r} in the evaluation in {out_dir}; a continued "
            "evaluation must measure the same thing: give those options, or score in a new out_dir"
        )


def setting_key(sampler_settings: str, guidance: float) -> tuple[str, float]:
    """What identifies a row's setting: the sampler with all its settings, and the guidance scale."""
    return sampler_settings, float(guidance or 0.0)


def done_rows(earlier: dict[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    """The rows a stopped evaluation scored, by setting."""
    return {setting_key(r["sampler_settings"], r["guidance"]): r for r in earlier.get("rows", [])}
