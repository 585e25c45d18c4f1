"""Hydra command-line overrides as text: ``key=value``, ``+key=value`` (add), ``++key=value`` (add or replace),
``~key`` (delete). The key without its prefix is what names a setting, whichever prefix the override used."""

from __future__ import annotations

__all__ = ["override_key", "split_override"]

PREFIX_CHARS = "+~"


def split_override(text: str) -> tuple[str, str | None]:
    """``"++a.b=1"`` -> ``("a.b", "1")``; ``"~a.b"`` -> ``("a.b", None)``. The value is kept as written (quotes,
    lists and sweeps such as ``1,2`` are not parsed)."""
    key, sep, value = text.partition("=")
    return key.lstrip(PREFIX_CHARS), (value if sep else None)


def override_key(text: str) -> str:
    """The setting an override names: ``"+trainer.devices=2"`` -> ``"trainer.devices"``."""
    return split_override(text)[0]
