"""Runs on a cluster: `selfreg sweep RECIPE --launcher slurm` and `selfreg train RECIPE --launcher slurm`.

    selfreg sweep configs/regnet/table3.yaml data.root=DATA --launcher slurm --partition gpu --gpus 1 --time 720
    selfreg sweep --status runs/regnet-table3          # one line per run
    selfreg sweep configs/regnet/table3.yaml ... --launcher slurm   # again: resubmits failed/lost runs only

Every grid point x seed of a sweep becomes one job of a SLURM job array (at most `max_running`
at once), submitted through submitit (the field's standard tool: Hydra's launcher, fairseq,
DINO); `--launcher local` sends the same jobs to submitit's local executor (the same code path
without SLURM). A job trains exactly what `selfreg sweep` would in-process: the run's config
file in SWEEP/configs/, its folder SWEEP/<label>/s<seed>, so a finished sweep folder is the same
whichever way it ran and `selfreg report` reads it unchanged.

Preemption and time limits: exact resume makes them harmless. SLURM's warning signal (USR2,
`signal_delay_s` before the time limit) or SIGTERM (preemption, `scancel --signal=TERM`) stops
training between two steps; the run writes its checkpoint (engine.StopFlag) and the job asks
SLURM to requeue it (`scontrol requeue`); the requeued job finds the checkpoint and continues
exactly. Each job keeps a record, SWEEP/jobs/<label>-s<seed>.json (launcher, job id, starts,
state, error), which `--status` reads together with the scheduler's queue.

Resources come from the recipe's optional `launcher:` section, then the command line's flags:

    launcher:
      partition: gpu          # sbatch --partition
      time: 720               # minutes per job (--time); the job requeues itself before it
      gpus: 1                 # GPUs per job; more than 1 runs DistributedDataParallel over them
      tasks: 2                # processes per job (default: one per GPU); more than 1 runs DDP
      cpus: 8                 # CPUs per task
      mem_gb: 32
      account: myproject
      qos: normal
      constraint: a100
      max_running: 8          # jobs of the array that run at once
      signal_delay_s: 120     # warning signal this long before the time limit
      sbatch: {mail-type: END}   # any other sbatch option
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .sweep import (Job, Plan, SweepInterrupted, job_state, prepare, prepare_all, read_sweep_record,
                    run_finished)

LAUNCHERS = ("slurm", "local")
# States of a job record that mean "the scheduler still has it": never submitted twice.
LIVE = {"submitted", "running", "requeued"}


@dataclass
class Resources:
    """A job's resources: the recipe's `launcher:` section, overridden by command-line flags."""
    partition: str | None = None
    time: int = 24 * 60                 # minutes
    gpus: int = 0
    tasks: int | None = None            # processes per job (default: one per GPU, at least one)
    cpus: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_running: int = 64
    signal_delay_s: int = 90
    sbatch: dict = field(default_factory=dict)

    @classmethod
    def from_sources(cls, section: dict | None, flags: dict[str, Any], where: str = "launcher") -> "Resources":
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise UserError(f"unknown key {where}.{unknown[0]}; valid: {', '.join(sorted(known))}")
        merged = {**section, **{k: v for k, v in flags.items() if v is not None}}
        res = cls(**merged)
        if res.tasks is not None and (not isinstance(res.tasks, int) or res.tasks < 1):
            raise UserError(f"{where}.tasks must be a positive integer, got {res.tasks!r}")
        for name in ("time", "gpus", "max_running", "signal_delay_s"):
            value = getattr(res, name)
            if not isinstance(value, int) or value < (0 if name == "gpus" else 1):
                raise UserError(f"{where}.{name} must be a {'non-negative' if name == 'gpus' else 'positive'} "
                                f"integer, got {value!r}")
        if not isinstance(res.sbatch, dict):
            raise UserError(f"{where}.sbatch must map sbatch options to values, e.g. {{mail-type: END}}")
        return res


# ---------------------------------------------------------------------------------------
# Job records: SWEEP/jobs/<label>-s<seed>.json

def record_path(job: Job) -> Path:
    return job.config_path.parent.parent / "jobs" / f"{job.label.replace('/', '_')}-s{job.seed}.json"


def read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_record(path: Path, **changes: Any) -> dict:
    """Update a job record atomically (a requeued job and `--status` may read it at any time)."""
    record = {**read_record(path), **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return record


# ---------------------------------------------------------------------------------------
# What runs inside a job

@dataclass
class TrainJob:
    """One run, as submitit calls it on a node (pickled by submitit: plain fields only)."""
    label: str
    seed: int
    config_path: str
    run_dir: str
    launcher: str

    def job(self) -> Job:
        from .config import load_config

        cfg = load_config(self.config_path)
        return Job(self.label, self.seed, {}, cfg, Path(self.run_dir), Path(self.config_path))

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:            # GPUs per job > 1: one task per GPU, DDP as under torchrun
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        job, record = self.job(), None
        if env.global_rank == 0:
            old = read_record(record_path(job))
            record = write_record(record_path(job), state="running", job_id=str(env.job_id),
                                  starts=int(old.get("starts", 0)) + 1, host=env.hostname, error=None)
        # SLURM's warning signal before the time limit stops the run like SIGTERM does.
        signal.signal(signal.SIGUSR2, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        return self._train(job, env, record)

    def _train(self, job: Job, env, record: dict | None) -> str:
        from .train.engine import Interrupted, fit

        state = job_state(job)
        if state == "done":
            if record is not None:
                write_record(record_path(job), state="finished")
            return "finished"
        try:
            fit(job.config, resume=job.dir if state == "resume" else None)
        except Interrupted as exc:
            if record is not None:
                write_record(record_path(job), state="requeued", error=None)
                requeue(self.launcher, str(env.job_id), str(exc))
            raise SystemExit(-1) from None   # as submitit does on requeue: no result is written
        except UserError as exc:
            if record is not None:
                job.dir.mkdir(parents=True, exist_ok=True)
                (job.dir / "failed.txt").write_text(f"{exc}\n")
                write_record(record_path(job), state="failed", error=str(exc))
            raise
        except BaseException as exc:
            if record is not None:
                write_record(record_path(job), state="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        if record is not None:
            write_record(record_path(job), state="finished", error=None)
        return "finished"

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue hook (its USR2 handler): the same job again; the run resumes itself."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def requeue(launcher: str, job_id: str, why: str) -> None:
    """Put this SLURM job back in the queue (the local executor has no queue: rerun the command)."""
    print(f"selfreg: {why}", file=sys.stderr, flush=True)
    if launcher != "slurm":
        return
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if done.returncode != 0:   # e.g. SLURM is requeuing it already (scontrol requeue from outside)
        print(f"selfreg: scontrol requeue {job_id}: {done.stderr.strip()}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Submitting

def check_launcher(kind: str) -> None:
    if kind not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)} (or left out to run here), got {kind!r}")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError("--launcher needs submitit: pip install 'selfreg[cluster]'") from None
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch not found on this machine; run from a SLURM login node "
                        "(or try --launcher local)")


def make_executor(kind: str, folder: Path, res: Resources, name: str, count: int):
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=kind)
    tasks = res.tasks or max(1, res.gpus)
    executor.update_parameters(name=name, timeout_min=res.time, gpus_per_node=res.gpus or None,
                               tasks_per_node=tasks, cpus_per_task=res.cpus, mem_gb=res.mem_gb, nodes=1)
    if kind == "slurm":
        executor.update_parameters(
            slurm_partition=res.partition, slurm_account=res.account, slurm_qos=res.qos,
            slurm_constraint=res.constraint, slurm_signal_delay_s=res.signal_delay_s,
            slurm_array_parallelism=min(res.max_running, max(1, count)),
            slurm_additional_parameters={"requeue": True, **res.sbatch})
    return executor


def submit(plan: Plan, kind: str, res: Resources, command: str = "", log: Callable[[str], None] = print,
           wait: bool = False, sweep: bool = True) -> dict:
    """Submit every unfinished run of `plan` that the scheduler does not hold already.

    `sweep=False` (one `selfreg train` run): no sweep.yaml is written beside it."""
    check_launcher(kind)
    states = prepare_all(plan, command) if sweep else [prepare(job) for job in plan.jobs]
    todo, skipped = [], []
    for job, state in zip(plan.jobs, states):
        if state == "done":
            continue
        record = read_record(record_path(job))
        live = scheduler_state(record)
        if live is not None:
            skipped.append(f"{job.name} ({live}, job {record['job_id']})")
            continue
        todo.append(job)
    done = sum(s == "done" for s in states)
    log(f"sweep {plan.root}: {len(plan.jobs)} runs; {done} finished, {len(skipped)} queued or running, "
        f"{len(todo)} to submit ({kind})")
    for line in skipped:
        log(f"  left alone: {line}")
    if not todo:
        return {"submitted": [], "done": done}
    executor = make_executor(kind, plan.root / "launcher", res, plan.name, len(todo))
    fns = [TrainJob(j.label, j.seed, str(j.config_path), str(j.dir), kind) for j in todo]
    submitted = executor.submit_array(fns)
    for job, sub in zip(todo, submitted):
        old = read_record(record_path(job))
        write_record(record_path(job), launcher=kind, job_id=str(sub.job_id), state="submitted",
                     submitted=time.time(), starts=int(old.get("starts", 0)), error=None,
                     log=str(plan.root / "launcher" / str(sub.job_id)))
        log(f"  {job.name}: job {sub.job_id}")
    log(f"status: selfreg sweep --status {plan.root}")
    if wait:
        wait_for(plan, [j for j in todo], log)
    return {"submitted": [s.job_id for s in submitted], "done": done}


def wait_for(plan: Plan, jobs: list[Job], log: Callable[[str], None], poll: float = 1.0) -> None:
    """Until every job has finished or failed (a requeued one is waited for again)."""
    pending = list(jobs)
    try:
        while pending:
            time.sleep(poll)
            for job in list(pending):
                record = read_record(record_path(job))
                if record.get("state") in ("finished", "failed") or (
                        record.get("state") in LIVE and scheduler_state(record) is None
                        and record.get("state") != "submitted"):
                    pending.remove(job)
                    log(status_line(job))
    except KeyboardInterrupt:
        raise SweepInterrupted("stopped waiting; the jobs go on (selfreg sweep --status DIR)") from None


# ---------------------------------------------------------------------------------------
# The scheduler's view

def scheduler_state(record: dict) -> str | None:
    """"queued" / "running" while the scheduler holds the record's job, else None."""
    job_id, kind = record.get("job_id"), record.get("launcher")
    if not job_id or record.get("state") not in LIVE:
        return None
    if kind == "slurm":
        return slurm_state(job_id)
    if kind == "local":
        return local_state(record)
    return None


