"""Sweeps: a recipe's grid of configurations times seeds, run into one directory.

    selfreg sweep configs/regnet/table3.yaml [--seeds 0,1,2] [--parallel K] [--smoke] [--only A,B]

A sweep recipe is an ordinary training recipe plus a `sweep:` section:

    sweep:
      name: regnet-table3              # folder under train.out_dir (default: the file's stem)
      seeds: [0, 1, 2]                 # default seeds; --seeds replaces them
      grid:                            # the cartesian product of the axes, in order
        data:                          # a mapping: named variants, each a set of overrides
          c10: {data.name: cifar10}
          c100: {data.name: cifar100}
        model.name: [resnet20, rrnet20_gru]   # a list: one variant per value of that key
      smoke: {data.subset: 300, train.epochs: 1}   # overrides of the --smoke variant
      paper:                           # published numbers per label, for `selfreg report`
        metric: test error (%)
        source: Xu et al. 2022, Table III
        values: {c10-resnet20: 8.38, c100-resnet20: 31.72}

A run's label joins its variants' names with "-" (`c10-resnet20`); it trains in
SWEEP/<label>/s<seed>, from the resolved config written first to
SWEEP/configs/<label>-s<seed>.yaml, so one run can be rerun alone with `selfreg train FILE`.
Precedence: recipe < grid < smoke < command-line overrides < seed and run folder.

Starting a sweep again skips finished runs, resumes unfinished ones from their last
checkpoint (exactly, as `selfreg train --resume` does) and starts the others, so a sweep
stopped anywhere finishes with the results an uninterrupted one would have had. A run
folder made from a different config is an error rather than silently mixed in.
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import (Config, changed_keys, flatten, from_dict, load_config, parse_override, read_yaml, refused_change,
                     save_config, set_dotted, use_imports)
from .errors import UserError
from .train.checks import check_config
from .train import distributed as dist_utils
from .train.engine import Interrupted, fit


@dataclass
class Job:
    """One run of a sweep: a grid point and a seed."""
    label: str
    seed: int
    overrides: dict[str, Any]
    config: Config
    dir: Path
    config_path: Path

    @property
    def name(self) -> str:
        return f"{self.label} s{self.seed}"


@dataclass
class Plan:
    """A recipe expanded: where the sweep lives and the runs it holds, in order."""
    name: str
    root: Path
    recipe: Path
    labels: list[str]
    jobs: list[Job]
    paper: dict = field(default_factory=dict)
    smoke: bool = False
    launcher: dict = field(default_factory=dict)   # the recipe's `launcher:` section (selfreg.launch)

    def record(self, command: str) -> dict:
        """What `sweep.yaml` holds: enough for `selfreg report` and for a person to rerun it."""
        return {"name": self.name, "recipe": str(self.recipe), "command": command, "smoke": self.smoke,
                "labels": self.labels, "seeds": sorted({j.seed for j in self.jobs}),
                "runs": [{"label": j.label, "seed": j.seed, "dir": str(j.dir.relative_to(self.root)),
                          "overrides": j.overrides} for j in self.jobs],
                "paper": self.paper}


# ---------------------------------------------------------------------------------------
# Expanding a recipe

def expand(recipe: str | Path, seeds: list[int] | None = None, smoke: bool = False,
           only: list[str] | None = None, overrides: list[str] | tuple[str, ...] = (),
           out: str | Path | None = None, imports: list[str] | tuple[str, ...] = ()) -> Plan:
    """The runs of `recipe`: grid x seeds, each with its validated Config. `imports` (--import):
    modules added to every run's `imports:` (selfreg.plugins)."""
    recipe = Path(recipe)
    raw = read_yaml(recipe)
    spec = raw.pop("sweep", None) or {}
    launcher = raw.pop("launcher", None) or {}      # cluster resources: selfreg.launch
    if not isinstance(spec, dict):
        raise UserError(f"{recipe}: the sweep: section must be a mapping (grid:, seeds:, ...)")
    unknown = set(spec) - {"name", "seeds", "grid", "smoke", "paper"}
    if unknown:
        raise UserError(f"{recipe}: unknown key sweep.{sorted(unknown)[0]}; valid: name, seeds, grid, smoke, paper")
    seeds = list(seeds) if seeds else _seeds(spec.get("seeds", [0]), recipe)
    cli = dict(parse_override(item) for item in overrides)
    smoke_overrides = _mapping(spec.get("smoke"), recipe, "sweep.smoke") if smoke else {}
    if smoke and not smoke_overrides:
        raise UserError(f"{recipe} has no sweep.smoke overrides; add them or run without --smoke")

    name = str(spec.get("name") or recipe.stem) + ("-smoke" if smoke else "")
    base_out = cli.get("train.out_dir", raw.get("train", {}).get("out_dir", "runs"))
    root = Path(out) if out else Path(base_out) / name

    points = grid_points(spec.get("grid") or {}, recipe)
    if only:
        points = [(label, o) for label, o in points if any(fnmatch.fnmatchcase(label, p) for p in only)]
        if not points:
            raise UserError(f"--only {','.join(only)} matches no run of {recipe}; its labels: "
                            f"{', '.join(label for label, _ in grid_points(spec.get('grid') or {}, recipe))}")
    jobs = []
    for label, grid_overrides in points:
        for seed in seeds:
            merged = {**grid_overrides, **smoke_overrides, **cli}
            jobs.append(make_job(raw, label, seed, merged, root, imports))
    paper = spec.get("paper") or {}
    return Plan(name, root, recipe, [label for label, _ in points], jobs, paper, smoke, launcher)


