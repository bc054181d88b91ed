"""MLflow and W&B for tests: W&B offline under a test's folder, MLflow read back through its client."""
from pathlib import Path

import pytest


def offline_wandb(mp: pytest.MonkeyPatch, root: Path) -> None:
    """W&B offline, every folder it writes under `root`; MLflow only where a test points it."""
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(root / sub))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


def mlflow_client(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def mlflow_runs(folder: Path, experiment: str = "selfreg"):
    client = mlflow_client(folder)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []
