"""Sweep reports: read every job of a sweep (runs), group them into cells over seeds (cells), intervals and
paired differences (stats), one table model (tables), figures (plots), Markdown and HTML through jinja2
templates (render), raw files kept for rebuilding (raw), and the whole report put together (write)."""

from .runs import Job, find_jobs, label_jobs
from .write import write_report

__all__ = ["Job", "find_jobs", "label_jobs", "write_report"]
