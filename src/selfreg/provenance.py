"""Provenance: where a run, a checkpoint or a weights file came from.

    record = begin(run_dir, resumed=False, seed=0, world_size=1, device="...",
                   data=data_fingerprint("digits", base, files))   # writes provenance.json
    finish(run_dir, record)                                         # the end time

A run folder holds `provenance.json`: the command line, selfreg's version, the git commit
of selfreg's own source tree and whether it had uncommitted changes (then the diff lies
beside it as `source.patch`: `git apply source.patch` on a clean checkout of that commit
rebuilds the tree that ran), library versions, device, host, start and end time (UTC),
seed, world size and a fingerprint of the data. A resumed run appends a record per resume
to `resumes` and never rewrites the original. The same dict goes into every checkpoint
and into exported weights: it holds only str/int/float/bool/None/list/dict, so
`torch.load(weights_only=True)` and json both take it.

This module sits low (it imports nothing of selfreg's but the version): train/, use/ and
analysis/ all call it. Provenance never stops a run: a failing git call becomes a note.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .version import __version__

FORMAT = "selfreg-provenance/1"
FILE = "provenance.json"
PATCH = "source.patch"
GIT_TIMEOUT = 10            # seconds per git call: a hung network mount must not hang a run
NOT_GIT = "not a git checkout"
# Untracked files go into the patch whole; a forgotten dataset or checkpoint in the tree
# would make every run folder carry a copy, so big or very many ones are left out and named.
MAX_UNTRACKED_BYTES = 5_000_000
MAX_UNTRACKED_FILES = 200
MAX_LISTED = 20
# Variables that would point git at another repository than the one holding our source.
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                 "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_PREFIX")


def now() -> str:
    """ISO 8601 in UTC to the second: comparable across hosts and time zones."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `selfreg train ...` or `python -m selfreg train ...`, not the
    console script's absolute path."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    first = Path(argv[0])
    if first.name == "__main__.py" and first.parent.name == "selfreg":
        head = ["python", "-m", "selfreg"]
    elif first.name == "selfreg":
        head = ["selfreg"]
    else:
        head = [argv[0]]
    return shlex.join(head + argv[1:])


# ---------------------------------------------------------------------------------------
# git

class GitError(Exception):
    """git is missing, timed out or failed; the message is the note we record."""


def _git(args: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> bytes:
    if not cwd.is_dir():
        raise GitError(f"{cwd} is not a folder")
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    # Read-only: `git status` would otherwise refresh (write) the index under a running edit.
    env.update(GIT_OPTIONAL_LOCKS="0", LC_ALL="C", GIT_TERMINAL_PROMPT="0")
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, timeout=GIT_TIMEOUT)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} took over {GIT_TIMEOUT} s") from None
    except OSError as exc:
        raise GitError(f"git could not run ({exc.strerror or exc})") from None
    if proc.returncode not in ok:
        first = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]}: {first[0] if first else f'exit {proc.returncode}'}")
    return proc.stdout


def _text(out: bytes) -> str:
    """git's output as str; names that are not UTF-8 survive the round trip to argv."""
    return out.decode("utf-8", errors="surrogateescape").strip()


def source_dir() -> Path:
    """The folder holding selfreg's own source: the tree whose commit matters, not the cwd."""
    return Path(__file__).resolve().parent


def git_state(where: str | Path | None = None) -> tuple[dict, bytes]:
    """({source, repo, commit, dirty, ...}, patch bytes) of the git tree holding `where`.

    `where` (default: selfreg's source folder) counts as a checkout only when git tracks
    files in it: a package installed into a venv that lies inside some repository is not
    that repository's code. The patch is empty for a clean tree.
    """
    where = Path(where) if where is not None else source_dir()
    try:
        top = Path(_text(_git(["rev-parse", "--show-toplevel"], where)))
        if not _git(["ls-files", "-z", "--", "."], where):
            return {"source": NOT_GIT, "commit": None, "dirty": None,
                    "note": f"{where} is not tracked by the git repository at {top}"}, b""
        commit = _text(_git(["rev-parse", "--verify", "HEAD^{commit}"], top))
    except GitError as exc:
        return {"source": NOT_GIT, "commit": None, "dirty": None, "note": str(exc)}, b""
    state = {"source": "git checkout", "repo": str(top), "commit": commit, "dirty": None}
    try:
        state["dirty"] = bool(_git(["status", "--porcelain", "--untracked-files=all", "-z"], top))
        patch, skipped = source_patch(top) if state["dirty"] else (b"", [])
    except (GitError, OSError) as exc:  # the commit is known; say what is not
        state["note"] = f"uncommitted changes not recorded: {exc}"
        return state, b""
    if skipped:
        state["untracked_skipped"] = skipped[:MAX_LISTED]
        state["note"] = (f"{len(skipped)} untracked file(s) left out of the patch (nested repositories, "
                         f"files over {MAX_UNTRACKED_BYTES:,} bytes, or past the first {MAX_UNTRACKED_FILES})")
    return state, patch


