"""User-facing errors: the CLI prints them as one line and exits with code 2."""
from __future__ import annotations

import errno
import tempfile
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user asked for (bad path, unknown name, bad config).

    The message must say what is wrong and what to do, on one line.
    """


def check_writable(folder: str | Path, fix: str) -> None:
    """Fail in one line, before any work is done, when `folder` cannot be created or written.

    Tries a temporary file in `folder` or, when it does not exist yet, in its nearest existing
    parent (nothing is left behind either way). `fix` ends the message: the option to change,
    e.g. "choose another -o or fix its permissions".
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write under {folder}: {probe} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = "no space left" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
            (exc.strerror or type(exc).__name__).lower()
        raise UserError(f"cannot write under {folder} ({reason} on {probe}); {fix}") from None


def output_folder(folder: str | Path, fix: str) -> Path:
    """`folder`, created with its parents; one line naming `fix` when that cannot be done."""
    check_writable(folder, fix)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