def grid_points(grid: dict, recipe: Path) -> list[tuple[str, dict]]:
    """[(label, {dotted key: value})] for the cartesian product of the grid's axes."""
    if not isinstance(grid, dict):
        raise UserError(f"{recipe}: sweep.grid must map axis names to lists or to named variants")
    axes = []
    for axis, values in grid.items():
        if isinstance(values, dict):        # named variants: {label: {key: value, ...}}
            axes.append([(str(k), _mapping(v, recipe, f"sweep.grid.{axis}.{k}")) for k, v in values.items()])
        elif isinstance(values, list) and values:   # one key, several values
            axes.append([(_value_label(v), {axis: v}) for v in values])
        else:
            raise UserError(f"{recipe}: sweep.grid.{axis} must be a non-empty list or a mapping of variants")
    points = []
    for combo in itertools.product(*axes):
        label = "-".join(part for part, _ in combo) or "run"
        merged: dict = {}
        for _, o in combo:
            merged.update(o)
        points.append((label, merged))
    labels = [label for label, _ in points]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise UserError(f"{recipe}: two grid points share the label {duplicates[0]!r}; name the variants")
    return points


def _value_label(value: Any) -> str:
    # yaml.safe_dump ends a bare scalar with a "..." document marker: keep only the value.
    text = value if isinstance(value, str) else \
        yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return str(text).replace("/", "_").replace(" ", "")


def _seeds(value: Any, recipe: Path) -> list[int]:
    """sweep.seeds: a non-empty list of whole numbers (a bare 3 could mean seed 3 or three seeds)."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise UserError(f"{recipe}: sweep.seeds must be a non-empty list of integers such as [0, 1, 2], got {value!r}")
    return list(value)


def _mapping(value: Any, recipe: Path, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{recipe}: {where} must be a mapping of section.key: value overrides")
    return dict(value)


def make_job(raw: dict, label: str, seed: int, overrides: dict, root: Path,
             imports: list[str] | tuple[str, ...] = ()) -> Job:
    tree = copy.deepcopy(raw)
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    set_dotted(tree, "train.seed", seed)
    set_dotted(tree, "train.out_dir", str(root))
    set_dotted(tree, "train.run_name", f"{label}/s{seed}")
    try:
        config = use_imports(from_dict(Config, tree), imports)   # what registers the names, first
        check_config(config)       # every grid point's names and ranges, before any run starts
    except UserError as exc:
        raise UserError(f"sweep run {label} s{seed}: {exc}") from None
    return Job(label, seed, overrides, config, root / label / f"s{seed}", root / "configs" / f"{label}-s{seed}.yaml")


# ---------------------------------------------------------------------------------------
# The state of a run folder

def job_state(job: Job) -> str:
    """"done", "resume" (a checkpoint to continue from) or "new" (nothing worth keeping)."""
    if not (job.dir / "config.yaml").is_file():
        return "new"
    check_same_config(job)
    if run_finished(job.dir, job.config.train.epochs):
        return "done"
    if (job.dir / "checkpoints" / "last.pt").is_file():
        return "resume"
    return "new"


def run_finished(run_dir: Path, epochs: int) -> bool:
    """Whether the run folder's summary.json reports at least `epochs` epochs."""
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("epochs", 0) >= epochs


