"""Carry a sweep's unfinished runs from one machine to the next, as one archive.

    python scripts/carry_sweep.py save SWEEP carry/table3-paper-c10.tar.xz
    python scripts/carry_sweep.py restore carry/table3-paper-c10.tar.xz SWEEP

A standing experiment outlives the machine it started on: this project's machines are lent a
session at a time, and a new one starts with an empty home folder, where the sweep's run folders
lived. `save` packs every unfinished run folder of SWEEP (its checkpoints, metrics, provenance
and log: all that exact resume needs), with the sweep's record, into one xz tar archive that can
be committed; `restore` unpacks it into SWEEP on the next machine, and the same `selfreg sweep`
command then resumes each run where its last checkpoint left it, as if nothing had moved.

Finished runs are not packed (publish them: scripts/publish_runs.py). `restore` never goes back
in time: a run folder already in SWEEP at the same or a later epoch is kept as it is. Restore to
the path the sweep was saved from, with the data at the same data.root: a run resumes only the
configuration it was made with.
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import shutil
import socket
import sys
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from selfreg.errors import UserError, output_folder  # noqa: E402
from selfreg.sweep import read_sweep_record, run_finished, write_record  # noqa: E402
from selfreg.weightfiles import current_umask, load_checkpoint  # noqa: E402

MANIFEST = "carry.json"


# ---------------------------------------------------------------------------------------
# Where a run stands

def checkpoint_position(run_dir: Path) -> tuple[int, int]:
    """(epochs done, batches done of the next) where the run's last checkpoint resumes; (0, 0)
    when it has none. A checkpoint written on Ctrl-C mid-epoch has batches > 0."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return 0, 0
    state = load_checkpoint(last)
    return int(state["epoch"]), int((state.get("progress") or {}).get("batches", 0))


def position_text(run: dict) -> str:
    batches = f" + {run['batches']} batches" if run["batches"] else ""
    return f"epoch {run['epoch']}{batches} of {run['epochs']}"


def planned_epochs(run_dir: Path) -> int:
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return int(config.get("train", {}).get("epochs", 0))


def is_finished(run_dir: Path) -> bool:
    """Finished by the run's own config.yaml (what it was last resumed to train)."""
    return run_finished(run_dir, planned_epochs(run_dir))


def log_path(sweep: Path, run: dict) -> Path:
    """The run's output when the sweep ran it in a subprocess (--parallel)."""
    return sweep / "logs" / f"{run['label']}-s{run['seed']}.log"


# ---------------------------------------------------------------------------------------
# save

def save(sweep: Path, archive: Path, log=print) -> list[dict]:
    """Pack SWEEP's unfinished runs into ARCHIVE (replaced atomically); return what was packed."""
    record = read_sweep_record(sweep)
    carried = []
    for run in record.get("runs", []):
        run_dir = sweep / run["dir"]
        if not (run_dir / "config.yaml").is_file():
            continue                                    # never started here
        if is_finished(run_dir):
            log(f"{run['dir']}: finished, not carried (publish it)")
            continue
        epoch, batches = checkpoint_position(run_dir)
        if (epoch, batches) == (0, 0):
            log(f"{run['dir']}: no checkpoint yet, nothing to carry")
            continue
        carried.append({**run, "epoch": epoch, "batches": batches, "epochs": planned_epochs(run_dir)})
    if not carried:
        raise UserError(f"{sweep} has no unfinished run with a checkpoint; nothing to carry")
    manifest = {"sweep": record.get("name"), "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": socket.gethostname(), "runs": carried}
    output_folder(archive.parent, "choose another archive path or fix its permissions")
    fd, tmp = tempfile.mkstemp(prefix=archive.name + ".", suffix=".tmp", dir=archive.parent)
    os.fchmod(fd, 0o666 & ~current_umask())          # mkstemp's 0600: the archive is a file to share
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:xz") as tar:
            add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
            tar.add(sweep / "sweep.yaml", "sweep.yaml")
            for run in carried:
                tar.add(sweep / run["dir"], run["dir"], filter=skip_temp_files)
                if log_path(sweep, run).is_file():
                    tar.add(log_path(sweep, run), str(log_path(sweep, run).relative_to(sweep)))
        os.replace(tmp, archive)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for run in carried:
        log(f"{run['dir']}: carried at {position_text(run)}")
    log(f"{archive}: {archive.stat().st_size / 1e6:.1f} MB")
    return carried


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(datetime.now().timestamp()), 0o644
    tar.addfile(info, io.BytesIO(data))


