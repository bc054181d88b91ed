"""The `selfreg` command: one parser per subcommand, a short main.

User errors (bad config, unknown model, missing file) print one line on stderr
and exit with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import load_config, save_config
    from .train.engine import Interrupted, fit, fit_seeds

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass the folder a run wrote")
        # `selfreg train --resume RUN [overrides]`; a recipe argument is read as an override.
        overrides = ([args.config] if args.config else []) + args.overrides
        cfg = load_config(run_dir / "config.yaml", overrides)
        if overrides:
            save_config(cfg, run_dir / "config.yaml")
    else:
        if not args.config:
            raise UserError("pass a YAML recipe (selfreg train configs/demo.yaml) or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
    try:
        if args.seeds:
            fit_seeds(cfg, parse_seeds(args.seeds))
        else:
            fit(cfg, resume=args.resume)
    except Interrupted as exc:
        print(f"selfreg: {exc}", file=sys.stderr)
        return 130
    return 0


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    return seeds


def cmd_models(args: argparse.Namespace) -> int:
    from .analysis.complexity import human
    from .analysis.model_table import markdown, measure
    from .registry import list_models, model_entry

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; try `selfreg models` for the full list")
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


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepInterrupted, command_line, expand, run_sweep

    only = [p for p in args.only.split(",") if p] if args.only else None
    plan = expand(args.recipe, seeds=parse_seeds(args.seeds) if args.seeds else None, smoke=args.smoke,
                  only=only, overrides=args.overrides, out=args.out)
    if args.list:
        for job in plan.jobs:
            print(f"{job.label:<40} s{job.seed:<4} {job.dir}")
        return 0
    try:
        result = run_sweep(plan, parallel=args.parallel, command=command_line(sys.argv[1:]))
    except SweepInterrupted as exc:
        print(f"selfreg: {exc}", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report
    from .sweep import command_line

    out = build_report(args.folder, args.output, command=command_line(sys.argv[1:]), note=args.note)
    print(f"report: {out} and {out.with_suffix('.html')} (figures in {out.parent / (out.stem + '-figures')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="selfreg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"selfreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("config", nargs="?", help="YAML recipe, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.05")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from its last checkpoint")
    train.add_argument("--seeds", metavar="S1,S2,...",
                       help="one run per seed and a summary.json of mean and std (e.g. 0,1,2)")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list registered models with parameter and MAC counts")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'rrnet*'")
    models.add_argument("--num-classes", type=int, default=10)
    models.add_argument("--no-macs", action="store_true", help="skip counting multiply-adds")
    models.add_argument("--table", action="store_true",
                        help="markdown page: params and MACs at 32x32 and native size, source, paper, "
                             "adaptation, recipe (`selfreg models --table > docs/zoo.md`)")
    models.set_defaults(func=cmd_models)

    sweep = sub.add_parser("sweep", help="run a recipe's grid of configurations x seeds into one folder")
    sweep.add_argument("recipe", help="YAML recipe with a sweep: section, e.g. configs/regnet/table3.yaml")
    sweep.add_argument("overrides", nargs="*", help="section.key=value overrides for every run (e.g. data.root=...)")
    sweep.add_argument("--seeds", metavar="S1,S2,...", help="seeds for every configuration (default: the recipe's)")
    sweep.add_argument("--parallel", type=int, default=1, metavar="K",
                       help="runs at once, each its own process (small models on one GPU); 1 on a CPU")
    sweep.add_argument("--smoke", action="store_true",
                       help="the recipe's smoke variant: a few hundred images, an epoch or two")
    sweep.add_argument("--only", metavar="LABELS", help="comma-separated labels or patterns (c10-rrnet20_*)")
    sweep.add_argument("-o", "--out", metavar="DIR", help="sweep folder (default: train.out_dir/<sweep name>)")
    sweep.add_argument("--list", action="store_true", help="print the runs and their folders, train nothing")
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="markdown + HTML report with figures over a sweep or folder of runs")
    report.add_argument("folder", help="a sweep folder or any folder holding run folders")
    report.add_argument("-o", "--output", metavar="REPORT.md", help="default: FOLDER/report.md")
    report.add_argument("--note", default="", help="a paragraph at the top (e.g. what scale the runs are)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may also follow the options (selfreg sweep R --seeds 0,1 data.root=...), where
    # argparse no longer assigns positionals: collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except UserError as exc:
        print(f"selfreg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfreg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