def check_same_config(job: Job) -> None:
    """A run folder continues only the experiment it was made for (RESUMABLE_KEYS may differ)."""
    saved = yaml.safe_load((job.dir / "config.yaml").read_text()) or {}
    wanted = job.config.to_dict()
    key = refused_change(saved, wanted)
    if key is not None:
        raise UserError(f"{job.dir} was trained with {key}={flatten(saved).get(key)!r} but the recipe now says "
                        f"{flatten(wanted).get(key)!r}; delete that folder or give the sweep another folder (-o)")


def prepare(job: Job) -> str:
    """Write the job's config file and make its folder ready; return its state.

    A run folder's config.yaml is the run's to write: a resumed run records the job's config
    (more epochs than before are allowed) once its checkpoint is restored."""
    job.config_path.parent.mkdir(parents=True, exist_ok=True)
    save_config(job.config, job.config_path)
    state = job_state(job)
    if state == "new" and job.dir.exists():
        shutil.rmtree(job.dir)          # started but no checkpoint yet: nothing to keep
    (job.dir / "failed.txt").unlink(missing_ok=True)
    return state


def resume_overrides(job: Job) -> list[str]:
    """`selfreg train --resume` overrides that make the run folder's config.yaml the job's config: the
    keys a resume may change (more epochs, ...) and the speed keys the recipe leaves `auto`."""
    saved, wanted = load_config(job.dir / "config.yaml"), job.config
    ours = flatten(wanted.to_dict())
    return [f"{key}={_override_value(ours.get(key))}" for key in changed_keys(saved, wanted)]