_DIFF = ["diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/"]


def source_patch(top: Path) -> tuple[bytes, list[str]]:
    """The diff from HEAD to the work tree, untracked (not ignored) files as new files.

    Tracked changes (staged or not) come from `git diff HEAD`; each untracked file from
    `git diff --no-index /dev/null FILE`, which leaves the index alone (no `git add -N`).
    Prefixes are forced to a/ b/ so a user's diff.noprefix cannot break `git apply`.
    """
    patch = _git([*_DIFF, "HEAD", "--"], top)
    listed = _git(["ls-files", "--others", "--exclude-standard", "-z"], top)
    names = [n for n in listed.decode("utf-8", errors="surrogateescape").split("\0") if n]
    skipped = []
    for k, name in enumerate(sorted(names)):
        path = top / name
        # A name ending in "/" is a nested repository: git lists it, but cannot diff it as a file.
        too_big = not path.is_symlink() and (not path.is_file() or path.stat().st_size > MAX_UNTRACKED_BYTES)
        if k >= MAX_UNTRACKED_FILES or name.endswith("/") or too_big:
            skipped.append(name)
            continue
        patch += _git([*_DIFF, "--no-index", "--", "/dev/null", name], top, ok=(0, 1))  # 1: they differ
    return patch, skipped


# ---------------------------------------------------------------------------------------
# Libraries, data

def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def versions() -> dict:
    """Python and the libraries that change numbers; CUDA and cuDNN when a GPU is present."""
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": str(torch.__version__)}  # a str subclass
    for dist in ("torchvision", "timm", "numpy"):
        out[dist] = _version(dist)
    gpu = torch.cuda.is_available()
    out["cuda"] = torch.version.cuda if gpu else None
    out["cudnn"] = torch.backends.cudnn.version() if gpu and torch.backends.cudnn.is_available() else None
    return out


def listing(base: Path, files: Iterable[str | Path] | None = None) -> list[tuple[str, int]]:
    """Sorted (path relative to `base`, size) of `files`, or of every file under `base`.

    Relative paths and sizes only: no absolute paths or mtimes, so a copy of the same data
    elsewhere lists the same. Hidden files and folders (.DS_Store, .ipynb_checkpoints) differ
    between machines without being data, so a walk skips them.
    """
    if files is not None:
        return sorted((Path(f).relative_to(base).as_posix(), os.stat(f).st_size) for f in files)
    out = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = os.path.join(folder, name)
                out.append((Path(os.path.relpath(path, base)).as_posix(), os.stat(path).st_size))
    return sorted(out)


def data_fingerprint(dataset: str, base: str | Path, files: Iterable[str | Path] | None = None) -> dict:
    """{dataset, sha256 of the canonical listing, files, bytes}; sha256 None (and a note) when
    the files cannot be listed. `files` None: everything under `base`."""
    base = Path(base)
    try:
        if files is None and not base.is_dir():
            raise FileNotFoundError(f"{base} is not a folder")
        entries = listing(base, files)
    except (OSError, ValueError) as exc:
        return {"dataset": dataset, "sha256": None, "note": f"could not list the data: {exc}"}
    text = "".join(f"{name}\t{size}\n" for name, size in entries)
    return {"dataset": dataset, "sha256": hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(),
            "files": len(entries), "bytes": sum(size for _, size in entries)}


# ---------------------------------------------------------------------------------------
# Records

