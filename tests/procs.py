"""Launch subprocesses from tests so that nothing outlives a failed or timed-out test.

Every child starts in a session of its own; when the test fails, times out or is
interrupted, the whole process group is killed (torchrun's workers included, which
otherwise re-parent to init and keep their cores).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env_with_src(**extra: str) -> dict:
    """The environment of a child that imports this checkout's selfreg."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


@contextlib.contextmanager
def spawn(cmd, **kwargs):
    """Popen in a new session; the group is killed when the block is left while it still runs."""
    kwargs.setdefault("cwd", REPO)
    proc = subprocess.Popen(list(map(str, cmd)), start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run(cmd, timeout: float = 300, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured, killing the whole group on timeout or error."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    with spawn(cmd, **kwargs) as proc:
        out, err = proc.communicate(timeout=timeout)   # TimeoutExpired -> spawn kills the group
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def selfreg(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m selfreg ARGS` as a user would run it."""
    return run([sys.executable, "-m", "selfreg", *args], timeout=timeout, **kwargs)


# `python -m selfreg`, except that the process SIGKILLs itself just before writing epoch N's
# checkpoint: a kill at a known point of a real run (polling its files for the moment to kill it
# races runs whose epochs last milliseconds, and the kill could land after the run ended).
_KILLED_BEFORE_CHECKPOINT = """
import os, signal, sys
from selfreg.train import engine
save, kill_at = engine.Run.save, int(sys.argv.pop(1))
def save_or_die(self, best=False):
    if self.epoch >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    save(self, best)
engine.Run.save = save_or_die
from selfreg.cli import entry
raise SystemExit(entry())
"""


def selfreg_killed_before_checkpoint(epoch: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m selfreg ARGS` SIGKILLed as its first run finishes epoch EPOCH, before that
    epoch's checkpoint: what is left is the run at epoch EPOCH - 1, as a kill during EPOCH leaves it."""
    done = run([sys.executable, "-c", _KILLED_BEFORE_CHECKPOINT, str(epoch), *args], timeout=timeout,
               env=env_with_src())
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    return done


def torchrun(nproc: int, *args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m selfreg ARGS`, one thread per rank."""
    kwargs.setdefault("env", env_with_src(OMP_NUM_THREADS="1"))
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "selfreg", *args], timeout=timeout, **kwargs)


def selfreg_in_process(*args, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`selfreg ARGS` through `selfreg.cli.main` in this process, output captured.

    For commands whose test is about what they print and return (errors, listings): the
    model API is already imported here, where a child process would spend seconds importing
    torch. The caller's working directory is restored (the thread count: tests/conftest.py).
    """
    from selfreg.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:            # argparse errors and --version exit
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["selfreg", *map(str, args)], code, out.getvalue(), err.getvalue())
