"""Command line: ``python -m dictionary_learning_aligned demo [flags]``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import typing

from .demo import DemoConfig, run_demo


def _field_help(cls) -> dict:
    """Docstrings written under dataclass fields (read from the source), used as flag help."""
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    helps = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            helps[a.target.id] = str(b.value.value)
    return helps


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per dataclass field, with its default and docstring as help."""
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if tp is bool:
            parser.add_argument(flag, action="store_true", help=helps.get(f.name))
            continue
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        parser.add_argument(flag, type=tp, default=f.default, help=f"{helps.get(f.name, '')} (default: {f.default})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dictionary_learning_aligned",
                                     description="Aligned training of sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a standard and an aligned ReLU SAE side by side and compare them")
    add_dataclass_flags(demo, DemoConfig)
    args = parser.parse_args(argv)
    if args.command == "demo":
        cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
        try:
            run_demo(cfg)
        except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