def session(*, device: str, world_size: int, data: dict, where: str | Path | None = None) -> tuple[dict, bytes]:
    """What one process run (a start or a resume) records, and its source patch."""
    git, patch = git_state(where)
    return {"command": command_line(), "cwd": os.getcwd(), "selfreg_version": __version__, **git,
            "versions": versions(), "device": device, "host": socket.gethostname(),
            "world_size": world_size, "data": data}, patch


def collect(*, seed: int, world_size: int, device: str, data: dict,
            where: str | Path | None = None) -> tuple[dict, bytes]:
    """A new run's record (no patch file name yet) and its source patch."""
    current, patch = session(device=device, world_size=world_size, data=data, where=where)
    return {"format": FORMAT, "started": now(), "ended": None, "seed": seed, **current, "resumes": []}, patch


def append_resume(record: dict, entry: dict) -> tuple[dict, str | None]:
    """`record` with `entry` added to its resumes, and a console line when the source or the
    data differs from the session that wrote the checkpoint being continued (else None)."""
    before = (record.get("resumes") or [record])[-1]
    made = "made from" if before is record else "last continued from"
    record = {**record, "resumes": [*record.get("resumes", []), entry]}
    if "commit" not in before:       # a run from before provenance was recorded
        return record, f"provenance: this run has no record of its origin; recording from now on ({describe(entry)})"
    changes = []
    if source_key(before) != source_key(entry):
        same_commit = before.get("commit") == entry.get("commit") and before.get("dirty") and entry.get("dirty")
        now_text = "other uncommitted changes on that commit" if same_commit else describe(entry)
        changes.append(f"resuming a run {made} {describe(before)} with {now_text}")
    old, new = (before.get("data") or {}).get("sha256"), (entry.get("data") or {}).get("sha256")
    if old != new:
        changes.append(f"its data changed: {short_data(before)} -> {short_data(entry)}")
    return record, ("provenance: " + "; ".join(changes)) if changes else None


def describe(s: dict) -> str:
    """'commit abc1234', 'commit abc1234 (dirty)' or 'selfreg 0.1.0, not a git checkout'."""
    if s.get("commit"):
        return f"commit {s['commit'][:7]}" + (" (dirty)" if s.get("dirty") else "")
    return f"selfreg {s.get('selfreg_version', '?')}, {NOT_GIT}"


def source_key(s: dict) -> str | None:
    """One string per distinct source tree: commit, plus the patch's hash when dirty."""
    if "commit" not in s:
        return None
    if not s.get("commit"):
        return f"{NOT_GIT} (selfreg {s.get('selfreg_version', '?')})"
    dirty = f"+dirty:{(s.get('patch_sha256') or '?')[:6]}" if s.get("dirty") else ""
    return s["commit"][:7] + dirty


def short_data(s: dict) -> str:
    data = s.get("data") or {}
    sha = data.get("sha256")
    return f"{data.get('dataset', '?')}:{sha[:8]}" if sha else f"{data.get('dataset', '?')}:unknown"


def sessions(record: dict) -> list[dict]:
    """The original session and every resume, in order."""
    return [record, *record.get("resumes", [])]


# ---------------------------------------------------------------------------------------
# Files in a run folder (rank 0 only)