def _override_value(value: Any) -> str:
    """`value` as override text that parse_override reads back as `value`."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip()


# ---------------------------------------------------------------------------------------
# Running

class SweepInterrupted(Exception):
    """The sweep was stopped; every run keeps its last checkpoint."""


def run_sweep(plan: Plan, parallel: int = 1, command: str = "", log: Callable[[str], None] = print) -> dict:
    """Run what is not finished; return {"done": n, "ran": n, "failed": [names]}.

    Under torchrun every rank runs the same sweep and each run uses all ranks (DDP); rank 0
    alone writes the sweep's files.
    """

    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    is_main = True
    if dist_utils.launched_by_torchrun():
        if parallel != 1:
            raise UserError("under torchrun each run uses every rank; leave --parallel at 1")
        ctx = dist_utils.setup(plan.jobs[0].config.train.device)
        is_main = ctx.is_main
        states = dist_utils.broadcast_object(ctx, prepare_all(plan, command) if is_main else None)
    else:
        states = prepare_all(plan, command)
    log = log if is_main else (lambda line: None)
    todo = [(job, state) for job, state in zip(plan.jobs, states) if state != "done"]
    done = len(plan.jobs) - len(todo)
    resumed = sum(state == "resume" for _, state in todo)
    log(f"sweep {plan.root}: {len(plan.jobs)} runs ({len(plan.labels)} configurations x "
        f"{len(plan.jobs) // max(1, len(plan.labels))} seeds); {done} finished, {resumed} to resume, "
        f"{len(todo) - resumed} to start" + (f", {parallel} at a time" if parallel > 1 and todo else ""))
    if parallel == 1:
        failed = run_in_process(todo, log, write=is_main)
    else:
        failed = run_subprocesses(todo, parallel, log)
    log(f"sweep {plan.root}: {len(plan.jobs) - len(failed)} of {len(plan.jobs)} runs finished"
        + (f"; failed: {', '.join(failed)} (see failed.txt in their folders)" if failed else "")
        + f"; report with: selfreg report {plan.root}")
    return {"done": done, "ran": len(todo), "failed": failed}


def prepare_all(plan: Plan, command: str) -> list[str]:
    """Record the plan in sweep.yaml and write every run's config; return each job's state, in order."""
    plan.root.mkdir(parents=True, exist_ok=True)
    write_record(plan.root / "sweep.yaml", plan.record(command))
    return [prepare(job) for job in plan.jobs]


def read_sweep_record(folder: str | Path) -> dict:
    """The record (sweep.yaml) of a folder `selfreg sweep` wrote; any other folder is a user error."""
    path = Path(folder) / "sweep.yaml"
    if not path.is_file():
        raise UserError(f"{folder} is not a sweep folder (no sweep.yaml); pass the folder `selfreg sweep` wrote")
    return yaml.safe_load(path.read_text()) or {}


def write_record(path: Path, new: dict) -> None:
    """Merge into an existing sweep.yaml, so that sweeps of parts (--only, more seeds) add up."""
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        runs = {r["dir"]: r for r in old.get("runs", [])}
        runs.update({r["dir"]: r for r in new.get("runs", [])})
        # A hand-edited record may lack labels or commands: take them from what is there.
        labels = list(dict.fromkeys([*old.get("labels", []), *new.get("labels", []),
                                     *(r["label"] for r in runs.values())]))
        order = {label: i for i, label in enumerate(labels)}
        commands = [c for part in (old, new) for c in part.get("commands", [part.get("command")]) if c]
        new = {**new, "labels": labels, "command": commands[-1] if commands else None,
               "commands": list(dict.fromkeys(commands)),
               "seeds": sorted({r["seed"] for r in runs.values()}),
               "runs": sorted(runs.values(), key=lambda r: (order[r["label"]], r["seed"]))}
    path.write_text(yaml.safe_dump(new, sort_keys=False))


def run_in_process(todo: list[tuple[Job, str]], log: Callable[[str], None], write: bool = True) -> list[str]:
    failed = []
    for k, (job, state) in enumerate(todo, 1):
        log(f"[{k}/{len(todo)}] {job.name}: {'resuming' if state == 'resume' else 'starting'} in {job.dir}")
        try:
            fit(job.config, resume=job.dir if state == "resume" else None, log=log)
        except Interrupted as exc:
            raise SweepInterrupted(f"{exc}; continue the sweep by running the same command again") from None
        except UserError as exc:        # e.g. a diverged solver: record it, go on with the others
            if write:               # the run may have failed before it made its folder
                job.dir.mkdir(parents=True, exist_ok=True)
                (job.dir / "failed.txt").write_text(f"{exc}\n")
            log(f"[{k}/{len(todo)}] {job.name} failed: {exc}")
            failed.append(job.name)
    return failed


def run_subprocesses(todo: list[tuple[Job, str]], parallel: int, log: Callable[[str], None]) -> list[str]:
    """Up to `parallel` `selfreg train` processes at once, each logging to SWEEP/logs/."""
    env = dict(os.environ)
    # On a CPU the runs share the cores; on one GPU small models leave most of it idle.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    pending, running, failed = list(todo), {}, []
    total = len(todo)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job, state = pending.pop(0)
                running[start_process(job, state, env)] = job
                log(f"[{total - len(pending)}/{total}] {job.name}: started in {job.dir}")
            for proc, job in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[proc]
                proc.log_file.close()
                if proc.returncode == 130:
                    raise SweepInterrupted(f"{job.name} was interrupted")
                if proc.returncode != 0:
                    last = _last_line(proc.log_path)
                    job.dir.mkdir(parents=True, exist_ok=True)
                    (job.dir / "failed.txt").write_text(f"{last}\n")
                    failed.append(job.name)
                    log(f"{job.name} failed (exit {proc.returncode}): {last}; log {proc.log_path}")
                else:
                    log(f"{job.name}: finished ({_result_line(job)})")
            time.sleep(0.2)
    except (KeyboardInterrupt, SweepInterrupted):
        for proc in running:            # each saves its checkpoint on SIGINT and exits 130
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in running:
            proc.wait()
        raise SweepInterrupted("stopped; runs in progress saved their checkpoints; "
                               "continue the sweep by running the same command again") from None
    return failed


def start_process(job: Job, state: str, env: dict) -> subprocess.Popen:
    args = (["train", "--resume", str(job.dir), *resume_overrides(job)] if state == "resume"
            else ["train", str(job.config_path)])
    log_path = job.config_path.parent.parent / "logs" / f"{job.label}-s{job.seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("a")
    # stdout is a file, so progress comes as plain lines (train.progress=auto).
    proc = subprocess.Popen([sys.executable, "-m", "selfreg", *args], stdout=log_file,
                            stderr=subprocess.STDOUT, env=env)
    proc.log_file, proc.log_path = log_file, log_path
    return proc


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _result_line(job: Job) -> str:
    summary = job.dir / "summary.json"
    if not summary.is_file():
        return "no summary"
    s = json.loads(summary.read_text())
    return f"final val acc {100 * s['final_val_acc']:.2f}%, best {100 * s['best_val_acc']:.2f}%"


def command_line(argv: list[str]) -> str:
    return shlex.join(["selfreg", *argv])
