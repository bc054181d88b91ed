"""Where a run's records go: `train.loggers: [csv, tensorboard, mlflow, wandb]`, one file per
logger, registered by name (`LOGGERS`), all behind one small interface (`RunLogger`: start,
log_metrics per epoch, log_artifact, finish). csv (metrics.csv) is always on. mlflow and wandb
need `pip install 'selfreg[track]'` and are imported only when a run uses them. See base.py.
"""
from . import csv_log, mlflow_log, tensorboard_log, wandb_log  # noqa: F401  (each registers its logger)
from .base import ARTIFACTS, LOGGERS, Loggers, RunInfo, RunLogger, logger_names, register_logger

__all__ = ["ARTIFACTS", "LOGGERS", "Loggers", "RunInfo", "RunLogger", "logger_names", "register_logger"]
