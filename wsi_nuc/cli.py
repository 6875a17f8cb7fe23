"""The ``wsi-nuc`` command: parse, call one function, map errors to exit codes.

Heavy packages are imported inside each command so that ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import sys

from .errors import InputError


def _train(a) -> int:
    from .config import load_config
    from .train.loop import train

    cfg = load_config(a.config, a.set)
    out = a.out or f"runs/{cfg.get('name', 'model')}"
    model_dir = train(cfg, out, log=lambda m: print(m, flush=True))
    print(f"model written to {model_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsi-nuc", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config")
    t.add_argument("--out", help="run folder (default runs/<name>); re-running resumes it")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        if args.debug:
            raise
        print(f"wsi-nuc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsi-nuc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
