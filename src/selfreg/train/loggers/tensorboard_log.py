"""tensorboard: per-epoch scalars as TensorBoard events under RUN/tb/ (`tensorboard --logdir runs`)."""
from __future__ import annotations

from .base import RunLogger, register_logger


@register_logger("tensorboard")
class TensorBoardLogger(RunLogger):
    package = "tensorboard"

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.run.run_dir / "tb"
        earlier = self.earlier_rows() if not folder.exists() else []   # tensorboard added on a resume
        # A resume drops the events of the epochs it repeats.
        self.writer = SummaryWriter(str(folder), purge_step=self.run.epoch + 1 if self.run.resumed else None)
        for metrics, epoch in earlier:
            self.log_metrics(metrics, epoch)

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, epoch)

    def finish(self, status: str) -> None:
        self.writer.close()
