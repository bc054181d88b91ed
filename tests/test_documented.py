"""Every documented `selfreg` command runs, and every recipe (every grid point of a sweep) trains.

Collected, never listed by hand, so a new command or recipe is covered without editing this file:

- the `selfreg ...` commands of README.md and docs/*.md: fenced and indented code blocks and
  inline code. A bare `selfreg SUB` or a fragment without its required arguments
  (`selfreg export --format safetensors`) is a mention: only its options are checked;
- the commands of every recipe header's `# Command:` block (configs/**/*.yaml);
- every recipe in configs/**/*.yaml and every grid point of a sweep recipe, each run by its
  header's own `selfreg train` / `selfreg sweep` command (a grid point with `--only LABEL`).

Each command runs in its smoke form through `selfreg.cli.main` in this process (a torchrun
command also as torchrun with 2 CPU processes, slow, the first of each subcommand and recipe), in a fresh folder that stands in for the
repository root, so `runs/...`, `configs/...` and `data` resolve as they do for a user there:

- `data` holds tiny datasets in their real on-disk formats (tests/dataset_writers.py: CIFAR-10/100,
  MNIST, Fashion-MNIST, STL-10; image folders for the CIFAR-10 JPEG copy, Imagenette and
  ImageNet), with torchvision's md5 checks pointed at them: what a download or `tar -x` would
  have put there;
- placeholders (PLACEHOLDERS: DATA, RUN_DIR, CKPT, ...) become paths; what a command reads is
  made first: a repository file is copied in, a missing run is a tiny run of configs/demo.yaml
  (of the model its folder is named after), a missing sweep folder is the smoke run of the
  documented sweep command that writes it, a weights file is exported from a run, an image or
  image folder is written;
- `[optional parts]` are left out, `a|b` takes `a`, `...` goes, `~` is a folder of the workspace,
  `> FILE` receives the output;
- train and sweep get SMOKE overrides: one epoch of one batch of two images at the smallest input
  size the model takes (16 px; SMOKE_SIZE lists the exceptions), fp32 eager; a sweep runs seed 0
  (or the command's seeds) of one grid point, after the recipe's own `sweep.smoke` overrides;
  `train --resume` adds one epoch; `probe` gets `--max-images 64`; `selfreg models` without a
  pattern lists one model (SMOKE_MODEL_PATTERN: tests/test_zoo_table.py measures them all).

A command that cannot run here is skipped with its reason (`skip_reason`: a SLURM submission,
a CUDA device). Marked slow, with the reason: torchrun, `--parallel` (a process a run), the dynamo ONNX export (`slow_reason`), and recipes of models over 15M parameters
(`heavy_reason`, from docs/zoo.md). A known bug is xfail (KNOWN_BROKEN, strict: it fails once fixed).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

import dataset_writers as w
from procs import REPO, env_with_src, selfreg_in_process, torchrun

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RECIPES = sorted((REPO / "configs").rglob("*.yaml"))

# What a placeholder of the docs stands for (a value, or a function of the subcommand).
SWEEP_RECIPE = "configs/regnet/table1.yaml"     # the smallest grid on CIFAR-sized data: 2 configurations


def sweep_dir(sub: str) -> str:
    """SWEEP_RECIPE's folder (made, when a command reads it, by the documented sweep that writes it)."""
    return f"runs/{yaml.safe_load((REPO / SWEEP_RECIPE).read_text())['sweep']['name']}"


PLACEHOLDERS = {
    "RECIPE": lambda sub: SWEEP_RECIPE if sub == "sweep" else "configs/demo.yaml",
    "RUN_DIR": "runs/demo", "RUN": "runs/demo", "SWEEP_DIR": sweep_dir, "SWEEP": sweep_dir,
    "CKPT": "runs/demo/checkpoints/best.pt", "CKPT1": "runs/demo/checkpoints/best.pt",
    "CKPT2": "runs/rrnet20_gru/checkpoints/best.pt",
    "FILE": "runs/demo/checkpoints/best.safetensors",
    "IMAGE": "digit.png", "IMAGE_OR_DIR": "photos/",
    "DATA": "data", "DIR": "data", "IMAGENET": "data/imagenet",
    "NAME": "digits", "PATTERN": "rrnet20*", "M": "rrnet20_gru", "K": "2",
}
# Capitals that are values, not placeholders (model.kwargs.shortcut=B).
LITERAL_CAPS = {"A", "B"}