def skip_temp_files(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """A checkpoint being written when the archive is made is a temp file: the finished one is packed."""
    return None if info.name.endswith(".tmp") else info


# ---------------------------------------------------------------------------------------
# restore

def restore(archive: Path, sweep: Path, log=print) -> list[dict]:
    """Unpack ARCHIVE's runs into SWEEP where SWEEP holds nothing newer; return those restored."""
    if not archive.is_file():
        raise UserError(f"no archive at {archive}; pass the file `carry_sweep.py save` wrote")
    try:
        with tarfile.open(archive, "r:*") as tar:
            manifest = json.loads(tar.extractfile(MANIFEST).read())
            check_same_sweep(sweep, manifest)
            restored = [run for run in manifest["runs"] if newer_than_there(run, sweep, manifest, log)]
            for run in restored:
                shutil.rmtree(sweep / run["dir"], ignore_errors=True)
                wanted = (run["dir"], str(log_path(Path(), run)))
                members = [m for m in tar.getmembers() if m.name == wanted[1] or m.name == wanted[0]
                           or m.name.startswith(wanted[0] + "/")]
                tar.extractall(sweep, members=members, filter="data")
                log(f"{run['dir']}: restored at {position_text(run)} "
                    f"(saved {manifest['saved']} on {manifest['host']})")
            record = yaml.safe_load(tar.extractfile("sweep.yaml").read()) or {}
    except (tarfile.TarError, lzma.LZMAError, EOFError, KeyError, json.JSONDecodeError):
        raise UserError(f"{archive} is not a readable carry archive (damaged, truncated, or another "
                        "file); save it again from the machine that ran the sweep") from None
    write_record(output_folder(sweep, "choose another sweep folder or fix its permissions") / "sweep.yaml", record)
    return restored


def check_same_sweep(sweep: Path, manifest: dict) -> None:
    here = sweep / "sweep.yaml"
    name = (yaml.safe_load(here.read_text()) or {}).get("name") if here.is_file() else None
    if name is not None and name != manifest["sweep"]:
        raise UserError(f"{sweep} holds the sweep {name!r}, the archive {manifest['sweep']!r}; "
                        "restore into that sweep's own folder")


def newer_than_there(run: dict, sweep: Path, manifest: dict, log) -> bool:
    """Whether the archived run is further on than the folder SWEEP already has for it."""
    there = sweep / run["dir"]
    if not (there / "config.yaml").is_file():
        return True
    if is_finished(there):
        log(f"{run['dir']}: finished here, kept")
        return False
    try:
        here = checkpoint_position(there)
    except UserError as exc:
        log(f"{run['dir']}: {exc}; replacing it with the archived run")
        return True
    if here >= (run["epoch"], run["batches"]):
        log(f"{run['dir']}: as far or further on here ({position_text({**run, 'epoch': here[0], 'batches': here[1]})}) "
            f"than the archive ({position_text(run)}): kept")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("save", help="pack SWEEP's unfinished runs into ARCHIVE")
    s.add_argument("sweep", type=Path)
    s.add_argument("archive", type=Path)
    r = sub.add_parser("restore", help="unpack ARCHIVE into SWEEP where SWEEP has nothing newer")
    r.add_argument("archive", type=Path)
    r.add_argument("sweep", type=Path)
    args = p.parse_args(argv)
    try:
        if args.action == "save":
            save(args.sweep.expanduser(), args.archive.expanduser())
        else:
            restore(args.archive.expanduser(), args.sweep.expanduser())
    except UserError as exc:
        print(f"carry_sweep: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
