import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Keep each test process to the machine's 2 cores and deterministic CPU math.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=600):
    """Run `python -m selfreg ARGS` and return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", "selfreg", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
