"""The `selfreg` command: one parser per subcommand, a short main.

User errors (bad config, unknown model, missing file) print one line on stderr
and exit with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.engine import fit

    cfg = load_config(args.config, args.overrides)
    fit(cfg)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="selfreg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"selfreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("config", help="YAML recipe, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.05")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list registered models with parameter and MAC counts")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'rrnet*'")
    models.add_argument("--num-classes", type=int, default=10)
    models.add_argument("--no-macs", action="store_true", help="skip counting multiply-adds")
    models.add_argument("--table", action="store_true",
                        help="markdown page: params and MACs at 32x32 and native size, source, paper, "
                             "adaptation, recipe (`selfreg models --table > docs/zoo.md`)")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
