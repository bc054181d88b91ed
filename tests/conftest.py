import os

import pytest
import torch

from procs import REPO, selfreg  # noqa: F401  (REPO is imported from here by the test modules)

# Keep each test process to the machine's 2 cores and deterministic CPU math.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_cli(*args, cwd=None, timeout=300, **kwargs):
    """Run `python -m selfreg ARGS` and return the CompletedProcess (text mode)."""
    return selfreg(*args, cwd=cwd or REPO, timeout=timeout, **kwargs)


@pytest.fixture
def cli():
    return run_cli
