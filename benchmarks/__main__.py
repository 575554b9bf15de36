"""``python -m benchmarks run ...``: the SAEBench harness (see ``benchmarks/saebench`` and ``run -h``).

The other benchmarks are modules of their own: ``python -m benchmarks.speed`` (training throughput),
``python -m benchmarks.multigpu`` (one GPU against several), ``python -m benchmarks.syncs`` (host
synchronisations of training steps), ``python -m benchmarks.harvest`` (the activation harvest's speed and error in
float32, TF32 and bfloat16) and ``python -m benchmarks.massive_tokens`` (a
dictionary's error on the language model's massive-activation tokens)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from dictionary_learning_aligned.cli import SETTING_ERRORS, run_reporting_errors

#: errors that are the user's (found before any eval runs; a failing eval raises EvalFailed, with its traceback);
#: a missing SAEBench is one (its message names the install step: :func:`benchmarks.saebench.import_saebench`)
USER_ERRORS = SETTING_ERRORS + (ModuleNotFoundError,)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: names the subcommand ``run`` (which parses its own flags) and the other benchmarks."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmarks of this library's dictionaries.",
        epilog="commands:\n"
               "  run    SAEBench evals (core, scr, tpp, sparse_probing, autointerp) on dictionaries or a results\n"
               "         store, offline by default; `python -m benchmarks run -h` lists its flags\n"
               "other benchmarks (modules of their own, each with -h):\n"
               "  python -m benchmarks.speed           training throughput, standard vs aligned\n"
               "  python -m benchmarks.multigpu        data-parallel training against one GPU\n"
               "  python -m benchmarks.syncs           host synchronisations per training step (GPU)\n"
               "  python -m benchmarks.harvest         harvest speed and error: float32, TF32, bfloat16\n"
               "  python -m benchmarks.massive_tokens  error share of massive-activation tokens")
    p.add_argument("command", choices=("run",), metavar="COMMAND", help="run (the SAEBench harness)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Dispatch ``run`` to :func:`benchmarks.saebench.cli.main`; returns the exit status (2 with a one-line error
    for a bad argument, a missing folder, a refused overwrite or SAEBench not installed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["run"]:
        build_parser().parse_args(argv[:1])  # -h prints the help, anything else a usage error; both exit
        return 2
    return run_reporting_errors(_run, argv[1:], USER_ERRORS)


def _run(argv: list[str]) -> int:
    """:func:`benchmarks.saebench.cli.main`, imported here so that a missing SAEBench is reported as a user's
    error (:data:`USER_ERRORS`), not a traceback."""
    from benchmarks.saebench.cli import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
