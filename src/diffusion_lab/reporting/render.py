"""Render a report (tables, figures, samples, notes) to Markdown and to a self-contained HTML page through the
jinja2 templates in ``templates/``: one model, two formats."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from .tables import Table

__all__ = ["Figure", "Report", "render"]


@dataclass(frozen=True)
class Figure:
    title: str
    path: Path  # the image file
    link: str  # its path relative to the report, as Markdown links it


@dataclass
class Report:
    title: str
    intro: list[str]  # lines; `code` in backticks
    tables: list[Table]  # in the order shown
    figures: list[Figure] = field(default_factory=list)
    samples: list[Figure] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _code(text: str) -> str:
    """Escape for HTML, `backticks` to <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(str(text)))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("diffusion_lab.reporting", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(md_cell=_md_cell, code=lambda t: jinja2.utils.markupsafe.Markup(_code(t)))
    env.filters["data_uri"] = _data_uri
    return env


def render(report: Report, fmt: str) -> str:
    """``report`` as 'md' or 'html' text."""
    return _environment().get_template(f"report.{fmt}.j2").render(report=report)
