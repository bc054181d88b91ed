"""Run configuration: dataclasses, loaded from a YAML recipe plus dotted overrides.

    cfg = load_config("configs/demo.yaml", ["optim.lr=0.05", "model.name=resnet32"])

Unknown keys and wrong types are `UserError`s that name the valid keys, so a
typo in a recipe never silently trains the wrong thing (minGPT, big_vision).
The resolved config is saved with every run and reproduces it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError
from .plugins import check_module_name, import_modules, load_installed


@dataclass
class ModelConfig:
    name: str = "resnet20"
    # Start from shipped weights (`selfreg models --pretrained`): a tag, or true for the model's
    # default; with another class count than theirs the head is new (fine-tuning, docs/using.md).
    pretrained: Any = None
    # Extra builder arguments, e.g. {shortcut: B, block: bn_after_add_no_relu}.
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.pretrained
        if not (p is None or isinstance(p, bool) or (isinstance(p, str) and p.strip())):
            raise UserError(f"config key model.pretrained must be a weights tag, true (the model's default "
                            f"weights) or null, got {p!r}")
        for key, fix in (("pretrained", "set model.pretrained: TAG (or true) instead"),
                         ("checkpoint", "start from shipped weights with model.pretrained, or continue a run "
                                        "with --resume"),
                         ("num_classes", "the data sets it"), ("in_chans", "the data sets it (data.channels)")):
            if key in self.kwargs:
                raise UserError(f"model.kwargs.{key} is not a builder argument: {fix}")


@dataclass
class DataConfig:
    # Dataset builder (selfreg.data.DATASETS): digits, mnist, fashion_mnist, cifar10, cifar100,
    # stl10, imagenette, imagenet, folder.
    name: str = "digits"
    # Where the dataset's files live (for folder: the tree holding train/<class>/<image>).
    root: str = "data"
    # Let torchvision download missing files into root (mnist, cifar, stl10, imagenette).
    download: bool = False
    # Model input size; 0 = the dataset's native size (digits: 32, photo datasets: 224).
    # A size other than the native one resizes after augmentation (e.g. 224 for zoo models on CIFAR).
    image_size: int = 0
    # Imagenette variant: full, 320 or 160.
    size: str = "full"
    # Input channels: auto (the dataset's), 1 (RGB->grey) or 3 (grey->RGB).
    channels: str = "auto"
    # The global batch: split over torchrun's processes, so a recipe means the same on any count.
    batch_size: int = 64
    eval_batch_size: int = 256
    # Validation holdout carved from train when the dataset has no official val split:
    # a fraction in (0, 1) or a count >= 1; null = the dataset's default (CIFAR/MNIST 5000,
    # STL-10 and digits 0.2, folder 0.1).
    val_fraction: Optional[float] = None
    split_seed: int = 0
    # Train on a fixed-seed random subset of this many training images; 0 = all.
    subset: int = 0
    # Load the test split (training runs then evaluate it once at the end); `selfreg eval` sets it.
    eval_test: bool = False
    num_workers: int = 0
    # Augmentation presets in order (selfreg.data.transforms.AUGMENTATIONS): auto (the dataset's
    # recipe), none, cifar, shift, stl10, flip, imagenet, lighting, randaugment.
    augment: list[str] = field(default_factory=lambda: ["auto"])
    # auto (fast for in-memory datasets), fast (uint8 tensors on the device) or torch (DataLoader).
    loader: str = "auto"
    # folder: decode every image once into a uint8 cache and train from memory.
    cache: bool = False
    # Where decoded caches go; empty = $SELFREG_CACHE_DIR or ~/.cache/selfreg.
    cache_dir: str = ""
    # folder: skip unreadable image files (counted in the run log) instead of stopping.
    skip_bad: bool = False

    def __post_init__(self) -> None:
        _check_range("data.image_size", self.image_size, low=0, what="0 (native) or a size in pixels")
        _check_range("data.batch_size", self.batch_size, low=1)
        _check_range("data.eval_batch_size", self.eval_batch_size, low=1)
        _check_range("data.subset", self.subset, low=0, what="0 (all) or a count of images")
        _check_range("data.num_workers", self.num_workers, low=0)
        _check_choice("data.channels", str(self.channels), ("auto", "1", "3"))
        _check_choice("data.loader", self.loader, ("auto", "fast", "torch"))
        f = self.val_fraction
        if f is not None and not (0 < f < 1 or (f >= 1 and float(f).is_integer())):
            raise UserError(f"config key data.val_fraction must be a fraction in (0, 1), a whole count >= 1 "
                            f"or null (the dataset's default), got {f!r}")


@dataclass
class OptimConfig:
    # sgd | adam | adamw | rmsprop | adagrad | adadelta
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = 1e-8
    alpha: float = 0.99   # rmsprop smoothing
    rho: float = 0.9      # adadelta decay
    # Keep weight decay off norm weights and biases (all 1-D parameters).
    no_decay_norm_bias: bool = False
    # Sharpness-aware minimisation around the optimizer above (Foret et al., 2021).
    sam: bool = False
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    # Clip the global gradient norm to this value; 0 disables.
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        _check_range("optim.lr", self.lr, low=0, low_open=True)
        _check_range("optim.momentum", self.momentum, low=0, high=1, high_open=True)
        _check_range("optim.weight_decay", self.weight_decay, low=0)
        _check_range("optim.eps", self.eps, low=0, low_open=True)
        _check_range("optim.alpha", self.alpha, low=0, high=1)
        _check_range("optim.rho", self.rho, low=0, high=1)
        _check_range("optim.sam_rho", self.sam_rho, low=0, low_open=True)
        _check_range("optim.grad_clip", self.grad_clip, low=0, what="0 (off) or a positive norm")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"config key optim.betas must be two numbers in [0, 1), got {self.betas!r}")


@dataclass
class ScheduleConfig:
    # constant | multistep | step | cosine | linear | poly | cyclic | onecycle; stepped every iteration.
    name: str = "multistep"
    milestones: list[float] = field(default_factory=lambda: [80])   # epochs (multistep)
    gamma: float = 0.1
    step_size: float = 30          # epochs between decays (step)
    min_lr: float = 0.0            # cosine / linear / poly floor
    power: float = 1.0             # poly exponent
    max_lr: float = 0.0            # cyclic upper bound (optim.lr is the lower)
    cycle_epochs: float = 4.0      # cyclic period
    pct_start: float = 0.3         # onecycle
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    # Warm-up: none | linear | cosine | constant (hold lr x warmup_factor, then jump:
    # He et al.'s ResNet-110 recipe). Length in steps if warmup_steps > 0, else epochs.
    warmup: str = "none"
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_range("sched.gamma", self.gamma, low=0, low_open=True)
        _check_range("sched.step_size", self.step_size, low=0, low_open=True)
        _check_range("sched.min_lr", self.min_lr, low=0)
        _check_range("sched.max_lr", self.max_lr, low=0)
        _check_range("sched.cycle_epochs", self.cycle_epochs, low=0, low_open=True)
        _check_range("sched.pct_start", self.pct_start, low=0, high=1, low_open=True, high_open=True)
        _check_range("sched.div_factor", self.div_factor, low=0, low_open=True)
        _check_range("sched.final_div_factor", self.final_div_factor, low=0, low_open=True)
        _check_range("sched.warmup_epochs", self.warmup_epochs, low=0)
        _check_range("sched.warmup_steps", self.warmup_steps, low=0)
        _check_range("sched.warmup_factor", self.warmup_factor, low=0)
        if any(m < 0 for m in self.milestones):
            raise UserError(f"config key sched.milestones must be epochs >= 0, got {self.milestones!r}")


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    # Run directory name under out_dir; empty means "<model>-<data>-s<seed>".
    run_name: str = ""
    # Torch CPU threads; 0 keeps torch's default.
    threads: int = 0
    plot: bool = True
    label_smoothing: float = 0.0
    # timm Mixup/CutMix: alpha > 0 enables each; prob is per batch.
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    # BatchNorm momentum for every BN layer: null keeps the model's, a number in [0, 1],
    # or "dynamic" = 1/(1+n) with n the batches seen this epoch (Torch ResNet study).
    bn_momentum: Any = None
    # On a NaN/inf loss: "stop" (keep the last good checkpoint) or "skip" the step.
    nan_policy: str = "stop"
    # Speed paths: autocast precision none | bf16 | fp16, NHWC memory, torch.compile; each also
    # "auto": what is measurably faster on the run's device (selfreg.train.autotune), written into
    # the run's config.yaml and summary.json as the concrete value.
    amp: str = "auto"
    channels_last: Any = "auto"   # true | false | auto
    compile: Any = "auto"         # true | false | auto
    # Exponential moving average of the weights; 0 disables. Evaluated as ema_val_*.
    ema_decay: float = 0.0
    # DistributedDataParallel (torchrun): convert BN to SyncBatchNorm (CUDA only).
    sync_bn: bool = False
    # Where each epoch's metrics go (selfreg.train.loggers): csv (metrics.csv: always written, whether
    # listed or not; the report reads it), tensorboard (RUN/tb), mlflow, wandb (these two need
    # `pip install 'selfreg[track]'`). train.tensorboard=true/false, of older recipes, adds or removes
    # tensorboard (folded in at load). All keys of loggers only say how a run is shown: LOGGER_KEYS.
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    tensorboard: Optional[bool] = None
    # mlflow: a tracking URI (http://host:5000, sqlite:///x.db) or a local folder (mlflow.db, artifacts/);
    # empty = $MLFLOW_TRACKING_URI, else MLflow's default; the experiment the runs are filed under.
    mlflow_uri: str = ""
    mlflow_experiment: str = "selfreg"
    # wandb: project, entity (empty = your default), tags; offline = written locally for `wandb sync`.
    wandb_project: str = "selfreg"
    wandb_entity: str = ""
    wandb_tags: list[str] = field(default_factory=list)
    wandb_offline: bool = False
    # Progress: auto (a bar on a terminal, plain lines otherwise) | bar | lines | none.
    progress: str = "auto"
    # never: a new run folder every time | auto: continue the run in out_dir/run_name when it has a
    # checkpoint (a torchrun restart or a requeued job finds its run), else start it there.
    resume: str = "never"
    # CUDA only (the CPU's kernels are deterministic): true = deterministic cuDNN/cuBLAS kernels and
    # no cuDNN autotuning, so a rerun and an exact resume give the same numbers; false = cuDNN
    # benchmark mode (faster convolutions, not reproducible bit for bit). Kept on resume.
    deterministic: bool = True

    def __post_init__(self) -> None:
        _check_range("train.epochs", self.epochs, low=1)
        _check_range("train.threads", self.threads, low=0, what="0 (torch's default) or a thread count")
        _check_range("train.label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        _check_range("train.mixup", self.mixup, low=0)
        _check_range("train.cutmix", self.cutmix, low=0)
        _check_range("train.mixup_prob", self.mixup_prob, low=0, high=1)
        _check_range("train.ema_decay", self.ema_decay, low=0, high=1, high_open=True)
        _check_choice("train.nan_policy", self.nan_policy, ("stop", "skip"))
        _check_choice("train.amp", self.amp, ("none", "bf16", "fp16", "auto"))
        _check_bool_or_auto("train.channels_last", self.channels_last)
        _check_bool_or_auto("train.compile", self.compile)
        _check_choice("train.progress", self.progress, ("auto", "bar", "lines", "none"))
        _check_choice("train.resume", self.resume, ("never", "auto"))
        if not str(self.out_dir).strip():     # "" is the working directory: runs would land among the sources
            raise UserError("config key train.out_dir is empty; set the folder runs are written under (default: runs)")
        _check_run_name(self.run_name)
        m = self.bn_momentum
        if not (m is None or m == "dynamic" or
                (isinstance(m, (int, float)) and not isinstance(m, bool) and 0 <= m <= 1)):
            raise UserError(f"train.bn_momentum must be null, a number in [0, 1] or dynamic, got {m!r}")
        if self.tensorboard is not None:   # the older switch, folded into train.loggers
            self.loggers = [n for n in self.loggers if n != "tensorboard" or self.tensorboard]
            if self.tensorboard and "tensorboard" not in self.loggers:
                self.loggers.append("tensorboard")
            self.tensorboard = None
        twice = next((n for n in self.loggers if self.loggers.count(n) > 1), None)
        if twice is not None:
            raise UserError(f"config key train.loggers names {twice} twice; name each logger once")
        if not self.mlflow_experiment.strip():
            raise UserError("config key train.mlflow_experiment is empty; name the MLflow experiment (default: selfreg)")


def _check_run_name(name: str) -> None:
    """A run folder lies inside train.out_dir: `name` may have sub-folders (a sweep's LABEL/sN),
    but no `..` and no absolute path, which would write (and with train.resume=auto, resume)
    a run outside it."""
    name = str(name)
    if name.startswith(("/", "\\", "~")) or ".." in name.replace("\\", "/").split("/"):
        raise UserError(f"config key train.run_name must be a folder name inside train.out_dir (sub-folders "
                        f"allowed, no '..' or absolute path), got {name!r}; set train.out_dir for another place")


def _check_bool_or_auto(key: str, value: Any) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise UserError(f"config key {key} must be true, false or auto, got {value!r}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config key {key} must be one of {', '.join(choices)}, got {value!r}")


def _check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """Refuse a number outside [low, high] (open ends with *_open), naming the key and the range."""
    if not math.isfinite(value):
        raise UserError(f"config key {key} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if not what:
            left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            what = " and ".join(p for p in (left, right) if p)
        raise UserError(f"config key {key} must be {what}, got {value!r}")


@dataclass
class Config:
    # Modules that register your own models, datasets, augmentations, optimizers or schedules
    # (selfreg.plugins), imported before any name is checked; kept in config.yaml and in the
    # checkpoints, so that resume, sweeps, eval and predict import them again. E.g. [mypkg.models].
    imports: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.imports = list(dict.fromkeys(check_module_name(m, "config key imports") for m in self.imports))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | dict | Config | None, overrides: list[str] | tuple[str, ...] = (),
                imports: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file (or a dict shaped like one, or a Config) <- `section.key=value`
    overrides, validated at every step; then the modules of `imports:` (and `imports`, from
    --import: added to the config's) are imported (`use_imports`)."""
    raw: dict = {}
    if isinstance(path, Config):
        raw = path.to_dict()
    elif isinstance(path, dict):
        raw = copy.deepcopy(path)
    elif path is not None:
        raw = read_yaml(path)
    if path is not None:
        # A recipe's `sweep:` section (grid, seeds, paper numbers) is read by selfreg.sweep and
        # its `launcher:` section (cluster resources) by selfreg.launch; on its own the recipe
        # trains its base configuration.
        raw.pop("sweep", None)
        raw.pop("launcher", None)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return use_imports(from_dict(Config, raw), imports)


def use_imports(cfg: Config, extra: list[str] | tuple[str, ...] = ()) -> Config:
    """Import what registers the names `cfg` refers to: installed plugins (entry point group
    selfreg.plugins), the modules `extra` (--import) and those of `cfg.imports`; `extra` joins
    `cfg.imports`, so the run's config.yaml records it. Returns `cfg`."""
    load_installed()
    import_modules(extra, origin="--import")
    import_modules(cfg.imports, origin="config key imports")
    cfg.imports = list(dict.fromkeys([*cfg.imports, *(check_module_name(m, "--import") for m in extra)]))
    return cfg


def read_yaml(path: str | Path) -> dict:
    """The mapping a recipe (or a run's config.yaml) holds. A missing, unreadable, empty or
    malformed file, or a key given twice in one mapping, is a one-line `UserError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; pass a YAML recipe in it, such as configs/demo.yaml")
    if not path.is_file():
        raise UserError(f"config file not found: {path}; pass a YAML recipe such as configs/demo.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; pass a YAML recipe such as configs/demo.yaml") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        data = _load_unique(text)
    except _RepeatedKey as exc:
        lines = f"lines {exc.first} and {exc.line}" if exc.first != exc.line else f"both on line {exc.line}"
        raise UserError(f"config file {path} sets {exc.key} twice ({lines}); YAML would silently keep the "
                        "last: delete one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        raise UserError(f"config file {path} is empty (no settings, only blank lines or comments); put sections "
                        "such as model:, data:, train: in it, e.g. start from configs/demo.yaml")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (model:, data:, ...)")
    return data


class _RepeatedKey(yaml.YAMLError):
    """A key given twice in one mapping (`key` dotted from the top, both 1-based lines)."""

    def __init__(self, key: str, first: int, line: int):
        super().__init__(key)
        self.key, self.first, self.line = key, first, line


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _load_unique(text: str) -> Any:
    """yaml.safe_load, refusing a key repeated in one mapping (which YAML loaders resolve silently
    to the last). Keys merged in with `<<: *anchor` may be overridden, as YAML intends."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique(node, [], set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_unique(node: yaml.Node, where: list[str], seen: set[int]) -> None:
    if id(node) in seen:                     # an alias of a node already checked (or a recursive one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                if ident in first:
                    raise _RepeatedKey(".".join([*where, name]), first[ident], key_node.start_mark.line + 1)
                first[ident] = key_node.start_mark.line + 1
            _check_unique(value_node, [*where, name], seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique(item, [*where[:-1], f"{where[-1]}[{i}]"] if where else [f"[{i}]"], seen)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=0.05)")
    key, text = item.split("=", 1)
    if not all(part.strip() for part in key.split(".")):
        raise UserError(f"override {item!r} has an empty part in its key; write section.key=value (e.g. optim.lr=0.05)")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "top level"
        valid = ", ".join(f"{prefix}{n}" for n in names)
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' ({where}); valid keys: {valid}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            values[name] = from_dict(typ, raw[name] or {}, prefix=f"{prefix}{name}.")
        else:
            values[name] = coerce(raw[name], typ, f"{prefix}{name}")
    return cls(**values)


def coerce(value: Any, typ: Any, key: str) -> Any:
    """Check `value` against the annotation `typ`; allow int->float and scalar->[scalar]."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union and type(None) in args:        # Optional[X]: null, or an X
        inner = next(a for a in args if a is not type(None))
        return None if value is None else coerce(value, inner, key)
    if origin is list:
        (item_type,) = typing.get_args(typ) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _type_error(key, value, "a mapping")
        return dict(value)
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, "true or false")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, "a number")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, "an integer")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(key, value, "a string")
    return value


def _type_error(key: str, value: Any, expected: str) -> UserError:
    return UserError(f"config key {key} must be {expected}, got {value!r}")


# The loggers' keys (train.loggers and each logger's settings) only say how a run is shown.
LOGGER_KEYS = frozenset({
    "train.loggers", "train.tensorboard", "train.mlflow_uri", "train.mlflow_experiment",
    "train.wandb_project", "train.wandb_entity", "train.wandb_tags", "train.wandb_offline",
})
# Keys that may change when a run continues (`selfreg train --resume RUN key=value`, or a sweep
# restarted over its folder) without making it another experiment: more epochs extend the run;
# CPU threads only change float summation order; the rest say where the data lives or how the
# run is shown; `imports` only says where the names the run uses are registered (the names
# themselves are keys that may not change). Anything else (model, optimizer, schedule, data,
# seed...) starts a new run.
RESUMABLE_KEYS = frozenset({
    "train.epochs", "train.threads", "train.device", "train.progress", "train.plot",
    "train.resume", "data.root", "data.download", "data.num_workers", "data.cache_dir", "imports",
}) | LOGGER_KEYS
# A recipe's `auto` speed settings continue a run whatever concrete value it chose (train/autotune.py).
AUTO_CHOSEN = frozenset({"train.amp", "train.channels_last", "train.compile"})
# A data.val_fraction a run recorded as null was unused: its dataset has a val split of its own.
DATA_DECIDED = frozenset({"data.val_fraction"})


def refused_change(saved: dict, wanted: dict) -> str | None:
    """The first key (dotted) whose value would make `wanted` another experiment than the run
    whose config.yaml is `saved` (both plain dicts), or None when `wanted` continues it.

    A key the saved config lacks was written by an older selfreg, before the key existed: that
    run had the key's default (a new option changes nothing until it is set)."""
    defaults = flatten(Config().to_dict())
    saved = {**{k: v for k, v in defaults.items() if k not in RESUMABLE_KEYS}, **flatten(saved)}
    wanted = flatten(wanted)
    for key in sorted(set(saved) | set(wanted)):
        if key in RESUMABLE_KEYS or saved.get(key) == wanted.get(key):
            continue
        if key in AUTO_CHOSEN and wanted.get(key) == "auto":
            continue
        if key in DATA_DECIDED and saved.get(key) is None:
            continue
        return key
    return None


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train.epochs": 10, "model.kwargs": {...}, ...}: a config dict keyed by dotted names."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: Config | dict, new: Config | dict) -> list[str]:
    """Dotted keys whose values differ between two configs, sorted."""
    a = flatten(old.to_dict() if isinstance(old, Config) else old)
    b = flatten(new.to_dict() if isinstance(new, Config) else new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  imports: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of the run in `run_dir` with `overrides` applied, refusing keys a resume cannot change.
    Its `imports:` are imported, and `imports` (--import) join them.

    Nothing is written here: the caller saves the config once the run has been restored.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass the folder a run wrote")
    saved = load_config(run_dir / "config.yaml")
    cfg = load_config(run_dir / "config.yaml", overrides, imports=imports)
    refused = refused_change(saved.to_dict(), cfg.to_dict())   # the rule of train.resume=auto and of sweeps
    if refused:
        raise UserError(f"--resume cannot change {refused} (the run was trained with another value); "
                        f"a resume may change only {', '.join(sorted(RESUMABLE_KEYS))} (and set the speed keys "
                        "back to auto); start a new run instead")
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
