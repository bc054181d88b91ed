"""mlflow: an MLflow run per training run (`pip install 'selfreg[track]'`).

Parameters: the run's config, flattened (`train.epochs`, `model.name`, ...). Metrics: every
metrics.csv column, step = epoch. Artifacts, when the run finishes: plots/curves.png,
summary.json, checkpoints/last.pt. Where: `train.mlflow_uri`, a tracking URI (http://host:5000,
sqlite:///path/mlflow.db, databricks) or a local folder (its mlflow.db and artifacts/ inside;
`mlflow ui --backend-store-uri sqlite:///FOLDER/mlflow.db`); empty: $MLFLOW_TRACKING_URI, else
MLflow's own default. Runs are filed under the experiment `train.mlflow_experiment`. A resumed run
continues its MLflow run (its id is kept in RUN/loggers.json).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ...config import flatten
from ...errors import UserError
from .base import RunLogger, register_logger

STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def tracking_location(value: str) -> tuple[str | None, str | None]:
    """(tracking URI, artifact location of a new experiment) for a train.mlflow_uri value."""
    if not value:
        return None, None                      # $MLFLOW_TRACKING_URI, else MLflow's default
    if "://" in value or value.startswith("databricks"):
        return value, None                     # the server (or store) decides where artifacts go
    folder = Path(value).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def param_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@register_logger("mlflow")
class MLflowLogger(RunLogger):
    package = "mlflow"
    extra = "track"
    fix = "check train.mlflow_uri (a tracking URI or a local folder) and that its server is reachable"

    def start(self) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        train = self.run.cfg.train
        uri, artifacts = tracking_location(train.mlflow_uri)
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri or mlflow.get_tracking_uri()
        saved = self.run.recall("mlflow")
        self.run_id = saved.get("run_id") if saved.get("tracking_uri") == self.uri else None
        if self.run_id is not None and not self._exists(self.run_id):
            self.run_id = None                 # deleted since: a new MLflow run
        new = self.run_id is None
        if new:
            experiment = self._experiment(train.mlflow_experiment, artifacts)
            self.run_id = self.client.create_run(
                experiment, run_name=self.run.title,
                tags={"selfreg.run_dir": str(self.run.run_dir.resolve()), "selfreg.model": self.run.cfg.model.name,
                      "selfreg.data": self.run.cfg.data.name}).info.run_id
            self.run.remember("mlflow", run_id=self.run_id, tracking_uri=self.uri)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self._log_params()
        if new:
            for metrics, epoch in self.earlier_rows():
                self.log_metrics(metrics, epoch)

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifacts)
            except Exception:                  # made meanwhile by another run of a sweep
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise UserError(f"the MLflow experiment {name!r} is deleted in {self.uri}: restore it "
                            f"(mlflow experiments restore) or set train.mlflow_experiment to another name")
        return found.experiment_id

    def _log_params(self) -> None:
        """The flattened config; a resumed run keeps the values it began with (MLflow parameters
        cannot change) and notes the keys the resume changed in the tag selfreg.resume_changed."""
        from mlflow.entities import Param

        wanted = {k: param_value(v)[:6000] for k, v in flatten(self.run.cfg.to_dict()).items()}
        logged = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k in wanted if k in logged and logged[k] != wanted[k])
        params = [Param(k, v) for k, v in wanted.items() if k not in logged]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        if changed:
            self.client.set_tag(self.run_id, "selfreg.resume_changed",
                                ", ".join(f"{k}={wanted[k]}" for k in changed)[:5000])

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), self.artifact_folder(path) or None)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS[status])
