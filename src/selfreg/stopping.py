"""SIGINT in a `selfreg` process: the first one stops it, the ones after it are ignored.

A run can get SIGINT twice: a terminal's Ctrl-C (or `kill -INT -PGID`) reaches every process
of a `selfreg sweep --parallel K`, and the sweep passes one on to each run it started (a signal
sent to the sweep alone reaches none of them). The first one saves the checkpoint (the engine's
StopFlag) or, outside training, ends the command; a second one must not cut the run's ending
short nor end the process with a traceback.

`cli.entry` installs `first_stops` for the command's whole life; the engine's StopFlag marks
the stop it handled (`note_stop`), after which `first_stops` ignores the rest, and the command
ends deaf to SIGINT (`ignore_if_stopping`). A program that calls selfreg's API keeps its own
SIGINT handler: neither is installed there.
"""
from __future__ import annotations

import signal

_stopping = False


def note_stop() -> None:
    """A SIGINT/SIGTERM has been handled: the process is on its way out."""
    global _stopping
    _stopping = True


def first_stops(signum, frame) -> None:
    """The SIGINT handler of a selfreg command: KeyboardInterrupt once, then nothing."""
    if _stopping:
        return
    note_stop()
    raise KeyboardInterrupt


def ignore_if_stopping() -> None:
    """On the way out of a stopped command, ignore SIGINT where the OS delivers it: Python puts back
    the default action of the signals it handles when the interpreter ends, and a SIGINT landing then
    would kill the process (exit -2) after all."""
    if _stopping:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
