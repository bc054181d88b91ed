"""The logger interface, its registry and the set of loggers a run writes to.

A logger is one class in one file, registered by name (`train.loggers: [csv, tensorboard, ...]`):

    @register_logger("mine")
    class MyLogger(RunLogger):
        def start(self): ...                            # open the run (RunInfo in self.run)
        def log_metrics(self, metrics, epoch): ...      # one call per epoch: {"val_acc": 0.93, ...}
        def log_artifact(self, path): ...               # a file of the finished run
        def finish(self, status): ...                   # finished | failed | interrupted

The engine talks to `Loggers` only, on rank 0: a logger that cannot start stops the run in one
line before its first step (`UserError` naming the logger and the fix); one that fails later warns
once and is dropped, and training goes on (metrics.csv, a `required` logger, keeps every epoch).
Loggers never draw from the run's random generators (`keep_rng`), so they cannot change its numbers.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...config import Config, TrainConfig
from ...errors import UserError
from ...registry import Registry
from ..logging import read_metrics

LOGGERS = Registry("logger")

# The files of a finished run a tracking logger keeps (relative to the run folder): the curves,
# the summary and the final weights. The config goes as parameters.
ARTIFACTS = ("plots/curves.png", "summary.json", "checkpoints/last.pt")
STATUSES = ("finished", "failed", "interrupted")


@dataclass
class RunInfo:
    """What a logger is told about the run it records."""

    run_dir: Path
    cfg: Config
    epoch: int = 0                  # epochs already done: 0 for a new run, the checkpoint's on a resume
    resumed: bool = False
    last_row: dict | None = None    # the checkpoint's metrics row (metrics.csv may lack it after a kill)

    @property
    def title(self) -> str:
        """The run's name as a tracking UI shows it: its folder under train.out_dir ("NAME/s0")."""
        try:
            return self.run_dir.resolve().relative_to(Path(self.cfg.train.out_dir).resolve()).as_posix()
        except ValueError:
            return self.run_dir.name

    def rows(self) -> list[dict]:
        """metrics.csv's rows (the epochs before this start, once the csv logger has started)."""
        path = self.run_dir / "metrics.csv"
        return [r for r in read_metrics(path) if r["epoch"] <= self.epoch] if path.is_file() else []

    # What a logger keeps to find its record again on a resume (a tracking run's id): RUN/loggers.json.
    def recall(self, logger: str) -> dict:
        path = self.run_dir / "loggers.json"
        try:
            return dict(json.loads(path.read_text()).get(logger) or {})
        except (OSError, ValueError, AttributeError):
            return {}

    def remember(self, logger: str, **values) -> None:
        path = self.run_dir / "loggers.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        state[logger] = values
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)


class RunLogger:
    """One place a run's records go. Subclasses override what they use."""

    name = ""          # set by register_logger
    required = False   # a failure stops the run instead of dropping the logger (metrics.csv)
    package = ""       # the Python package it needs, checked before anything is built
    extra = ""         # the selfreg extra that installs it: pip install 'selfreg[EXTRA]'
    fix = ""           # what to check when it fails to start

    def __init__(self, run: RunInfo):
        self.run = run

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Raise a one-line `UserError` when this logger cannot run here (before anything is built)."""
        if cls.package and importlib.util.find_spec(cls.package) is None:
            install = f"pip install 'selfreg[{cls.extra}]'" if cls.extra else f"pip install {cls.package}"
            raise UserError(f"logger {cls.name} needs the {cls.package} package, which is not installed: "
                            f"{install} (or drop {cls.name} from train.loggers)")

    def start(self) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    # helpers
    def earlier_rows(self) -> list[tuple[dict[str, float], int]]:
        """(metrics, epoch) of the epochs done before this start: what a record that begins on a
        resume (a logger added then, or a new tracking run) replays to be complete."""
        return [(numbers(r, drop_nan=True), int(r["epoch"])) for r in self.run.rows()] if self.run.resumed else []

    def artifact_folder(self, path: Path) -> str:
        """`path`'s folder relative to the run ("plots", "checkpoints"; "" at its top)."""
        try:
            parent = path.resolve().parent.relative_to(self.run.run_dir.resolve()).as_posix()
        except ValueError:
            return ""
        return "" if parent == "." else parent