BATCH = 2                       # images per step; also the subset and the validation count
SMOKE_MODEL_PATTERN = "resnet20"      # `selfreg models` lists (and --table measures) this one
SMOKE_SIZE = {"inception_v3": 32}   # input sizes where 16 px is too small for the model
DEFAULT_SIZE = 16               # lenet_bn, alexnet and VGG need at least 16

# Commands that fail today because of a bug outside this file: {text in the command: reason}.
KNOWN_BROKEN: dict[str, str] = {}


# ---------------------------------------------------------------------------------------
# Finding commands

@dataclasses.dataclass
class Command:
    where: str                  # "docs/using.md:20"
    text: str                   # as written, on one line
    launcher: list[str]         # ["torchrun", "--nproc_per_node=4"] or []
    argv: list[str]             # after `selfreg`, placeholders still in
    stdout: str | None = None   # `> FILE`
    context: str = ""           # the prose that introduces it (a code block's lead-in, an inline span's line)

    @property
    def sub(self) -> str:
        return self.argv[0] if self.argv else ""

    def resolved(self) -> list[str]:
        return [substitute(token, self.sub) for token in self.argv]

    def launch(self) -> list[str]:
        return [substitute(token, self.sub) for token in self.launcher]

    def key(self) -> str:
        """What two mentions of one command share (where `> FILE` goes is the shell's business)."""
        try:
            return shlex.join([*self.launch(), "selfreg", *self.resolved()])
        except KeyError:        # an unknown placeholder: its test fails, saying which
            return shlex.join([*self.launcher, "selfreg", *self.argv])

    def parsed(self):
        """The argparse namespace of the resolved command, or None (unknown placeholder, bad syntax)."""
        try:
            return parse(self.resolved())[0]
        except KeyError:
            return None


START = re.compile(r"(?:\btorchrun\s+(?:--?[\w-]+(?:=\S+)?\s+)*-m\s+selfreg|\bpython\s+-m\s+selfreg"
                   r"|(?<![\w./-])selfreg)\s+(?=[a-z-])")


def command_in(text: str) -> str | None:
    """The command that starts in `text`, up to a shell comment or a parenthesis it did not open."""
    m = START.search(text)
    if not m:
        return None
    rest, out, quote = text[m.start():], [], None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "#(" and rest[i - 1].isspace() or ch == ")":
            break
        out.append(ch)
    return " ".join("".join(out).split())


