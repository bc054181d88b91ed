"""selfreg from Python: what `selfreg train`, `selfreg eval` and `selfreg predict` run, as functions.

    import selfreg

    cfg = selfreg.load_config("configs/demo.yaml", ["train.epochs=1"])   # or a dict, or None
    run = selfreg.fit(cfg)                          # RunResult: run_dir, summary, best, last
    result = selfreg.evaluate(run, split="test")    # EvalResult: top1, loss, per_class, confusion
    rows = selfreg.predict(run, ["digit.png"])      # one Prediction per image: file, top

The same code the command line calls, with the same checks: a mistake is a one-line
`selfreg.UserError` (an exception, never SystemExit), so a notebook can catch it. Each
function imports torch and the rest when it is called, not when `selfreg` is imported.
docs/api.md walks through it; your own models and datasets: selfreg.plugins.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .config import Config, load_config as _load_config, resume_config
from .errors import UserError

if TYPE_CHECKING:                  # imported when used: they bring torch
    from .use.evaluate import EvalResult
    from .use.predict import Prediction
    from .use.trained import Trained

__all__ = ["RunResult", "load_config", "fit", "evaluate", "predict", "load_trained"]


@dataclass(frozen=True)
class RunResult:
    """A finished (or stopped) run: its folder, its summary.json and its two checkpoints."""
    run_dir: Path
    summary: dict = field(repr=False)
    best: Path                     # RUN/checkpoints/best.pt: the weights of the best validation epoch
    last: Path                     # RUN/checkpoints/last.pt: the last epoch, with what a resume needs

    @classmethod
    def of(cls, run_dir: str | Path, summary: dict) -> "RunResult":
        run_dir = Path(run_dir)
        return cls(run_dir, summary, run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt")


def load_config(recipe: str | Path | dict | Config | None = None, overrides: Iterable[str] = (), *,
                imports: Iterable[str] = ()) -> Config:
    """A validated run config: a YAML recipe's path, a dict shaped like a recipe
    ({"model": {"name": "resnet20"}, "train": {"epochs": 1}}), a Config, or None (the defaults);
    then `section.key=value` overrides. The modules of its `imports:` (and `imports`, added to
    them) are imported, so your registered names are known (selfreg.plugins)."""
    return _load_config(recipe, list(overrides), imports=list(imports))


def fit(config: str | Path | dict | Config | None = None, overrides: Iterable[str] = (), *,
        resume: str | Path | None = None, log: Callable[[str], None] | None = print) -> RunResult:
    """Train one run, as `selfreg train` does, and return where it went and its summary.

    `config`: anything `load_config` takes (a Config is checked again, so a field changed after
    loading is validated too). `resume=RUN_DIR` continues that run from its last checkpoint
    instead (`config` then stays None; `overrides` may change what a resume may: more epochs...).
    `log`: where the progress lines go (None: nowhere).
    """
    if resume is not None:
        if config is not None:
            raise UserError("pass a config to start a run, or resume=RUN_DIR to continue one, not both")
        cfg = resume_config(resume, list(overrides))
    else:
        cfg = load_config(config, overrides)
    from .train.engine import fit as train        # after the config: its errors come at once

    summary = train(cfg, resume=resume, log=log if log is not None else _quiet)
    return RunResult.of(summary["run_dir"], summary)


def _quiet(line: str) -> None:
    pass


def load_trained(weights_or_run: Any, *, checkpoint: str = "best", device: str = "auto") -> "Trained":
    """The trained model of a checkpoint (.pt), a weights file (.safetensors), a run folder or a
    RunResult (its `checkpoint`: best or last), in eval mode on `device`, with its classes and
    eval transform: what `evaluate` and `predict` use (pass it to them to load it once)."""
    from .use.trained import Trained, load_trained as load, pick_device

    if isinstance(weights_or_run, Trained):
        return weights_or_run
    return load(weights_file(weights_or_run, checkpoint), device=pick_device(device))


def weights_file(weights_or_run: Any, checkpoint: str = "best") -> Path:
    """The file to load: a RunResult's or a run folder's checkpoints/<checkpoint>.pt, else the path given."""
    if checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint must be best or last (a run's checkpoints/best.pt or last.pt), got {checkpoint!r}")
    if isinstance(weights_or_run, RunResult):
        weights_or_run = weights_or_run.run_dir
    if not isinstance(weights_or_run, (str, os.PathLike)):
        raise UserError(f"pass a checkpoint or weights file, a run folder or a RunResult, "
                        f"got a {type(weights_or_run).__name__}")
    path = Path(weights_or_run)
    if not path.is_dir():
        return path                 # a missing or unreadable file: load_trained says so in one line
    file = path / "checkpoints" / f"{checkpoint}.pt"
    if file.is_file():
        return file
    if (path / "config.yaml").is_file():
        raise UserError(f"run {path} has no checkpoints/{checkpoint}.pt (stopped during its first epoch?); "
                        f"continue it with selfreg.fit(resume={str(path)!r})")
    raise UserError(f"{path} is a folder but not a run folder (no checkpoints/{checkpoint}.pt); pass a run "
                    "folder or a checkpoint file (.pt, .safetensors)")


def evaluate(weights_or_run: Any, data: str | None = None, root: str | Path | None = None, split: str = "test",
             overrides: Iterable[str] = (), *, tta: str = "none", topk: int = 5, channels_last: bool = False,
             checkpoint: str = "best", device: str = "auto", out: str | Path | bool | None = None) -> "EvalResult":
    """Accuracy, loss, per-class accuracy and confusion matrix, as `selfreg eval` measures them.

    `weights_or_run`: a checkpoint or weights file, a run folder, a RunResult or a loaded model
    (`load_trained`). `data` (a dataset name), `root` and `data.key=value` `overrides` as the
    command's --data, --root and overrides (default: the run's own data); `split`: train, val
    or test. `out`: a folder to write metrics.json and confusion.png into (True: where
    `selfreg eval` writes them, RUN/eval/<split>); by default nothing is written.
    """
    from .use.evaluate import default_out_dir, eval_data_config, eval_split, evaluate_split, write_report
    from .use.trained import pick_device

    dev = pick_device(device)
    trained = load_trained(weights_or_run, checkpoint=checkpoint, device=str(dev))
    data_cfg = eval_data_config(trained, data, None if root is None else str(root), list(overrides))
    images = eval_split(trained, data_cfg, split, dev)
    result = evaluate_split(trained.model, images, trained.classes, tta=tta, k=topk, channels_last=channels_last)
    if out is not None and out is not False:
        header = {"checkpoint": str(trained.source), "model": trained.name, "dataset": data_cfg.name, "split": split}
        folder = default_out_dir(trained, data_cfg.name, split, tta) if out is True else Path(out)
        write_report(result, folder, header)
    return result


def predict(weights_or_run: Any, images: Any, *, topk: int = 5, checkpoint: str = "best", device: str = "auto",
            batch_size: int = 64) -> "list[Prediction]":
    """Class probabilities for images, with the checkpoint's own eval transform, as `selfreg predict`.

    `images`: an image file, a folder (its image files), a PIL image, an image tensor
    ((C, H, W) or (H, W); uint8, or float in [0, 1]; a (N, C, H, W) batch is N images), or a
    list of these. One Prediction per image: `file` (or `<PIL image i>`, `<tensor i>`), `top`
    [(class, probability), ...] best first, and `error` for a file that could not be read.
    """
    from .use.predict import predict as run

    trained = load_trained(weights_or_run, checkpoint=checkpoint, device=device)
    return run(trained, _image_list(images), topk=topk, batch_size=batch_size)


def _image_list(images: Any) -> list:
    import torch
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
        return [images]                     # a (N, C, H, W) tensor: N images (use.predict.list_inputs)
    try:
        return list(images)
    except TypeError:
        raise UserError(f"images must be a path, a PIL image, a tensor or a list of them, "
                        f"got a {type(images).__name__}") from None
