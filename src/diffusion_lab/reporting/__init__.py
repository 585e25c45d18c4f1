"""Sweep reports: read every job of a sweep (runs), the sample-quality scores under their feature network's
names (scores), group jobs into cells over seeds (cells) and their evaluation rows into settings over seeds
(evalcells), intervals and paired differences (stats), one table model (tables, eval_tables), figures
(plots), Markdown and HTML through jinja2 templates (render), raw files kept for rebuilding (raw), and the
whole report put together (write)."""

from .runs import Job, find_jobs, label_jobs
from .write import write_report

__all__ = ["Job", "find_jobs", "label_jobs", "write_report"]