def join_continued(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in a backslash joined with the next one: (first line number, text)."""
    out, pending, start = [], "", 0
    for n, line in lines:
        text = f"{pending} {line.strip()}" if pending else line.strip()
        start = start if pending else n
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        pending = ""
        out.append((start, text))
    return out


def markdown_commands(path: Path) -> list[tuple[int, str, str]]:
    """(line, command, context) of fenced and indented code blocks and of inline code spans."""
    lines = path.read_text().splitlines()
    code, prose, fence, lead_in = [], [], False, {}
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            prose.append("")
        elif fence or (line.startswith("    ") and START.match(line.strip())):
            code.append((n, line))
            lead_in[n] = next((p.strip() for p in reversed(prose) if p.strip()), "")
            prose.append("")
        else:
            prose.append(line)
    found = [(n, command_in(text), lead_in[n]) for n, text in join_continued(code)
             if START.match(text.lstrip("$ "))]
    text = "\n".join(prose)
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        if START.match(span):
            n = text.count("\n", 0, m.start()) + 1
            found.append((n, command_in(span), prose[n - 1].strip()))
    return sorted(found)


def header_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of a recipe header's `# Command:` block (up to the next `# Field:` line)."""
    block, lines = False, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break
        field = re.match(r"# (\S[^:]*?):(\s|$)", line)
        if field:
            block = field.group(1) == "Command"
            line = line[field.end():] if block else line
        if block:
            lines.append((n, line.lstrip("#")))
    return [(n, cmd) for n, text in join_continued(lines) if (cmd := command_in(text))]


def parse_command(where: str, text: str) -> Command:
    tokens = shlex.split(drop_optional(text))
    launcher = []
    if tokens[0] == "torchrun":
        m = tokens.index("-m")
        launcher, tokens = tokens[:m], tokens[m + 1:]
    elif tokens[:2] == ["python", "-m"]:
        tokens = tokens[2:]
    assert tokens[0] == "selfreg", f"{where}: {text}"
    argv, stdout = [], None
    rest = iter(tokens[1:])
    for token in rest:
        if token == ">":
            stdout = next(rest)
        elif token != "...":
            token = token.removesuffix("...")
            if re.fullmatch(r"[\w.=-]+(\|[\w.-]+)+", token):     # a|b|c: the first choice
                token = token.split("|")[0]
            argv.append(token)
    return Command(where, text, launcher, argv, stdout)


def drop_optional(text: str) -> str:
    """Leave out `[optional parts]` (brackets that open a word, outside quotes: not key=[a,b])."""
    out, depth, quote = [], 0, None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[" and (depth or i == 0 or text[i - 1].isspace()):
            depth += 1
            continue
        elif ch == "]" and depth:
            depth -= 1
            continue
        if not depth:
            out.append(ch)
    return " ".join("".join(out).split())


def substitute(token: str, sub: str) -> str:
    """Placeholders (capital words as a whole token, value or path part) replaced; `~` kept."""
    def one(part: str) -> str:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", part) or part in LITERAL_CAPS:
            return part
        if part not in PLACEHOLDERS:
            raise KeyError(f"unknown placeholder {part}: add what it stands for to PLACEHOLDERS")
        value = PLACEHOLDERS[part]
        return value(sub) if callable(value) else value

    head, eq, value = token.rpartition("=") if "=" in token and not token.startswith("-") else ("", "", token)
    if token.startswith("--") and "=" in token:
        head, eq, value = token.partition("=")
    return head + eq + "/".join(one(p) for p in value.split("/"))


def collect() -> tuple[list[Command], dict[Path, Command]]:
    """Every documented command (deduplicated), and each recipe's own train/sweep command."""
    found = []
    for path in DOCS:
        found += [(f"{path.relative_to(REPO)}:{n}", text, context) for n, text, context in markdown_commands(path)]
    primary = {}
    for path in RECIPES:
        rel = str(path.relative_to(REPO))
        for n, text in header_commands(path):
            cmd = parse_command(f"{rel}:{n}", text)
            if path not in primary and cmd.sub in ("train", "sweep") and rel in cmd.argv[1:2]:
                primary[path] = cmd
            if primary.get(path) is not cmd or cmd.launcher:     # torchrun: also run as such (slow)
                found.append((cmd.where, text, ""))
    commands, seen, distributed = [], {}, set()
    covered = {p.key() for p in primary.values() if not p.launcher}   # run by test_recipe_trains_one_step
    for where, text, context in found:
        cmd = dataclasses.replace(parse_command(where, text), context=context)
        # A torchrun command runs as such (slow), and its selfreg part alone in this process. Under
        # torchrun only the first of a subcommand and its recipe: a second one differs in overrides
        # (an augmentation, an output folder), which its in-process run checks without two more torch
        # processes and a gloo group.
        if cmd.launcher:
            alone = dataclasses.replace(cmd, where=where + ":no-torchrun", launcher=[])
            variants = [alone] if tuple(cmd.argv[:2]) in distributed else [cmd, alone]
            distributed.add(tuple(cmd.argv[:2]))
        else:
            variants = [cmd]
        for one in variants:
            key = one.key()
            if key not in seen and key not in covered:
                seen[key] = one
                commands.append(one)
    return commands, primary


COMMANDS, PRIMARY = collect()


# ---------------------------------------------------------------------------------------
# Parsing with the real CLI: commands and mentions

@functools.lru_cache(maxsize=None)
def cli_parser():
    from selfreg.cli import build_parser

    return build_parser()


def parse(argv: list[str]):
    """(argparse namespace, None) as `selfreg.cli.main` sees it, or (None, argparse's error)."""
    parser = cli_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args(argv)
            target = next((name for name in ("overrides", "items") if hasattr(args, name)), None)
            if extra and (target is None or any("=" not in e or e.startswith("-") for e in extra)):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            if extra:
                setattr(args, target, list(getattr(args, target)) + extra)
    except SystemExit as exc:
        if exc.code in (0, None):       # --help, --version: nothing to prepare
            return argparse.Namespace(command=None), None
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return args, None


def subparser(sub: str):
    action = next(a for a in cli_parser()._actions if a.dest == "command")
    return action.choices.get(sub)


def is_mention(cmd: Command) -> bool:
    """A subcommand named in prose: bare (when it needs an argument) or missing a required one
    (for `train`: a recipe or --resume RUN)."""
    if cmd.launcher or cmd.sub.startswith("-"):
        return False
    sp = subparser(cmd.sub)
    if sp is None:
        return False        # an unknown subcommand: the command's test fails, naming it
    if len(cmd.argv) == 1:
        positionals = [a for a in sp._actions if not a.option_strings and a.dest != "help"]
        return any(a.required or a.default is None for a in positionals)
    try:
        args, error = parse(cmd.resolved())
    except KeyError:
        return False
    if args is not None and cmd.sub == "train":      # `selfreg train --seeds 0,1`: no recipe, no run
        return not (args.config or args.resume)
    return bool(error) and ("are required" in error or "expected one argument" in error)


DOCUMENTED = [c for c in COMMANDS if not is_mention(c)]
MENTIONS = [c for c in COMMANDS if is_mention(c)]


# ---------------------------------------------------------------------------------------
# What cannot run here, what is slow, what is broken

def skip_reason(cmd: Command) -> str | None:
    import torch

    text = " ".join(cmd.argv)
    if re.search(r"(--device[ =]|train\.device=)cuda", text) and not torch.cuda.is_available():
        return "names a CUDA device and this machine has none"
    args = cmd.parsed()
    if args is not None and getattr(args, "launcher", None) == "slurm":
        where = [f"partition {args.partition}" if getattr(args, "partition", None) else "",
                 f"{args.gpus} GPU(s) a job" if getattr(args, "gpus", None) else ""]
        return (f"submits SLURM jobs ({', '.join(x for x in where if x) or 'to a cluster'}): needs a SLURM "
                f"cluster; {cmd.where.split(':')[0]} says: {cmd.context!r}")
    return None


def slow_reason(cmd: Command) -> str | None:
    args = cmd.parsed()
    if cmd.launcher:
        return "torchrun: 2 processes, each importing torch and joining a gloo group (10-35 s)"
    if cmd.sub == "export" and args is not None and args.format == "onnx" and args.exporter != "legacy":
        return "the dynamo ONNX exporter takes 5-30 s a model (docs/using.md)"
    return None


@functools.lru_cache(maxsize=None)
def zoo_params() -> dict[str, int]:
    """Parameters of each model at 32x32, from the generated table in docs/zoo.md."""
    table = {}
    for line in (REPO / "docs" / "zoo.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and re.fullmatch(r"`[\w.]+`", cells[0]) and re.fullmatch(r"[\d,]+", cells[2]):
            table[cells[0].strip("`")] = int(cells[2].replace(",", ""))
    return table


HEAVY_PARAMS = 15_000_000


def heavy_reason(model: str) -> str | None:
    """A model whose one-step run is slow on a CPU: building it, one step, and mostly its two
    checkpoints (last.pt and best.pt: weights and optimizer state, hundreds of MB each; the
    heavy recipes took 3-16 s each, 2 workers on 2 busy cores)."""
    params = zoo_params().get(model, 0)
    if params > HEAVY_PARAMS:
        return f"{model}: {params / 1e6:.0f}M parameters, checkpoints of up to {params * 12 / 1e9:.1f} GB each"
    return None


def marks_for(cmd: Command) -> list:
    marks = []
    if (reason := skip_reason(cmd)):
        marks.append(pytest.mark.skip(reason=reason))
    if (reason := slow_reason(cmd)):
        marks += [pytest.mark.slow(reason=reason), pytest.mark.timeout(600)]
    for text, reason in KNOWN_BROKEN.items():
        if text in cmd.text:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
    return marks


def command_id(cmd: Command, commands: list[Command]) -> str:
    same = [c for c in commands if c.where == cmd.where]
    return cmd.where + (f"#{same.index(cmd) + 1}" if len(same) > 1 else "")


# ---------------------------------------------------------------------------------------
# Data, in the formats the downloads and archives have

IMAGENETTE_WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888257"]


def write_photo_folder(root: Path, classes, per_class: int, seed: int, ext: str = ".JPEG") -> None:
    """root/<class>/NNN.ext: photo-like files of varying sizes (as ImageNet's and Imagenette's)."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            h, wd = 20 + 2 * ((c + i) % 3), 24
            w.save_image(root / name / f"{i:03d}{ext}", w.random_images(1, (h, wd, 3), seed + 10 * c + i)[0],
                         fmt="JPEG")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Every dataset a recipe names, tiny, under one data root."""
    root = tmp_path_factory.mktemp("documented-data") / "data"
    w.write_cifar10(root, per_batch=4, test=8)
    w.write_cifar100(root, train=20, test=8)
    w.write_mnist(root, "MNIST", train=20, test=8)
    w.write_mnist(root, "FashionMNIST", train=20, test=8)
    w.write_stl10(root, train=20, test=8)
    # Stands in for the CIFAR-10 JPEG copy the recipes name (an ImageFolder: train/<class>/NNNN.jpg).
    for c, name in enumerate(w.CIFAR10_CLASSES):
        for i in range(2):
            w.save_image(root / "train" / name / f"{i:04d}.jpg", w.random_images(1, (32, 32, 3), 100 * c + i)[0])
    for split, n in (("train", 1), ("val", 1)):     # torchvision's Imagenette: imagenette2/<split>/<wnid>/
        write_photo_folder(root / "imagenette2" / split, IMAGENETTE_WNIDS, n, seed=len(split))
    for split, n in (("train", 2), ("val", 1)):     # ILSVRC-2012 layout: imagenet/<split>/<wnid>/
        write_photo_folder(root / "imagenet" / split, IMAGENETTE_WNIDS[:3], n, seed=7 + len(split))
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """One compute thread, whatever the worker count: these runs are tiny, and two threads on a
    busy 2-core machine spin against each other (a 16 px ResNet-20 batch: 18 ms on one, ~1 s on two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ws(tmp_path, tiny_data, monkeypatch):
    from torchvision.datasets import CIFAR10, CIFAR100

    w.register_cifar_md5s(monkeypatch, CIFAR10, tiny_data)
    w.register_cifar_md5s(monkeypatch, CIFAR100, tiny_data)
    w.register_stl10_md5s(monkeypatch, tiny_data)
    monkeypatch.setenv("SELFREG_CACHE_DIR", str(tiny_data.parent / "cache"))
    (tmp_path / "data").symlink_to(tiny_data, target_is_directory=True)
    (tmp_path / "home").mkdir()
    yield Workspace(tmp_path)
    for path in tmp_path.rglob("*.pt"):     # big models' checkpoints: not worth keeping on disk
        if path.is_file() and path.stat().st_size > 20_000_000:
            path.unlink()


# ---------------------------------------------------------------------------------------
# Running a command in its smoke form

def override(key: str, value) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def smoke_overrides(models: set[str], img_size_kwarg: bool, world: int = 1) -> list[str]:
    """One step: one global batch of BATCH images per process (BN needs two), the smallest size."""
    size, batch = max(SMOKE_SIZE.get(m, DEFAULT_SIZE) for m in models), BATCH * world
    out = ["train.epochs=1", f"data.batch_size={batch}", f"data.subset={batch}", f"data.val_fraction={batch}",
           "data.eval_batch_size=32", f"data.image_size={size}", "data.num_workers=0", "train.amp=none",
           "train.channels_last=false", "train.compile=false", "train.progress=none", "train.plot=false",
           "train.tensorboard=false"]
    return out + ([f"model.kwargs.img_size={size}"] if img_size_kwarg else [])


def model_for(run_name: str) -> str | None:
    """The model a run folder is named after (`runs/rrnet20_gru`, `runs/rrnet`), if any."""
    from selfreg.factory import list_models

    names = list_models()
    if run_name in names:
        return run_name
    return next((n for n in names if n.startswith(run_name)), None)


def fnmatch_escape(label: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", label)


class Workspace:
    """A folder standing in for the repository root, with what the documented commands read."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else self.root / p

    def expand_home(self, token: str) -> str:
        home = str(self.root / "home")
        if token.startswith("~/"):
            return home + token[1:]
        return re.sub(r"^([\w.-]+=)~/", lambda m: m.group(1) + home + "/", token)

    # -------------------------------------------------------------- running
    def run(self, cmd: Command, only: str | None = None, labels: int = 1, parallel: bool = True):
        """The command's smoke form (a sweep: grid point `only`, else its first `labels`; `--parallel`
        dropped unless `parallel`); returns the CompletedProcess, its return code checked."""
        argv = [self.expand_home(t) for t in cmd.resolved()]
        nproc = min(2, int(next((t.split("=")[1] for t in cmd.launch() if "nproc_per_node" in t), "1")))
        argv = self.prepare(cmd, argv, only=only, labels=labels, parallel=parallel,
                            world=nproc if cmd.launcher else 1)
        if cmd.launcher:
            env = env_with_src(OMP_NUM_THREADS="1", SELFREG_CACHE_DIR=os.environ["SELFREG_CACHE_DIR"])
            done = torchrun(nproc, *argv, cwd=self.root, env=env, timeout=500)
        else:
            done = selfreg_in_process(*argv, cwd=self.root)
        shown = shlex.join([*(["torchrun", f"--nproc_per_node={nproc}"] if cmd.launcher else []), "selfreg", *argv])
        assert done.returncode == 0, (f"{cmd.where}: `{cmd.text}` ran as `{shown}` in {self.root} and exited "
                                      f"{done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n"
                                      f"{done.stderr[-3000:]}")
        if cmd.stdout:
            target = self.path(cmd.stdout)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(done.stdout)
        done.shown = shown
        return done

    def prepare(self, cmd: Command, argv: list[str], only: str | None, labels: int, parallel: bool,
                world: int) -> list[str]:
        """Make what the command reads; add its smoke options."""
        args, error = parse(argv)
        assert args is not None, f"{cmd.where}: `{cmd.text}` does not parse: {error}"
        sub = getattr(args, "command", None)
        if sub == "train":
            if args.resume:
                self.ensure_run(args.resume)
                epochs = yaml.safe_load((self.path(args.resume) / "config.yaml").read_text())["train"]["epochs"]
                return argv + [f"train.epochs={epochs + 1}"]
            self.ensure_config(args.config)
            from selfreg.config import load_config

            cfg = load_config(self.path(args.config), args.overrides)
            return argv + smoke_overrides({cfg.model.name}, "img_size" in cfg.model.kwargs, world)
        if sub == "sweep":
            return self.prepare_sweep(args, argv, only, labels, parallel, world)
        if sub == "models" and not args.pretrained and args.pattern in ("*", None):
            # Every model measured takes ~25 s; tests/test_zoo_table.py does it once, for docs/zoo.md.
            return argv + [SMOKE_MODEL_PATTERN]
        if sub == "report":
            self.ensure_sweep_folder(args.folder)
        if sub in ("eval", "predict", "export", "features"):
            self.ensure_checkpoint(args.checkpoint)
        if sub == "eval" and args.data == "folder" and args.root:
            self.ensure_image_tree(args.root, args.checkpoint)
        if sub == "predict":
            for item in args.images:
                self.ensure_image(item, args.checkpoint)
        if sub == "features":
            self.ensure_image(args.image, args.checkpoint)
        if sub == "probe":
            for item in args.items:
                if "=" not in item:
                    self.ensure_checkpoint(item)
            # The runs made here train on two images; the probe's linear fits need more.
            extra = [] if "--max-images" in argv else ["--max-images", "64"]
            return argv + extra + ["data.subset=0"]
        return argv

    def prepare_sweep(self, args, argv, only, labels, parallel, world) -> list[str]:
        from selfreg.sweep import expand

        if getattr(args, "status", None):        # `selfreg sweep --status SWEEP`: reads a sweep folder
            self.ensure_sweep_folder(args.status)
            return argv
        self.ensure_config(args.recipe)
        recipe = self.path(args.recipe)
        smoke = [override(k, v) for k, v in
                 ((yaml.safe_load(recipe.read_text()).get("sweep") or {}).get("smoke") or {}).items()]
        given = [p for p in args.only.split(",") if p] if args.only else None
        plan = expand(recipe, seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else [0],
                      only=[fnmatch_escape(only)] if only else given, overrides=[*args.overrides, *smoke])
        chosen = [only] if only else plan.labels[:labels]
        argv = list(argv)
        if "--only" in argv:
            argv[argv.index("--only") + 1] = ",".join(map(fnmatch_escape, chosen))
        else:
            argv += ["--only", ",".join(map(fnmatch_escape, chosen))]
        if not args.seeds:
            argv += ["--seeds", "0"]
        if not parallel and "--parallel" in argv:
            i = argv.index("--parallel")
            del argv[i:i + 2]
        jobs = [j for j in plan.jobs if j.label in chosen]
        models = {j.config.model.name for j in jobs}
        return argv + smoke + smoke_overrides(models, any("img_size" in j.config.model.kwargs for j in jobs), world)

    # -------------------------------------------------------------- inputs
    def copy_from_repo(self, text: str) -> bool:
        source, target = REPO / text, self.path(text)
        if Path(text).is_absolute() or not source.exists() or target.exists():
            return target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        return True

    def ensure_config(self, text: str) -> None:
        if self.copy_from_repo(text):
            return
        path = self.path(text)
        assert path.name == "config.yaml", f"no recipe {text} (not in the repository, not a run's config)"
        self.ensure_run(str(path.parent))

    def ensure_run(self, run_dir: str) -> None:
        """A finished tiny run of configs/demo.yaml in run_dir, of the model it is named after."""
        path = self.path(run_dir)
        if (path / "checkpoints" / "last.pt").is_file():
            return
        model = model_for(path.name)
        argv = ["train", "configs/demo.yaml", f"train.out_dir={path.parent}", f"train.run_name={path.name}"]
        self.run(parse_command(f"run {run_dir}", shlex.join(["selfreg", *argv]) +
                               (f" model.name={model}" if model else "")))
        assert (path / "checkpoints" / "best.pt").is_file()

    def ensure_checkpoint(self, text: str) -> None:
        path = self.path(text)
        if path.exists() or self.copy_from_repo(text):
            return
        if path.suffix == ".safetensors":      # a weights file exported from its run's checkpoint
            checkpoint = path.with_suffix(".pt")
            self.ensure_checkpoint(str(checkpoint))
            self.run(parse_command(f"export {text}", shlex.join(
                ["selfreg", "export", str(checkpoint), "--format", "safetensors", "-o", str(path)])))
        elif path.parent.name == "checkpoints":
            self.ensure_run(str(path.parent.parent))
        assert path.exists(), f"cannot make the checkpoint {text}"

    def classes_of(self, checkpoint: str) -> list[str]:
        import torch

        path = self.path(checkpoint)
        if path.suffix == ".pt":
            return list(torch.load(path, map_location="cpu", weights_only=True)["classes"])
        return list(json.loads(path.with_suffix(".json").read_text())["classes"])

    def ensure_image(self, text: str, checkpoint: str) -> None:
        path = self.path(text)
        if path.exists() or self.copy_from_repo(text):
            return
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"):
            w.save_image(path, w.random_images(1, (20, 24, 3), 3)[0])
        else:
            self.ensure_image_tree(text, checkpoint)

    def ensure_image_tree(self, text: str, checkpoint: str) -> None:
        """root/{train,test}/<class>/*: an image folder with the checkpoint's classes."""
        root = self.path(text)
        if root.exists():
            return
        classes = self.classes_of(checkpoint)
        for split, n in (("train", 2), ("test", 1)):
            w.write_image_folder(root, classes, per_class=n, size=12, split=split, seed=len(split))

    def ensure_sweep_folder(self, text: str) -> None:
        """A sweep folder: copied from the repository, or made by the documented sweep that writes it."""
        if self.copy_from_repo(text):
            return
        target = self.path(self.expand_home(text)).resolve()
        for cmd in [*DOCUMENTED, *PRIMARY.values()]:
            if cmd.sub == "sweep" and not skip_reason(cmd) and self.sweep_folder(cmd) == target:
                self.run(dataclasses.replace(cmd, launcher=[]), parallel=False)     # in this process
                return
        raise AssertionError(f"no documented `selfreg sweep` writes {text}")

    def sweep_folder(self, cmd: Command) -> Path | None:
        """The folder a `selfreg sweep` command writes (None: it names no recipe, or a broken one)."""
        from selfreg.errors import UserError
        from selfreg.sweep import expand

        try:
            args, _ = parse([self.expand_home(t) for t in cmd.resolved()])
            if args is None or not args.recipe:
                return None
            plan = expand(REPO / args.recipe, overrides=args.overrides, out=args.out)
        except (KeyError, UserError):
            return None
        return self.path(str(plan.root)).resolve()


# ---------------------------------------------------------------------------------------
# The tests

def test_commands_are_found():
    """The collector sees the docs' commands of every kind and every recipe's own command."""
    subs = {c.sub for c in DOCUMENTED}
    assert {"train", "sweep", "report", "models", "eval", "predict", "export", "features", "probe"} <= subs
    assert len(DOCUMENTED) >= 30 and any(c.launcher for c in DOCUMENTED) and any(c.stdout for c in DOCUMENTED)
    assert len({c.key() for c in DOCUMENTED}) == len(DOCUMENTED)
    for path in DOCS:       # every page that shows a command in a code block or inline is read
        if "`selfreg " in path.read_text() or "\nselfreg " in path.read_text():
            assert markdown_commands(path), path
    assert not [p for p in RECIPES if p not in PRIMARY], "a recipe header without its own selfreg command"


def test_mentioned_options_exist():
    """Commands named in prose (`selfreg export --format safetensors`) name real options."""
    wrong = []
    for cmd in MENTIONS:
        options = {o for a in subparser(cmd.sub)._actions for o in a.option_strings}
        wrong += [f"{cmd.where}: {t}" for t in cmd.argv[1:] if t.startswith("-") and t.split("=")[0] not in options]
    assert not wrong


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=marks_for(c), id=command_id(c, DOCUMENTED))
                                 for c in DOCUMENTED])
