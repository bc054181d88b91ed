"""Publish a sweep's finished runs: their results into the docs, their final weights into the package.

    python scripts/publish_runs.py ~/selfreg-runs/table3-budget --data DATA \\
        --results docs/results/table3-budget --tag cifar10-budget --default-seed 0

For every finished run of the sweep (summary.json written), in the sweep's order:
1. results: config.yaml, summary.json, metrics.csv, speed.json, provenance.json, source.patch
   (when not empty) and plots/ are copied to RESULTS/<label>/s<seed>/, and the sweep's
   sweep.yaml to RESULTS/, so `selfreg report RESULTS` works on the copy (no checkpoints: they
   stay in the sweep folder).
2. weights: the run's final checkpoint (checkpoints/last.pt: the weights after the last epoch,
   the ones its final validation accuracy was measured on, never the best epoch's) is exported
   by `selfreg export --format safetensors`'s code to WEIGHTS/<model>-<tag>-s<seed>.safetensors.
3. accuracy: the file is evaluated on the validation split by `selfreg eval`'s code
   (benchmarks/reeval_pretrained.py measures the same way) in the memory layout the run measured
   in (its summary's speed.channels_last, kept in the manifest entry) and must give the run's own
   final validation accuracy, image for image; otherwise nothing is written for that run.
4. manifest: the file's entry (tag <tag>-s<seed>; the --default-seed run also answers to <tag>)
   replaces any older entry of that model and tag in WEIGHTS/manifest.json. The --default-seed
   file is the model's default (`pretrained=True`) when the model has none from another tag, or
   with --take-default, which takes it from the other tag (issue #26: the paper-recipe weights
   take it from the budget weights, which keep their tags and alias).
5. checks: the run's final checkpoint's logits on a fixed input (REFERENCE_INPUT) go to
   tests/data/pretrained_logits.json, so the tests can show that each shipped file is that
   checkpoint without the checkpoint (or any data) at hand.
Then RESULTS/weights.md lists every shipped file of the tag: model, seed, validation accuracy,
sha256, size, the command that trains it again and the commit it ran from.

`--records-only` rewrites just what TAG's published entries take from their runs' records (the
command, the layout), from the sweep folder or the results folder (which keeps sweep.yaml and
the summaries), for files published before these were derived so; reeval_pretrained.py then
measures every file again.

WEIGHTS is the package's src/selfreg/weights (or $SELFREG_PRETRAINED_DIR). Re-running is safe:
a published run is exported and checked again and its entries are replaced, not duplicated.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from selfreg import pretrained  # noqa: E402
from selfreg.errors import UserError, check_writable, output_folder  # noqa: E402
from selfreg.sweep import read_sweep_record, write_record  # noqa: E402

RESULT_FILES = ("config.yaml", "summary.json", "metrics.csv", "speed.json", "provenance.json")
LOGITS = REPO / "tests" / "data" / "pretrained_logits.json"
REFERENCE_SEED = 0
REFERENCE_BATCH = 2


def reference_input(in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """The fixed input the logits checks use: seeded standard normal noise (CPU generator)."""
    g = torch.Generator().manual_seed(REFERENCE_SEED)
    return torch.randn(REFERENCE_BATCH, in_chans, *size, generator=g)


def finished_runs(sweep: Path) -> tuple[dict, list[dict]]:
    """The sweep record, and its runs (label, seed, dir) whose summary.json exists, in its order."""
    record = read_sweep_record(sweep)
    return record, [run for run in record.get("runs", []) if (sweep / run["dir"] / "summary.json").is_file()]


def run_layout(summary: dict) -> bool:
    """Whether the run trained and measured its accuracy in channels_last (its speed choice)."""
    return bool(summary.get("speed", {}).get("channels_last", False))


def copy_results(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    patch = run_dir / "source.patch"
    if patch.is_file() and patch.stat().st_size:
        shutil.copy2(patch, dest / patch.name)
    if (run_dir / "plots").is_dir():
        shutil.copytree(run_dir / "plots", dest / "plots", dirs_exist_ok=True)


def rerun_command(record: dict, run: dict, run_dir: Path) -> str:
    """One command that trains exactly this run again (data.root left for the user to fill in).

    The thread count and memory layout change the bits of a CPU run, so the command keeps the
    run's overrides that were typed on the sweep's command line and pins what `auto` chose for it
    (summary.json's speed: precision and layout), which another machine might choose otherwise."""
    pinned = typed_overrides(record, run) + resolved_speed(run_dir)
    return shlex.join(["selfreg", "sweep", record.get("recipe", "RECIPE"), "--only", run["label"],
                       "--seeds", str(run["seed"]), *pinned, "data.root=DATA"])


def typed_overrides(record: dict, run: dict) -> list[str]:
    """The run's section.key=value overrides whose key was typed on a command of the sweep (not
    the grid's, which --only selects), but data.root; with the run's own values."""
    commands = record.get("commands") or [record.get("command") or ""]
    typed = {t.split("=", 1)[0] for c in commands for t in shlex.split(c) if re.match(r"^[a-z_]+\.[\w.]+=", t)}
    return [f"{key}={yaml_value(value)}" for key, value in run.get("overrides", {}).items()
            if key in typed and key != "data.root"]


def yaml_value(value) -> str:
    """An override's value as typed: YAML flow style (true, 0.1, [80, 120])."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def resolved_speed(run_dir: Path) -> list[str]:
    """train.amp / train.channels_last as the run resolved them, for those it left to `auto`."""
    speed = json.loads((run_dir / "summary.json").read_text()).get("speed", {})
    return [f"train.{key}={yaml_value(speed[key])}" for key in ("amp", "channels_last")
            if speed.get("asked", {}).get(key) == "auto" and key in speed]


def export_final(run_dir: Path, path: Path):
    """checkpoints/last.pt -> safetensors at `path`, checked against the checkpoint; (trained, path)."""
    from selfreg.use.export import export
    from selfreg.use.trained import load_trained

    trained = load_trained(run_dir / "checkpoints" / "last.pt", device="cpu")
    result = export(trained, "safetensors", path, check=True)
    for extra in result.files[1:]:     # the JSON sidecar: the header holds the same, the package needs one file
        extra.unlink()
    return trained, result.path


def measured_accuracy(path: Path, data_root: str, channels_last: bool) -> tuple[float, int]:
    """Top-1 and image count on the val split, by the code behind `selfreg eval`, in the memory
    layout the run measured its own accuracy in."""
    from selfreg.use.evaluate import measure_file

    return measure_file(path, data_root, "val", channels_last=channels_last)


def reference_logits(trained) -> list[list[float]]:
    h, w = trained.transform.image_size
    with torch.no_grad():
        return trained.model.eval()(reference_input(trained.in_chans, (h, w))).tolist()


def of_tag(entry_tag: str, tag: str) -> bool:
    """Whether a manifest entry's tag is one of `tag`'s files (TAG-s<seed>): not a prefix test,
    which would count cifar10-paper-s0 as a file of cifar10."""
    return re.fullmatch(rf"{re.escape(tag)}-s\d+", entry_tag) is not None


def takes_default(manifest: dict, model: str, tag: str, take_default: bool) -> bool:
    """Whether the default seed's file of `tag` becomes `model`'s `pretrained=True`: when asked
    (the other entries of the model then lose it), or when no other tag of the model has it."""
    others = [key for key, e in manifest.items() if key[0] == model and not of_tag(e["tag"], tag)]
    if take_default:
        for key in others:
            manifest[key] = {**manifest[key], "default": False}
        return True
    return not any(manifest[key]["default"] for key in others)


def publish(sweep: Path, data_root: str, results: Path, tag: str, default_seed: int,
            weights: Path, logits_file: Path = LOGITS, log=print, take_default: bool = False) -> list[dict]:
    """Steps 1-5 of the module's docstring for every finished run; the manifest's entries."""
    record, runs = finished_runs(sweep)
    if not runs:
        raise UserError(f"no finished run under {sweep} yet (no summary.json)")
    check_writable(results, "choose another --results or fix its permissions")   # before minutes of evaluation
    old = pretrained.load_manifest(weights) if (weights / pretrained.MANIFEST).is_file() else []
    manifest = {(w.model, w.tag): w.to_dict() for w in old}
    logits = json.loads(logits_file.read_text()) if logits_file.is_file() else {}
    for run in runs:
        run_dir = sweep / run["dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        model = summary["model"]
        seed_tag = f"{tag}-s{run['seed']}"
        copy_results(run_dir, results / run["dir"])
        trained, path = export_final(run_dir, weights / f"{model}-{seed_tag}.safetensors")
        channels_last = run_layout(summary)
        top1, count = measured_accuracy(path, data_root, channels_last)
        if abs(top1 - summary["final_val_acc"]) * count >= 0.5:
            path.unlink()
            raise UserError(f"{path.name}: selfreg eval measures {100 * top1:.2f}% on val, the run's final "
                            f"validation accuracy was {100 * summary['final_val_acc']:.2f}%; not published")
        named = run["seed"] == default_seed
        default = named and takes_default(manifest, model, tag, take_default)
        entry = pretrained.make_entry(path, seed_tag, top1, rerun_command(record, run, run_dir),
                                      aliases=[tag] if named else [], default=default,
                                      channels_last=channels_last)
        manifest[(model, seed_tag)] = entry
        logits[f"{model}:{seed_tag}"] = reference_logits(trained)
        log(f"{model} s{run['seed']}: {100 * top1:.2f}% val ({count} images), {path.name} sha256 {entry['sha256'][:12]}")
    # Merged, not copied: a sweep folder on a new machine holds only that machine's runs.
    write_record(results / "sweep.yaml", record)
    logits_file.parent.mkdir(parents=True, exist_ok=True)
    logits_file.write_text(json.dumps(logits, indent=1, sort_keys=True) + "\n")
    return save_manifest(manifest, weights, results, tag)


def save_manifest(manifest: dict, weights: Path, results: Path, tag: str) -> list[dict]:
    """Write the manifest and RESULTS/weights.md (the tag's files); the manifest's entries."""
    entries = list(manifest.values())
    pretrained.write_manifest(entries, weights)
    write_weights_table(results / "weights.md", [e for e in entries if of_tag(e["tag"], tag)], weights, tag)
    return entries


def refresh_records(sweep: Path, results: Path, tag: str, weights: Path) -> list[dict]:
    """Only what each published entry of `tag` takes from its run's records: the command
    (`rerun_command`) and the layout its accuracy was measured in (`run_layout`), for files
    published before either was derived so. Nothing is exported or measured, so SWEEP may be the
    results folder (its sweep.yaml and summaries); benchmarks/reeval_pretrained.py measures after."""
    record, runs = finished_runs(sweep)
    output_folder(results, "choose another --results or fix its permissions")
    manifest = {(w.model, w.tag): w.to_dict() for w in pretrained.load_manifest(weights)}
    for run in runs:
        summary = json.loads((sweep / run["dir"] / "summary.json").read_text())
        key = (summary["model"], f"{tag}-s{run['seed']}")
        if key not in manifest:
            raise UserError(f"{key[0]}:{key[1]} is not published; publish it first (without --records-only)")
        manifest[key] = {**manifest[key], "command": rerun_command(record, run, sweep / run["dir"]),
                         "channels_last": run_layout(summary)}
    return save_manifest(manifest, weights, results, tag)


def load_example(entries: list[dict], tag: str, weights: Path) -> str:
    """How to load the tag's files, naming only tags that ship (a seed not published yet is no
    example). What `pretrained=TAG` loads is asked of pretrained.resolve, on the manifest just written."""
    model = entries[0]["model"]
    try:
        named = pretrained.resolve(model, tag, weights)
    except UserError:                                    # TAG names no file (its default seed is not published)
        named = None
    tags = sorted(e["tag"] for e in entries if e["model"] == model)
    if named:
        tags.remove(named.tag)
        shown, which = tag, f" (`{named.tag}`" + (", its `pretrained=True`" if named.default else "") + ")"
    else:
        shown, which = tags.pop(0), ""
    also = f' or `pretrained="{tags[0]}"`' if tags else ""
    return (f'Load one: `selfreg.create_model("{model}", pretrained="{shown}")`{which}{also}; each seed\'s file '
            f"is tagged `{tag}-sN`; `selfreg models --pretrained` lists them.")


def write_weights_table(path: Path, entries: list[dict], weights: Path, tag: str) -> None:
    lines = [f"# Shipped weights: `{tag}`", "",
             "Written by `python scripts/publish_runs.py` from the sweep's finished runs: each file is its run's "
             "final checkpoint (after the last epoch), exported as safetensors into `src/selfreg/weights/`. "
             "Top-1 is measured on the file by `selfreg eval`'s code on the 5,000-image validation split of "
             "the CIFAR-10 JPEG copy, in the memory layout the run measured in (the manifest's `channels_last`: "
             "NHWC and NCHW round differently and can flip a near-tie image), and equals the run's own final "
             "validation accuracy; `python benchmarks/reeval_pretrained.py --data DATA` measures it again.", "",
             load_example(entries, tag, weights), "",
             "| model | tag | val top-1 | sha256 | size | command (data.root = the unpacked JPEG copy) | commit |",
             "|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["model"], e["tag"])):
        size = (weights / e["file"]).stat().st_size
        names = e["tag"] + "".join(f", {a}" for a in e["aliases"]) + (" (default)" if e["default"] else "")
        lines.append(f"| {e['model']} | {names} | {100 * e['val_accuracy']:.2f}% | `{e['sha256']}` | "
                     f"{size / 1e6:.2f} MB | `{e['command']}` | {e['commit'][:12]} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="the sweep folder (selfreg sweep -o)")
    p.add_argument("--data", metavar="DIR", help="data.root of the runs (to measure val accuracy)")
    p.add_argument("--results", type=Path, required=True, metavar="DIR", help="e.g. docs/results/table3-budget")
    p.add_argument("--tag", required=True, help="weights tag; each file is TAG-s<seed>")
    p.add_argument("--default-seed", type=int, default=0, help="the seed whose file TAG names (default 0)")
    p.add_argument("--take-default", action="store_true",
                   help="make that file its model's pretrained=True, in place of another tag's (by default "
                        "it becomes so only for a model that has none)")
    p.add_argument("--records-only", action="store_true",
                   help="only rewrite what TAG's published entries take from their runs' records (command, "
                        "layout); SWEEP may be RESULTS; then run benchmarks/reeval_pretrained.py")
    args = p.parse_args(argv)
    if not args.records_only and not args.data:
        p.error("--data is required (to measure each file's accuracy), unless --records-only")
    try:
        if args.records_only:
            entries = refresh_records(args.sweep.expanduser(), args.results, args.tag, pretrained.weights_dir())
            print(f"{len(entries)} manifest entries; commands and layouts of {args.tag} rewritten")
            return 0
        entries = publish(args.sweep.expanduser(), args.data, args.results, args.tag, args.default_seed,
                          pretrained.weights_dir(), take_default=args.take_default)
    except UserError as exc:
        print(f"publish_runs: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(entries)} manifest entries; results in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
