"""Command line: ``python -m dictionary_learning_aligned COMMAND [flags]`` (``COMMAND -h`` describes each).

One dispatcher over the package's commands; each command's module is imported only when it is run, so
``--help`` is fast and a command whose optional dependencies are missing does not break the others. The old
module entry points stay as aliases: ``python -m dictionary_learning_aligned.train`` is ``... train`` and
``python -m dictionary_learning_aligned.reproduce`` is ``... reproduce``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional

PROG = "python -m dictionary_learning_aligned"

DEMO_HELP = """Harvest activations of a language model layer, train a standard and an aligned SAE side by side on the
same batches, evaluate both on held-out text, and compare them.

Writes into --out: results.json (settings, metrics, training logs, timings, versions), results.md (summary
table), alignment_hist.pdf/.png (alignment-score histograms) and dictionaries/trainer_{i}/ (ae.safetensors +
config.json; for each seed a standard then an aligned SAE). The defaults use SmolLM2-135M-Instruct layer 12 and
the bundled corpus on CPU (see the README for the measured time). On a GPU, for example:
  python -m dictionary_learning_aligned demo --device cuda --autocast bfloat16 --tokens 10000000 \\
      --dict-size 16384 --batch-size 4096 --buffer-ctxs 8000 --refresh-batch-size 256
Compare SAEs at matched L0: with the same L1 penalty the aligned SAE usually reaches a different L0 (TopK/
BatchTopK, --arch topk, fix L0 = k)."""


def demo_main(argv: Optional[list[str]] = None, prog: str = f"{PROG} demo") -> int:
    """``demo``: parse :class:`.demo.DemoConfig` from ``argv`` and run :func:`.demo.run_demo`; returns the exit
    status (2 with a one-line error for a bad setting, a missing file or a refused overwrite)."""
    from .cli import config_parser, parse_config, run_reporting_errors, set_verbosity
    from .demo import DemoConfig, run_demo

    cfg = parse_config(config_parser(prog, DemoConfig, DEMO_HELP), argv)
    set_verbosity(getattr(cfg, "verbose", False))
    return run_reporting_errors(run_demo, cfg)


def _module_main(module: str, *prefix: str, pass_prog: bool = True) -> Callable[[list[str], str], int]:
    """A command that imports ``module`` when run and calls its ``main`` with ``prefix + argv``."""

    def command(argv: list[str], prog: str) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            print(f"error: this command needs {module}, which is not part of this installation yet "
                  f"(ModuleNotFoundError: {e.name})", file=sys.stderr)
            return 2
        args = [*prefix, *argv]
        return mod.main(args, prog=prog) if pass_prog else mod.main(args)

    return command


#: name -> (one-line help, runner(argv, prog) -> exit status)
COMMANDS: dict[str, tuple[str, Callable[[list[str], str], int]]] = {
    "demo": ("train a standard and an aligned SAE side by side on the same batches and compare them",
             lambda argv, prog: demo_main(argv, prog)),
    "train": ("train a sweep of dictionaries from an activation cache (built first if missing), on one or "
              "several GPUs", _module_main("dictionary_learning_aligned.train")),
    "reproduce": ("run an experiment of the paper (main, sizes, tying, ablation, gemma) into a results store",
                  _module_main("dictionary_learning_aligned.reproduce.command")),
    "evaluate": ("run SAEBench evals (core, scr, tpp, sparse_probing, autointerp) on dictionaries; the same as "
                 "`python -m benchmarks run`", _module_main("benchmarks.__main__", "run", pass_prog=False)),
    "export": ("write a dictionary in dictionary_learning's or SAELens's format",
               _module_main("dictionary_learning_aligned.interop", "export", pass_prog=False)),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the commands (each command parses its own flags)."""
    p = argparse.ArgumentParser(prog=PROG, description="Aligned training of sparse autoencoders (arXiv 2605.18629).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run `" + PROG + " COMMAND -h` for the flags of a command. Figures and "
                                "tables: `python -m figures -h`.")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                   help="one of: " + "; ".join(f"{n}: {h}" for n, (h, _) in COMMANDS.items()))
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``COMMAND`` with the rest of ``argv`` (default ``sys.argv[1:]``); returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv[:1])  # prints help (-h) or a usage error naming the commands; exits
        return 2
    _, run = COMMANDS[argv[0]]
    return run(argv[1:], f"{PROG} {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
