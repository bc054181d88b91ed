"""The `selfreg` command: one parser per subcommand, a short main.

User errors (bad config, unknown model, missing file) print one line on stderr
and exit with code 2, without a traceback.

Each subcommand imports what it needs when it runs (function-level imports, on purpose):
`selfreg --help` and a mistyped option answer at once, without loading torch, the
datasets and every model family.
"""
from __future__ import annotations

import argparse
import signal
import sys

from .errors import UserError, output_folder


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config, resume_config

    if args.resume:
        # `selfreg train --resume RUN [overrides]`; a recipe argument is read as an override.
        # The run writes its config.yaml only once the checkpoint has been restored.
        overrides = ([args.config] if args.config else []) + args.overrides
        cfg = resume_config(args.resume, overrides, imports=args.imports)
    else:
        if not args.config:
            raise UserError("pass a YAML recipe (selfreg train configs/demo.yaml) or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides, imports=args.imports)
    if args.launcher:
        return launch_one(args, cfg)
    from .train.engine import Interrupted, fit, fit_seeds   # after the config: its errors come at once

    try:
        if args.seeds:
            fit_seeds(cfg, parse_seeds(args.seeds))
        else:
            fit(cfg, resume=args.resume)
    except Interrupted as exc:
        print(f"selfreg: {exc}", file=sys.stderr)
        return 130
    return 0


def launch_one(args: argparse.Namespace, cfg) -> int:
    """`selfreg train RECIPE --launcher slurm|local`: the run as one job (selfreg.launch)."""
    from .config import read_yaml
    from .launch import Resources, single_run_plan, submit
    from .sweep import command_line

    if args.resume or args.seeds:
        raise UserError("--launcher sends one new run; a sent run resumes itself when requeued "
                        "(for several seeds use selfreg sweep --launcher)")
    section = read_yaml(args.config).get("launcher") if args.config else None
    plan = single_run_plan(cfg, args.config, section)
    submit(plan, args.launcher, Resources.from_sources(plan.launcher, launcher_flags(args)),
           command=command_line(sys.argv[1:]), wait=args.wait, sweep=False)
    return 0


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    return seeds


def at_least(option: str, value: int, low: int) -> None:
    """A numeric option below its floor is a one-line user error (argparse checks only the type)."""
    if value < low:
        raise UserError(f"{option} must be at least {low}, got {value}")


def cmd_models(args: argparse.Namespace) -> int:
    at_least("--num-classes", args.num_classes, 1)
    if args.pretrained:
        return list_pretrained(args.pattern)
    from .plugins import load_installed

    load_installed()                  # installed plugins' models too (--import: see main)
    from .complexity import human
    from .analysis.model_table import markdown, measure
    from .factory import list_models, model_entry

    names = list_models(args.pattern)
    if not names:
        from .registry import MODELS

        hint = MODELS.alias_hint(args.pattern) or "try `selfreg models` for the full list"
        raise UserError(f"no model matches {args.pattern!r}; {hint}")
    if args.table:
        print(markdown(args.pattern, args.num_classes), end="")
        return 0
    header = f"{'model':<24} {'params':>12} {'MACs':>10} {'input':>7}  source"
    print(header)
    print("-" * len(header))
    for name in names:
        meta = model_entry(name).meta
        size = meta.get("input_size", 224)
        params, macs = measure(name, size, args.num_classes, macs=not args.no_macs)
        macs_text = human(macs) if macs is not None else "-"
        print(f"{name:<24} {params:>12,} {macs_text:>10} {f'{size}x{size}':>7}  {meta.get('source', '?')}")
    print(f"\n{len(names)} models; parameters with {args.num_classes} classes; "
          "MACs = forward multiply-adds for one image at the native input size.")
    return 0


def list_pretrained(pattern: str) -> int:
    """`selfreg models --pretrained`: the shipped weights (reads the manifest only: no torch)."""
    from .pretrained import available, load_manifest, table

    if not load_manifest():
        print("No pretrained weights ship with selfreg yet: build models untrained, or load a weights file "
              "with selfreg.create_model(NAME, checkpoint=PATH).")
        return 0
    entries = available(pattern)
    if not entries:
        raise UserError(f"no shipped weights for a model matching {pattern!r}; try `selfreg models --pretrained`")
    print("\n".join(table(entries)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepInterrupted, command_line, expand, run_sweep

    if args.status:
        from .launch import plan_from_folder, status

        status(plan_from_folder(args.status, expand))
        return 0
    if not args.recipe:
        raise UserError("pass a sweep recipe (selfreg sweep configs/regnet/table3.yaml) or --status SWEEP_DIR")
    only = [p for p in args.only.split(",") if p] if args.only else None
    plan = expand(args.recipe, seeds=parse_seeds(args.seeds) if args.seeds else None, smoke=args.smoke,
                  only=only, overrides=args.overrides, out=args.out, imports=args.imports)
    if args.list:
        for job in plan.jobs:
            print(f"{job.label:<40} s{job.seed:<4} {job.dir}")
        return 0
    try:
        if args.launcher:
            from .launch import Resources, submit

            if args.parallel != 1:
                raise UserError("--parallel is for runs on this machine; with --launcher use --max-running")
            result = submit(plan, args.launcher, Resources.from_sources(plan.launcher, launcher_flags(args)),
                            command=command_line(sys.argv[1:]), wait=args.wait)
            return 0
        result = run_sweep(plan, parallel=args.parallel, command=command_line(sys.argv[1:]))
    except SweepInterrupted as exc:
        print(f"selfreg: {exc}", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0


def launcher_flags(args: argparse.Namespace) -> dict:
    """The resource flags given on the command line (None: not given, the recipe's or the default)."""
    return {"partition": args.partition, "time": args.time, "gpus": args.gpus, "tasks": args.tasks, "cpus": args.cpus,
            "mem_gb": args.mem_gb, "account": args.account, "qos": args.qos, "constraint": args.constraint,
            "max_running": args.max_running}


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (selfreg.launch; defaults from the recipe's launcher: section)")
    group.add_argument("--launcher", choices=["slurm", "local"],
                       help="send the runs as jobs through submitit: slurm (sbatch job array) or local "
                            "(submitit's local executor); default: run here")
    group.add_argument("--wait", action="store_true", help="wait until every submitted job has ended")
    group.add_argument("--partition")
    group.add_argument("--time", type=int, metavar="MINUTES", help="time limit per job (default 1440)")
    group.add_argument("--gpus", type=int, metavar="N", help="GPUs per job; N > 1 runs DDP over them")
    group.add_argument("--tasks", type=int, metavar="N",
                       help="processes per job (default: one per GPU); N > 1 runs DDP over them")
    group.add_argument("--cpus", type=int, metavar="N", help="CPUs per task")
    group.add_argument("--mem-gb", type=float, metavar="GB")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--constraint")
    group.add_argument("--max-running", type=int, metavar="K", help="jobs of the array running at once")


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report
    from .sweep import command_line

    out = build_report(args.folder, args.output, command=command_line(sys.argv[1:]), note=args.note,
                       baseline=args.baseline)
    print(f"report: {out} and {out.with_suffix('.html')} (figures in {out.parent / (out.stem + '-figures')})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .use.evaluate import (default_out_dir, eval_data_config, eval_split, evaluate_split, summary_lines,
                               write_report)
    from .use.trained import load_trained, pick_device

    device = pick_device(args.device)
    trained = load_trained(args.checkpoint, device=device)
    data_cfg = eval_data_config(trained, args.data, args.root, args.overrides)
    images = eval_split(trained, data_cfg, args.split, device)
    result = evaluate_split(trained.model, images, trained.classes, tta=args.tta, k=args.topk,
                            channels_last=args.channels_last)
    header = {"checkpoint": str(trained.source), "model": trained.name, "dataset": data_cfg.name,
              "split": args.split}
    out = Path(args.out) if args.out else default_out_dir(trained, data_cfg.name, args.split, args.tta)
    files = write_report(result, out, header)
    print("\n".join(summary_lines(result, header)))
    print(f"wrote {', '.join(map(str, files))}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .use.predict import format_table, predict
    from .use.trained import load_trained, pick_device

    trained = load_trained(args.checkpoint, device=pick_device(args.device))
    rows = predict(trained, args.images, topk=args.topk)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(format_table(rows))
    failed = [r for r in rows if r.error]
    if failed:
        print(f"selfreg: {len(failed)} of {len(rows)} file(s) could not be read: "
              + "; ".join(f"{r.file} ({r.error})" for r in failed[:10]), file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .use.export import default_path, export
    from .use.trained import load_trained, pick_device

    trained = load_trained(args.checkpoint, device=pick_device(args.device))
    options = {"exporter": args.exporter, "opset": args.opset} if args.format == "onnx" else {}
    out = args.out
    if out is not None and Path(out).is_dir():      # -o DIR: the file goes into DIR, under its usual name
        out = Path(out) / default_path(trained.source, args.format).name
    result = export(trained, args.format, out, check=not args.no_check, **options)
    print(f"wrote {', '.join(map(str, result.files))} ({trained.name}, {result.exporter}, dynamic batch, "
          f"input {trained.in_chans}x{trained.transform.image_size[0]}x{trained.transform.image_size[1]})")
    if result.max_abs_diff is not None:
        print(f"max abs difference vs PyTorch: {result.max_abs_diff:.3g} (random inputs, batch sizes "
              f"{', '.join(map(str, result.checked_batches))}; logits up to {result.max_abs_logit:.3g})")
    elif result.note:
        print(result.note)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .analysis.features import feature_figure
    from .use.trained import load_trained, pick_device, run_dir_of

    at_least("--channels", args.channels, 0)
    trained = load_trained(args.checkpoint, device=pick_device(args.device))
    out = Path(args.out) if args.out else run_dir_of(trained.source) / "features" / f"{Path(args.image).stem}.png"
    output_folder(out.parent, "choose another -o or fix its permissions")
    blocks, _ = feature_figure(trained, args.image, args.blocks, out, channels=args.channels)
    for b in blocks:
        print(f"block {b.label}: {', '.join(sorted(b.taps))}")
    print(f"wrote {out}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import json
    import re
    from pathlib import Path

    from .analysis.features import plot_probe, probe_blocks, probe_table
    from .use.evaluate import eval_data_config
    from .use.trained import load_trained, pick_device

    at_least("--max-images", args.max_images, 0)
    for option, path in (("-o", args.out), ("--plot", args.plot)):
        if path:    # before the probing, which takes minutes
            output_folder(Path(path).parent, f"choose another {option} or fix its permissions")
    device = pick_device(args.device)
    # `selfreg probe A.pt B.pt [data.key=value ...]`: the items with "=" are overrides.
    overrides = [a for a in args.items if re.match(r"^[\w.]+=", a)]
    checkpoints = [a for a in args.items if a not in overrides]
    if not checkpoints:
        raise UserError("pass at least one checkpoint, e.g. selfreg probe runs/a/checkpoints/best.pt")
    results = []
    for path in checkpoints:
        trained = load_trained(path, device=device)
        data_cfg = eval_data_config(trained, args.data, args.root, overrides)
        results.append(probe_blocks(trained, data_cfg, args.blocks, args.max_images, device))
    print(probe_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot_probe(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


# What `selfreg --help` says to users (the module docstring above is for developers).
DESCRIPTION = """\
Train, compare and inspect image classifiers: CIFAR ResNets, the RNN-regulated
RegNets of Xu et al. (named rrnet* here) and a zoo of classics. A run is a YAML
recipe plus section.key=value overrides; its folder holds the config, metrics,
checkpoints and plots."""
EPILOG = """examples:
  selfreg train configs/demo.yaml                 ResNet-20 on the bundled digits (no download)
  selfreg train configs/demo.yaml optim.lr=0.05   the same with one setting changed
  selfreg models 'rrnet*'                         the RegNet models, with parameters and MACs
  selfreg eval runs/demo/checkpoints/best.pt      accuracy of a trained run
  selfreg COMMAND --help                          the options of one command"""


def add_import_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: your module that registers models, datasets, augmentations, "
                             "optimizers or schedules (repeatable; train and sweep record it in the run's "
                             "imports:, see docs/api.md)")


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="selfreg", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"selfreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("config", nargs="?", help="YAML recipe, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.05")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from its last checkpoint")
    train.add_argument("--seeds", metavar="S1,S2,...",
                       help="one run per seed and a summary.json of mean and std (e.g. 0,1,2)")
    add_launcher_args(train)
    add_import_arg(train)
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list registered models with parameter and MAC counts")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'rrnet*'")
    models.add_argument("--num-classes", type=int, default=10)
    models.add_argument("--no-macs", action="store_true", help="skip counting multiply-adds")
    models.add_argument("--table", action="store_true",
                        help="markdown page: params and MACs at 32x32 and native size, source, paper, "
                             "adaptation, recipe (`selfreg models --table > docs/zoo.md`)")
    models.add_argument("--pretrained", action="store_true",
                        help="list the weights that ship with selfreg: model, tag, val accuracy, sha256, file "
                             "(load one with create_model(NAME, pretrained=TAG))")
    add_import_arg(models)
    models.set_defaults(func=cmd_models)

    sweep = sub.add_parser("sweep", help="run a recipe's grid of configurations x seeds into one folder")
    sweep.add_argument("recipe", nargs="?", help="YAML recipe with a sweep: section, e.g. configs/regnet/table3.yaml")
    sweep.add_argument("overrides", nargs="*", help="section.key=value overrides for every run (e.g. data.root=...)")
    sweep.add_argument("--seeds", metavar="S1,S2,...", help="seeds for every configuration (default: the recipe's)")
    sweep.add_argument("--parallel", type=int, default=1, metavar="K",
                       help="runs at once, each its own process (small models on one GPU); 1 on a CPU")
    sweep.add_argument("--smoke", action="store_true",
                       help="the recipe's smoke variant: a few hundred images, an epoch or two")
    sweep.add_argument("--only", metavar="LABELS", help="comma-separated labels or patterns (c10-rrnet20_*)")
    sweep.add_argument("-o", "--out", metavar="DIR", help="sweep folder (default: train.out_dir/<sweep name>)")
    sweep.add_argument("--list", action="store_true", help="print the runs and their folders, train nothing")
    sweep.add_argument("--status", metavar="SWEEP_DIR",
                       help="one line per run: finished, failed (with its error), queued, running, requeued, lost")
    add_launcher_args(sweep)
    add_import_arg(sweep)
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="markdown + HTML report with figures over a sweep or folder of runs")
    report.add_argument("folder", help="a sweep folder or any folder holding run folders")
    report.add_argument("-o", "--output", metavar="REPORT.md", help="default: FOLDER/report.md")
    report.add_argument("--note", default="", help="a paragraph at the top (e.g. what scale the runs are)")
    report.add_argument("--baseline", default="", metavar="LABEL",
                        help="the configuration the others are compared with first (default: the first)")
    report.set_defaults(func=cmd_report)
    evaluate = sub.add_parser("eval", help="accuracy, loss, per-class accuracy and a confusion matrix of a checkpoint")
    evaluate.add_argument("checkpoint", help="a run checkpoint (runs/x/checkpoints/best.pt) or exported .safetensors")
    evaluate.add_argument("overrides", nargs="*", help="data.key=value overrides, e.g. data.cache=true")
    evaluate.add_argument("--data", metavar="NAME", help="dataset name (default: the checkpoint's own)")
    evaluate.add_argument("--root", metavar="DIR", help="the dataset's data.root (for folder: the image tree)")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--tta", default="none", choices=["none", "flip"],
                          help="test-time augmentation: flip averages the image and its mirror")
    evaluate.add_argument("--topk", type=int, default=5,
                          help="k of the top-k accuracy (default 5; reported for more than k classes)")
    evaluate.add_argument("--channels-last", action="store_true",
                          help="evaluate in NHWC, as a run trained in channels_last measured itself (the "
                               "layouts round differently: a near-tie image can flip)")
    evaluate.add_argument("-o", "--out", metavar="DIR", help="output folder (default RUN/eval/<split>)")
    evaluate.add_argument("--device", default="auto")
    add_import_arg(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    pred = sub.add_parser("predict", help="class probabilities for images, with the checkpoint's own transform")
    pred.add_argument("checkpoint", help="a run checkpoint or exported .safetensors")
    pred.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    pred.add_argument("--topk", type=int, default=5)
    pred.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pred.add_argument("--device", default="auto")
    add_import_arg(pred)
    pred.set_defaults(func=cmd_predict)

    exp = sub.add_parser("export", help="ONNX / TorchScript / safetensors, checked against PyTorch")
    exp.add_argument("checkpoint", help="a run checkpoint or exported .safetensors")
    exp.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    exp.add_argument("-o", "--out", metavar="PATH",
                     help="output file, or a folder to write it into (default: next to the checkpoint)")
    exp.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"],
                     help="ONNX: torch.onnx's dynamo exporter, the TorchScript-based one, or dynamo then legacy")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    exp.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    exp.add_argument("--device", default="cpu")
    add_import_arg(exp)
    exp.set_defaults(func=cmd_export)

    feat = sub.add_parser("features",
                          help="PNG grid of feature maps per block (I, H, O for RegNets; the paper's Fig. 1a)")
    feat.add_argument("checkpoint", help="a run checkpoint or exported .safetensors")
    feat.add_argument("image", help="one image file")
    feat.add_argument("--blocks", default="last3", help="1-based block numbers: 7,8,9 or 7-9 or last3 or all")
    feat.add_argument("--channels", type=int, default=3, help="most active channels shown per map, besides the mean")
    feat.add_argument("-o", "--out", metavar="PNG", help="output file (default RUN/features/<image>.png)")
    feat.add_argument("--device", default="auto")
    add_import_arg(feat)
    feat.set_defaults(func=cmd_features)

    probe = sub.add_parser("probe", help="linear probes on pooled outputs of the last blocks (the paper's Fig. 1b)")
    probe.add_argument("items", nargs="+", metavar="CHECKPOINT_OR_OVERRIDE",
                       help="one or more checkpoints, side by side (e.g. a ResNet and a RegNet), and "
                            "data.key=value overrides")
    probe.add_argument("--data", metavar="NAME", help="dataset name (default: each checkpoint's own)")
    probe.add_argument("--root", metavar="DIR", help="the dataset's data.root")
    probe.add_argument("--blocks", default="last3", help="blocks to probe: last3 (default), 7,8,9, 7-9 or all")
    probe.add_argument("--max-images", type=int, default=5000,
                       help="a fixed random sample of at most this many images per split (0: all)")
    probe.add_argument("-o", "--out", metavar="JSON", help="also write the numbers as JSON")
    probe.add_argument("--plot", metavar="PNG", help="also draw the numbers as a bar chart per block")
    probe.add_argument("--device", default="auto")
    add_import_arg(probe)
    probe.set_defaults(func=cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may also follow the options (selfreg sweep R --seeds 0,1 data.root=...), where
    # argparse no longer assigns positionals: collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `overrides` for train/sweep/eval; probe mixes checkpoints and overrides in `items`.
        target = next((name for name in ("overrides", "items") if hasattr(args, name)), None)
        if target is None or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, target, list(getattr(args, target)) + extra)
    try:
        if getattr(args, "imports", None):   # the commands that build models or data (selfreg.plugins)
            from .plugins import load

            load(args.imports, origin="--import")
        return args.func(args)
    except UserError as exc:
        print(f"selfreg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfreg: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The `selfreg` command and `python -m selfreg`: `main`, stopped by the first SIGINT only
    (selfreg.stopping: a run of a `sweep --parallel` gets the terminal's and the sweep's)."""
    from .stopping import first_stops, ignore_if_stopping

    signal.signal(signal.SIGINT, first_stops)
    try:
        code = main()
    except KeyboardInterrupt:      # arrived while main was handling another way of ending
        code = 130
    ignore_if_stopping()
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
