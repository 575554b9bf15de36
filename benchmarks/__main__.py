"""``python -m benchmarks run ...``: the SAEBench harness (see ``benchmarks/saebench``). The throughput benchmark
is ``python -m benchmarks.speed``."""

import sys


def main(argv=None) -> int:
    """Dispatch ``run`` to :func:`benchmarks.saebench.cli.main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run",) or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks run --dictionaries DIR [DIR ...] --out DIR [--evals core,scr,tpp,"
              "sparse_probing,autointerp] ...   (python -m benchmarks run -h for all options)\n"
              "       python -m benchmarks.speed ...   (training throughput)", file=sys.stderr)
        return 2
    from benchmarks.saebench.cli import main as run_main

    try:
        return run_main(argv[1:])
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as e:
        # user mistakes, found before any eval runs (a failing eval raises EvalFailed, with its traceback)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
