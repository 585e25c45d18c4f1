"""The CSV metrics log (``<run dir>/csv/metrics.csv``), one file for a run and its resumes, each step once.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts writing (with a warning). A resumed run
(``continue_from_step`` set, the step of the checkpoint it resumes) keeps the rows of the steps before it and
drops those after it (logged by the interrupted run after its last checkpoint, trained again now), then appends.
A rewrite of the whole file (that one, and Lightning's own when a new metric adds a column) goes to a temporary
file that replaces it, so a kill during it leaves the file as it was, not cut short.
"""

from __future__ import annotations

import csv

from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from .io import atomic_path

__all__ = ["CSVLogger"]


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, continue_from_step: int | None) -> None:
        self.continue_from_step = continue_from_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.continue_from_step is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(r["step"]) < self.continue_from_step]
        self._rewrite(keys, rows)
        self.metrics_keys = keys  # new columns rewrite the header (Lightning's writer does that)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        self._rewrite(fieldnames, rows)

    def _rewrite(self, fieldnames: list[str], rows: list[dict]) -> None:
        """The whole file, atomically where it is local (a remote file system is written in place)."""
        if not isinstance(self._fs, LocalFileSystem):
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                _write_rows(f, fieldnames, rows)
            return
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            _write_rows(f, fieldnames, rows)


def _write_rows(f, fieldnames: list[str], rows: list[dict]) -> None:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger that continues a resumed run's file (see the module docstring)."""

    continue_from_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.continue_from_step)
        return self._experiment