def test_documented_command_runs(cmd, ws):
    done = ws.run(cmd)
    if cmd.sub == "train" and not cmd.launcher:
        assert "final validation accuracy" in done.stdout, done.stdout[-2000:]


def recipe_params():
    from selfreg.sweep import grid_points

    params = []
    for path in RECIPES:
        rel = str(path.relative_to(REPO))
        spec = (yaml.safe_load(path.read_text()) or {}).get("sweep")
        model = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("name", "")
        points = [(None, {})] if spec is None else grid_points(spec.get("grid") or {}, path)
        for label, overrides in points:
            heavy = heavy_reason(overrides.get("model.name", model))
            marks = [pytest.mark.slow(reason=heavy), pytest.mark.timeout(600)] if heavy else []
            params.append(pytest.param(path, label, False, marks=marks, id=rel + (f"::{label}" if label else "")))
        cmd, first = PRIMARY.get(path), points[0][0]
        if cmd is not None and "--parallel" in cmd.argv:     # the first point as documented: a process a run
            params.append(pytest.param(path, first, True, marks=[pytest.mark.slow, pytest.mark.timeout(600)],
                                       id=rel + (f"::{first}" if first else "") + "::--parallel"))
    return params


@pytest.mark.parametrize("recipe, label, parallel", recipe_params())
def test_recipe_trains_one_step(recipe, label, parallel, ws):
    """Each recipe (each grid point of a sweep) runs its header's command for one step, in its
    own data format, in this process: `--parallel K` (a process a run) only in the slow variant of
    the first grid point, torchrun in its own slow test among the documented commands."""
    cmd = PRIMARY.get(recipe)
    assert cmd is not None, f"{recipe}: the header's # Command: block names no selfreg command for this recipe"
    done = ws.run(dataclasses.replace(cmd, launcher=[]), only=label, parallel=parallel)
    if not parallel:        # one step: one batch of BATCH images (the run logs its split sizes)
        assert f"({BATCH} train / " in done.stdout, done.stdout[-2000:]
    if cmd.sub == "sweep":
        folder = ws.sweep_folder(cmd)
        runs = [folder / label / f"s{s}" for s in (parse(cmd.resolved())[0].seeds or "0").split(",")]
    else:
        runs = [Path(m) for m in re.findall(r"run directory (\S+)$", done.stdout, re.M)]
        runs = [r if r.is_absolute() else ws.root / r for r in runs]
    assert runs, done.stdout[-2000:]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["epochs"] == 1, summary
        rows = (run / "metrics.csv").read_text().splitlines()
        assert len(rows) == 2, rows
