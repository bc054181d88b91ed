"""wandb: a Weights & Biases run per training run (`pip install 'selfreg[track]'`).

Config: the run's config. History: every metrics.csv column, step = epoch. Files, when the run
finishes: plots/curves.png, summary.json, checkpoints/last.pt. Settings: `train.wandb_project`,
`train.wandb_entity` (empty: your default entity), `train.wandb_tags`, `train.wandb_offline`
(write the run locally, `wandb sync` it later; WANDB_MODE=offline does the same). W&B writes its
local copy where it always does (./wandb, or $WANDB_DIR) and leaves the console alone unless
$WANDB_CONSOLE says otherwise. A resumed run continues its W&B run (its id is kept in RUN/loggers.json).
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import RunLogger, register_logger


@register_logger("wandb")
class WandbLogger(RunLogger):
    package = "wandb"
    extra = "track"
    fix = "run `wandb login` (or set WANDB_API_KEY) or set train.wandb_offline=true"

    def start(self) -> None:
        import wandb

        train = self.run.cfg.train
        saved = self.run.recall("wandb").get("id")
        settings = {} if "WANDB_CONSOLE" in os.environ else {"console": "off"}
        self.wb = wandb.init(
            project=train.wandb_project or None, entity=train.wandb_entity or None,
            tags=list(train.wandb_tags) or None, name=self.run.title, config=self.run.cfg.to_dict(),
            mode="offline" if train.wandb_offline else None, id=saved, resume="allow" if saved else None,
            reinit="create_new", settings=wandb.Settings(**settings))
        if saved is None:
            self.run.remember("wandb", id=self.wb.id)
            for metrics, epoch in self.earlier_rows():
                self.log_metrics(metrics, epoch)
        else:
            self.wb.config.update(self.run.cfg.to_dict(), allow_val_change=True)   # a resume's changes

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        self.wb.log({**metrics, "epoch": epoch}, step=epoch)

    def log_artifact(self, path: Path) -> None:
        inside = path.resolve().is_relative_to(self.run.run_dir.resolve())    # kept as plots/curves.png, ...
        self.wb.save(str(path), base_path=str(self.run.run_dir if inside else path.parent), policy="now")

    def finish(self, status: str) -> None:
        self.wb.finish(exit_code=0 if status == "finished" else 1)