def register_logger(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_logger("mlflow")` puts the class in LOGGERS under `name`."""

    def deco(cls: type) -> type:
        cls.name = name
        LOGGERS.register(name)(cls)
        return cls

    return deco


def logger_names(train: TrainConfig) -> list[str]:
    """The loggers a run writes to, in order: csv always first (the report reads metrics.csv)."""
    return ["csv", *dict.fromkeys(n for n in train.loggers if n != "csv")]


def numbers(row: dict, drop_nan: bool = False) -> dict[str, float]:
    """A metrics row as a logger records it: every number but the epoch, in the row's order
    (with `drop_nan`, not the empty cells metrics.csv reads as NaN: a column that began later)."""
    return {k: v for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and not (drop_nan and math.isnan(v))}


@contextlib.contextmanager
def keep_rng():
    """Leave Python's, NumPy's and torch's CPU generators as they were, whatever a logger draws:
    a run with loggers computes exactly what it computes without (and an exact resume stays exact)."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "no message"
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


class Loggers:
    """The loggers of one run (none on ranks other than 0), called together."""

    def __init__(self, loggers: list[RunLogger] | None = None, log: Callable[[str], None] = print):
        self.loggers = list(loggers or [])
        self.log = log

    @classmethod
    def start(cls, names: list[str], run: RunInfo, log: Callable[[str], None] = print) -> "Loggers":
        """Start each named logger; the first that cannot is a one-line `UserError` (the ones
        started before it are finished as failed)."""
        started = cls([], log)
        for name in names:
            logger = LOGGERS.get(name)(run)
            try:
                with keep_rng():
                    logger.start()
            except Exception as exc:
                started.finish("failed", artifacts=False)
                if logger.required:
                    raise
                why = str(exc) if isinstance(exc, UserError) else one_line(exc)
                fix = logger.fix or "check its settings (train.*)"
                raise UserError(f"logger {name} failed to start ({why}); {fix}, "
                                f"or drop {name} from train.loggers") from None
            started.loggers.append(logger)
        return started

    def log_metrics(self, row: dict, epoch: int) -> None:
        metrics = numbers(row)
        for logger in list(self.loggers):
            self._call(logger, f"logging epoch {epoch}", lambda: logger.log_metrics(dict(metrics), epoch))

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        for logger in list(self.loggers):
            self._call(logger, f"keeping {path.name}", lambda: logger.log_artifact(path))

    def finish(self, status: str, artifacts: bool = True) -> None:
        """End every logger's record; a finished run first hands them its ARTIFACTS."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r}; one of {', '.join(STATUSES)}")
        if status == "finished" and artifacts and self.loggers:
            run_dir = self.loggers[0].run.run_dir
            for rel in ARTIFACTS:
                if (run_dir / rel).is_file():
                    self.log_artifact(run_dir / rel)
        for logger in list(self.loggers):
            self._call(logger, "finishing", lambda: logger.finish(status), finishing=True)
        self.loggers = []

    def _call(self, logger: RunLogger, doing: str, fn: Callable[[], None], finishing: bool = False) -> None:
        try:
            with keep_rng():
                fn()
        except Exception as exc:
            if logger.required:
                raise
            # One line, once: the logger is dropped for the rest of the run.
            self.loggers.remove(logger)
            goes_on = "" if finishing else " and training goes on"
            self.log(f"warning: logger {logger.name} failed while {doing} ({one_line(exc)}); it is off for "
                     f"the rest of this run{goes_on} (metrics.csv keeps every epoch)")
            if not finishing:
                with contextlib.suppress(Exception), keep_rng():
                    logger.finish("failed")