def slurm_state(job_id: str) -> str | None:
    if shutil.which("squeue") is None:
        return None
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    states = {s.strip() for s in done.stdout.split()} if done.returncode == 0 else set()
    if not states:
        return None
    if states & {"RUNNING", "COMPLETING", "CONFIGURING", "STOPPED", "SUSPENDED"}:
        return "running"
    return "queued"


def local_state(record: dict) -> str | None:
    """submitit's local jobs are processes of this machine, their job id is the pid."""
    try:
        pid = int(str(record["job_id"]).split("_")[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError, KeyError):
        return None
    try:   # a zombie (finished, not yet reaped) is not running
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return None
    except (OSError, IndexError):
        pass
    return "running"


# ---------------------------------------------------------------------------------------
# --status

def status_line(job: Job) -> str:
    """One line: label, seed, state (finished / failed with its error / queued / running / requeued
    N times / lost / started, not finished / not started), and the SLURM job id where there is one."""
    record = read_record(record_path(job))
    starts = int(record.get("starts", 0))
    # A requeued job has not started again yet: each start after the first was a requeue.
    count = starts if record.get("state") == "requeued" else starts - 1
    requeues = f", requeued {count}x" if count > 0 else ""
    where = f" (job {record['job_id']}{requeues})" if record.get("job_id") else ""
    if run_finished(job.dir, job.config.train.epochs):
        s = json.loads((job.dir / "summary.json").read_text())
        return f"{job.name}: finished, final val acc {100 * s['final_val_acc']:.2f}% ({s['epochs']} epochs){where}"
    failed = job.dir / "failed.txt"
    if record.get("state") == "failed" or failed.is_file():
        error = record.get("error") or (failed.read_text().strip() if failed.is_file() else "no error recorded")
        return f"{job.name}: failed: {error.splitlines()[0] if error else ''}{where}"
    live = scheduler_state(record)
    if live is not None:
        return f"{job.name}: {live}{where}{progress(job)}"
    if record.get("job_id"):
        return f"{job.name}: lost (not in the queue, not finished){where}{progress(job)}; run the sweep again"
    if (job.dir / "metrics.csv").is_file() or (job.dir / "checkpoints" / "last.pt").is_file():
        # Run here, not through a launcher: nothing records whether its process still runs.
        return f"{job.name}: started, not finished{progress(job)} (running, or resumed by the sweep's command)"
    return f"{job.name}: not started"


def progress(job: Job) -> str:
    metrics = job.dir / "metrics.csv"
    if not metrics.is_file():
        return ""
    epochs = max(0, len(metrics.read_text().splitlines()) - 1)
    return f", epoch {epochs}/{job.config.train.epochs}"


def status(plan: Plan, log: Callable[[str], None] = print) -> list[str]:
    lines = [status_line(job) for job in plan.jobs]
    for line in lines:
        log(line)
    return lines


def plan_from_folder(folder: str | Path, expand_fn) -> Plan:
    """The plan a sweep folder records (sweep.yaml: recipe, runs, overrides), for --status."""
    folder = Path(folder)
    record = read_sweep_record(folder)
    jobs = []
    for run in record.get("runs", []):
        config_path = folder / "configs" / f"{run['label']}-s{run['seed']}.yaml"
        if not config_path.is_file():
            continue
        from .config import load_config

        cfg = load_config(config_path)
        jobs.append(Job(run["label"], int(run["seed"]), run.get("overrides") or {}, cfg,
                        folder / run["dir"], config_path))
    return Plan(str(record.get("name", folder.name)), folder, Path(record.get("recipe", "")),
                list(record.get("labels", [])), jobs, record.get("paper") or {}, bool(record.get("smoke")))


def single_run_plan(cfg, recipe: str | Path, launcher: dict | None = None) -> Plan:
    """`selfreg train RECIPE --launcher ...`: one run as a one-job plan, in out_dir/run_name
    (its config in out_dir/configs/, its job record in out_dir/jobs/, as a sweep's)."""
    from .train.engine import run_name

    name = run_name(cfg)
    root = Path(cfg.train.out_dir)
    label = name.replace("/", "_")
    job = Job(label, cfg.train.seed, {}, cfg, root / name, root / "configs" / f"{label}-s{cfg.train.seed}.yaml")
    return Plan(label, root, Path(recipe), [label], [job], launcher=dict(launcher or {}))
