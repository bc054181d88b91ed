"""csv: metrics.csv, the record of a run (always on: the report, the summary and resumes read it)."""
from __future__ import annotations

from ..logging import MetricsCSV
from .base import RunLogger, register_logger


@register_logger("csv")
class CSVLogger(RunLogger):
    """One row per epoch in RUN/metrics.csv (`selfreg.train.logging.MetricsCSV`). Its failures
    stop the run: a run without its record is no run."""

    required = True

    def start(self) -> None:
        self.csv = MetricsCSV(self.run.run_dir / "metrics.csv")
        # A resume rewrites the epochs it repeats; a kill between the checkpoint's rename and the
        # metrics row leaves the row in the checkpoint only.
        self.csv.truncate_after(self.run.epoch)
        if self.run.last_row is not None and self.csv.last_epoch() < self.run.epoch:
            self.csv.append(self.run.last_row)

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        self.csv.append({"epoch": epoch, **metrics})