def read(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write(run_dir: str | Path, record: dict) -> None:
    """Temp file + rename: a kill mid-write leaves the previous record."""
    path = Path(run_dir) / FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _save_patch(run_dir: Path, name: str, entry: dict, patch: bytes) -> None:
    """The patch beside provenance.json when the tree was dirty; its name and hash in `entry`."""
    path = run_dir / name
    if entry.get("dirty") and patch:
        path.write_bytes(patch)
        entry.update(patch=name, patch_sha256=hashlib.sha256(patch).hexdigest())
    else:
        path.unlink(missing_ok=True)    # a stale file must not pass for this run's diff
        entry.update(patch=None, patch_sha256=None)


def begin(run_dir: str | Path, *, resumed: bool, seed: int, world_size: int, device: str, data: dict,
          log: Callable[[str], None] = print, where: str | Path | None = None) -> dict:
    """Write a new run's provenance.json (+ source.patch), or append this resume to it
    (+ source.resume-N.patch). Returns the whole record, for the checkpoints."""
    run_dir = Path(run_dir)
    old = read(run_dir) if resumed else None
    if resumed and old is None:
        if (run_dir / FILE).exists():   # unreadable: keep it for a person rather than overwrite it
            os.replace(run_dir / FILE, run_dir / (FILE + ".unreadable"))
        old = {"format": FORMAT, "note": "this run began before selfreg recorded provenance (or its "
                                         "provenance.json was unreadable)", "resumes": []}
    if old is None:
        record, patch = collect(seed=seed, world_size=world_size, device=device, data=data, where=where)
        _save_patch(run_dir, PATCH, record, patch)
        record["resumes"] = record.pop("resumes")       # keep the list last in the file
    else:
        entry, patch = session(device=device, world_size=world_size, data=data, where=where)
        entry = {"time": now(), "ended": None, **entry}
        _save_patch(run_dir, f"source.resume-{len(old.get('resumes', [])) + 1}.patch", entry, patch)
        record, message = append_resume(old, entry)
        if message:
            log(message)
    write(run_dir, record)
    # Through json and back: only plain types remain (a str subclass such as torch's
    # TorchVersion would make torch.load(weights_only=True) refuse the checkpoint).
    return json.loads(json.dumps(record))


def finish(run_dir: str | Path, record: dict) -> dict:
    """Stamp the end time on the current session (the last resume, else the original)."""
    if record:
        sessions(record)[-1]["ended"] = now()
        write(run_dir, record)
    return record


# ---------------------------------------------------------------------------------------
# Over many runs (selfreg report)

def run_source(record: dict | None) -> str:
    """A run's source for a table: 'abc1234', 'abc1234 dirty', 'abc1234 -> def5678', '-'."""
    if not record:
        return "-"
    parts = []
    for s in sessions(record):
        if "commit" in s:
            text = s["commit"][:7] + (" dirty" if s.get("dirty") else "") if s.get("commit") else "not git"
            if not parts or parts[-1] != text:
                parts.append(text)
    return " -> ".join(parts) or "-"


def run_data(record: dict | None) -> str:
    if not record:
        return "-"
    shas = list(dict.fromkeys((s.get("data") or {}).get("sha256") for s in sessions(record) if "data" in s))
    return " -> ".join(sha[:8] if sha else "unknown" for sha in shas) or "-"


def consistency_warnings(records: list[dict | None], agreement: list[dict] | None = None) -> list[str]:
    """Lines for the top of a report when its runs differ in source tree, ran dirty, or
    read different data under one dataset name. Empty when they all agree. `agreement`: the
    checks of a commits_agree.json beside the runs (read_agreement), cited under the warning."""
    known = [r for r in records if r]
    lines = []
    missing = len(records) - len(known)
    trees: dict[str, int] = {}
    for r in known:
        for key in dict.fromkeys(source_key(s) for s in sessions(r)):
            if key is not None:
                trees[key] = trees.get(key, 0) + 1
    if len(trees) > 1:
        lines.append(f"**Warning**: these runs come from {len(trees)} different source trees: "
                     + ", ".join(f"{k} ({_runs(n)})" for k, n in trees.items())
                     + "; differences between them may come from the code, not the configuration "
                     "(scripts/commits_agree.py in a selfreg checkout measures whether two commits train the "
                     "same run).")
        lines += agreement_lines(list(trees), agreement or [])
    dirty = sum(any(s.get("dirty") for s in sessions(r)) for r in known)
    if dirty:
        lines.append(f"**Warning**: {_runs(dirty)} of {len(records)} ran from a source tree with uncommitted "
                     "changes (dirty); each run folder keeps its diff as source.patch (source.resume-N.patch).")
    # Different datasets are expected to differ: compare fingerprints within one dataset name.
    by_dataset: dict[str, dict[str, int]] = {}
    for r in known:
        seen = {((s.get("data") or {}).get("dataset", "?"), (s.get("data") or {}).get("sha256"))
                for s in sessions(r)}
        for dataset, sha in seen:
            if sha:
                shas = by_dataset.setdefault(dataset, {})
                shas[sha[:8]] = shas.get(sha[:8], 0) + 1
    for dataset, shas in by_dataset.items():
        if len(shas) > 1:
            lines.append(f"**Warning**: the runs on {dataset} read different data (fingerprints "
                         + ", ".join(f"{k} ({_runs(n)})" for k, n in shas.items()) + ").")
    if missing:
        lines.append(f"{_runs(missing)} of {len(records)} have no provenance.json (made before selfreg "
                     "recorded it): their source and data are unknown.")
    return lines


# ---------------------------------------------------------------------------------------
# Whether two commits train the same run: the record scripts/commits_agree.py keeps

AGREEMENT_FILE = "commits_agree.json"
AGREEMENT_FORMAT = "selfreg-commits-agree/1"


def check_key(check: dict) -> tuple:
    """What one check measured: the same key means a newer measurement of the same thing."""
    return (check["reference"], check["commit"], check["model"], check["recipe"], tuple(check["overrides"]))


def record_agreement(folder: str | Path, checks: list[dict]) -> Path:
    """Add checks ({reference, commit, model, recipe, overrides, identical, differing, device,
    torch, date}) to `folder/commits_agree.json`; a check of the same thing replaces the older one."""
    path = check_agreement_file(folder)
    kept = {check_key(c): c for c in read_agreement(folder)}
    kept.update({check_key(c): c for c in checks})
    path.write_text(json.dumps({"format": AGREEMENT_FORMAT, "checks": list(kept.values())}, indent=1) + "\n")
    return path


def _agreement_record(folder: str | Path) -> list[dict] | None:
    """The checks of folder/commits_agree.json: [] when there is none, None when the file is not one."""
    path = Path(folder) / AGREEMENT_FILE
    if not path.exists():
        return []
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != AGREEMENT_FORMAT:
        return None
    keys = {"reference", "commit", "model", "recipe", "overrides", "identical"}
    return [c for c in record.get("checks", []) if isinstance(c, dict) and keys <= set(c)]


def check_agreement_file(folder: str | Path) -> Path:
    """folder/commits_agree.json, after making sure that adding to it loses nothing: the folder
    exists, and the file is absent or a record of this format (ValueError, one line, otherwise)."""
    path = Path(folder) / AGREEMENT_FILE
    if not Path(folder).is_dir():
        raise ValueError(f"{folder}: no such folder; give an existing results folder")
    if _agreement_record(folder) is None:
        raise ValueError(f"{path} exists and is not a commits_agree record; move it aside, or record elsewhere")
    return path


def read_agreement(folder: str | Path) -> list[dict]:
    """The checks of `folder/commits_agree.json`; [] when there is none or it is not one."""
    return _agreement_record(folder) or []


def agreement_lines(trees: list[str], checks: list[dict]) -> list[str]:
    """For a report's source trees (source_key strings), what the recorded checks measured:
    per reference commit and recipe piece, which trees train its run bit for bit, which do not,
    and which were not checked (a dirty tree never is: its commit is not what ran)."""
    def tree_of(commit: str) -> str | None:
        return next((t for t in trees if "+" not in t and commit.startswith(t)), None)

    lines = []
    pieces: dict[tuple, list[dict]] = {}
    for check in checks:
        pieces.setdefault((check["reference"], check["recipe"], tuple(check["overrides"])), []).append(check)
    for (reference, recipe, overrides), group in pieces.items():
        if tree_of(reference) is None:
            continue            # a check against a commit none of these runs came from
        same, differ = [], []
        for tree in trees:
            mine = [c for c in group if tree_of(c["commit"]) == tree]
            if tree_of(reference) == tree:
                same.append(tree)
            elif mine:
                (same if all(c["identical"] for c in mine) else differ).append(tree)
        unchecked = [t for t in trees if t not in same and t not in differ]
        models = ", ".join(dict.fromkeys(c["model"] for c in group))
        where = "; ".join(dict.fromkeys(f"{c.get('device', '?')}, torch {c.get('torch', '?')}, {c.get('date', '?')}"
                                        for c in group))
        text = (f"**Measured** ({AGREEMENT_FILE}, by scripts/commits_agree.py: {models} trained on `{recipe} "
                f"{' '.join(overrides)}` with each commit's own code; {where}): "
                + (f"all {len(trees)} source trees train the same run as {reference[:7]}, bit for bit"
                   if len(same) == len(trees) else
                   f"{len(same)} of these {len(trees)} source trees train the same run as {reference[:7]}, bit for "
                   f"bit ({', '.join(same)})"))
        if differ:
            text += f"; {len(differ)} train another ({', '.join(differ)})"
        if unchecked:
            text += f"; not checked: {', '.join(unchecked)}"
        lines.append(text + ".")
    return lines


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")
