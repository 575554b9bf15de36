"""Command line: ``python -m dictionary_learning_aligned demo [flags]``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import typing

from .demo import CHOICES, DemoConfig, run_demo

DEMO_HELP = """Harvest activations of a language model layer, train a standard and an aligned SAE side by side on the
same batches, evaluate both on held-out text, and compare them.

Writes into --out: results.json (settings, metrics, training logs, timings, versions), results.md (summary
table), alignment_hist.pdf/.png (alignment-score histograms) and dictionaries/trainer_{i}/ (ae.safetensors +
config.json; for each seed a standard then an aligned SAE). The defaults (SmolLM2-135M-Instruct layer 12, bundled
corpus, 300k tokens, dict_size 4096) take about 7 minutes on 2 idle CPU cores. On a GPU, for example:
  python -m dictionary_learning_aligned demo --device cuda --autocast bfloat16 --tokens 10000000 \\
      --dict-size 16384 --batch-size 4096 --buffer-ctxs 8000 --refresh-batch-size 256
Compare SAEs at matched L0: with the same L1 penalty the aligned SAE usually reaches a different L0 (TopK/
BatchTopK, --arch topk, fix L0 = k)."""


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


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, choices: dict | None = None) -> None:
    """One ``--flag`` per dataclass field, with its default and docstring as help (and ``choices[name]``)."""
    choices = choices or {}
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
        parser.add_argument(flag, type=tp, default=f.default, choices=choices.get(f.name),
                            help=f"{helps.get(f.name, '')} (default: {f.default})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dictionary_learning_aligned",
                                     description="Aligned training of sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a standard and an aligned SAE side by side and compare them",
                          description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(demo, DemoConfig, CHOICES)
    args = parser.parse_args(argv)
    if args.command == "demo":
        cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
        try:
            run_demo(cfg)
        except (ValueError, TypeError, OSError, FloatingPointError) as e:  # OSError: files, folders, permissions
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
