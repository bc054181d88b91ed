"""Do two commits of selfreg train the same run? Bit for bit, on a short piece of a recipe.

    python scripts/commits_agree.py configs/regnet/table3_paper_c10.yaml 324fc72 HEAD \\
        --models resnet20,rrnet20_gru data.root=DATA data.subset=640 train.epochs=2 \\
        train.channels_last=true train.threads=1

A standing experiment resumes across sessions, and each session may resume it from a newer
commit: `selfreg report` then warns that the runs "come from N different source trees". This
answers the warning with a measurement. For each commit, the commit's own source and recipe
(`git archive`, nothing of the work tree) train each model with the given overrides, in a
fresh process; then every tensor of the final checkpoint's model and optimizer state is compared
with the first commit's. Equal tensors after a few hundred steps mean the code changes between
the commits did not change what the recipe computes on this machine (the layout and thread
count are fixed by the overrides: `auto` settings may choose differently from run to run).
Exit status 0 when every model agrees, 1 otherwise.

`--record FOLDER` adds the checks to FOLDER/commits_agree.json (a results folder of
`selfreg report`): the report then says, under its different-source-trees warning, which of its
runs' commits were measured to train the same run as the reference, which not, and which were
never checked.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

from selfreg import provenance

REPO = Path(__file__).resolve().parent.parent


def resolve(commit: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise SystemExit("commits_agree: error: git is not installed; it reads the commits") from None
    if proc.returncode != 0:
        raise SystemExit(f"commits_agree: error: {commit!r} is not a commit of {REPO}")
    return proc.stdout.strip()


def unpack(commit: str, dest: Path) -> Path:
    """The commit's src/ and configs/ under dest (git archive: the committed files only)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src", "configs"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def train(tree: Path, recipe: str, model: str, overrides: list[str], out: Path) -> Path:
    """One run of `recipe` with the tree's own code; its final checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, "-m", "selfreg", "train", str(tree / recipe), f"model.name={model}", *overrides,
           f"train.out_dir={out}", f"train.run_name={model}", "train.progress=none", "train.tensorboard=false"]
    # In the repository, so relative paths of the overrides (data.root=.data) mean what they say.
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"commits_agree: error: {model} at {tree.name} failed: {tail[0]}")
    return out / model / "checkpoints" / "last.pt"


def tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint part, by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {}
    found = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def differences(a: Path, b: Path) -> list[str]:
    """Paths of the model and optimizer tensors that differ between two checkpoints (or exist in one)."""
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    ta = tensors({"model": sa["model"], "optimizer": sa["optimizer"]})
    tb = tensors({"model": sb["model"], "optimizer": sb["optimizer"]})
    return sorted(k for k in ta.keys() | tb.keys()
                  if k not in ta or k not in tb or ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a recipe path inside the repository, e.g. configs/demo.yaml")
    parser.add_argument("items", nargs="+", metavar="COMMIT_OR_OVERRIDE",
                        help="two or more commits (the first is the reference) and section.key=value "
                             "overrides for every run")
    parser.add_argument("--models", required=True, help="comma-separated model names")
    parser.add_argument("--record", metavar="FOLDER",
                        help="add the checks to FOLDER/commits_agree.json, which `selfreg report FOLDER` cites")
    args = parser.parse_intermixed_args(argv)
    args.overrides = [item for item in args.items if "=" in item]
    names = [item for item in args.items if "=" not in item]
    if len(names) < 2:
        parser.error("name at least two commits")
    commits = [resolve(c) for c in names]
    models = [m for m in args.models.split(",") if m]
    if args.record:         # before minutes of training: a record that cannot be added to is one line now
        try:
            provenance.check_agreement_file(args.record)
        except ValueError as e:
            raise SystemExit(f"commits_agree: error: --record: {e}") from None
    disagree, checks = 0, []
    with tempfile.TemporaryDirectory(prefix="commits-agree-") as tmp:
        checkpoints = {}
        for commit in commits:
            tree = unpack(commit, Path(tmp) / commit[:12])
            for model in models:
                checkpoints[commit, model] = train(tree, args.recipe, model, args.overrides, tree / "runs")
        for model in models:
            for commit in commits[1:]:
                diff = differences(checkpoints[commits[0], model], checkpoints[commit, model])
                disagree += bool(diff)
                verdict = "bit-identical" if not diff else f"{len(diff)} tensors differ, e.g. {diff[0]}"
                print(f"{model}: {commit[:12]} against {commits[0][:12]}: {verdict}")
                checks.append(check(args, commits[0], commit, model, len(diff), checkpoints[commit, model]))
    print(f"{args.recipe} {' '.join(args.overrides)}")
    if args.record:
        try:
            print(f"recorded in {provenance.record_agreement(args.record, checks)}")
        except (OSError, ValueError) as e:
            raise SystemExit(f"commits_agree: error: --record: {e}") from None
    return 1 if disagree else 0


def check(args, reference: str, commit: str, model: str, differing: int, checkpoint: Path) -> dict:
    """One entry of commits_agree.json; the device and torch version are the run's own provenance."""
    run = provenance.read(checkpoint.parent.parent) or {}
    return {"reference": reference, "commit": commit, "model": model, "recipe": args.recipe,
            "overrides": args.overrides, "identical": differing == 0, "differing": differing,
            "device": run.get("device"), "torch": (run.get("versions") or {}).get("torch"),
            "date": date.today().isoformat()}


if __name__ == "__main__":
    sys.exit(main())
