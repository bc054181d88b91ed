import os

import pytest
import torch

from procs import REPO, selfreg, selfreg_in_process  # noqa: F401  (REPO is imported from here by the test modules)

# Keep each test process to the machine's cores and deterministic CPU math: under
# pytest-xdist (`make test` runs one worker per core) each worker computes on one thread.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)
torch.set_num_threads(THREADS)


def load_script(relative: str, name: str | None = None):
    """A repository script (scripts/x.py, hubconf.py) imported as a module, without sys.path changes."""
    import importlib.util

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args, cwd=None, timeout=300, **kwargs):
    """Run `python -m selfreg ARGS` and return the CompletedProcess (text mode)."""
    return selfreg(*args, cwd=cwd or REPO, timeout=timeout, **kwargs)


@pytest.fixture
def cli():
    """`selfreg ARGS` in this process (see procs.selfreg_in_process); `run_cli` for a real one."""
    return selfreg_in_process


@pytest.fixture(autouse=True)
def _keep_worker_threads():
    """Every test computes on THREADS threads, whatever a test or a module fixture that trained
    in this process (train.threads) set: two workers on two cores with two threads each contend."""
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
    yield
