"""``python -m figures --results DIR --out DIR [--only fig2,fig10]`` and
``python -m figures claims --results DIR [--compare DIR_B] [--format markdown|text]`` and
``python -m figures table --results DIR [--experiment NAME] [--saebench] [--format markdown|text]`` and, for the
experiments beyond the paper's figures, ``python -m figures ablations --results DIR [--out DIR]`` (the referee's
ablations: table and figure) and ``python -m figures budget --results DIR [--out DIR] [--reference STORE]``
(claims against steps: table and figure).

Exit codes: 0 when at least one figure was written (claims: the table was printed), 1 when none was, 2 when
the results store is missing (claims: or holds no record at a full training budget) or an argument is wrong, 141
when the reader of the output closed it early (``... | head``; no traceback)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from .labels import SMOKE_NOTE
from .records import load_records
from .training_budget import budget_line
from .claims import at_full_budget, claims_report
from .compare import compare_claims
from .paper import FIGURES, check_out_folder, render_all
from .tables import results_table, saebench_table


def _figures_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m figures",
        usage="python -m figures --results DIR --out DIR [--only figN,...]\n"
              "       python -m figures claims|table|ablations|budget --results DIR ...  (each has its own --help)",
        description="Draw the paper's figures from a results store (one PDF + PNG "
        "preview each). Subcommands: `python -m figures claims --results DIR` prints the claims table, "
        "`python -m figures table --results DIR` the metrics per group, `python -m figures ablations|budget --results "
        "DIR [--out DIR]` the tables and figures of the experiments beyond the paper.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="figures (and the records each needs):\n" + "\n".join(
            f"  {n:6s} {s.title}\n         needs {s.needs}" for n, s in FIGURES.items()))
    p.add_argument("--results", required=True, help="results store folder (holding records/)")
    p.add_argument("--out", required=True, help="output folder for figN.pdf / figN.png")
    p.add_argument("--only", help="comma-separated figure names, e.g. fig2,fig10 (default: all)")
    return p


def _claims_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m figures claims",
                                description="Check the paper's claims against the records of a results store, each "
                                "dictionary at its full training budget (records at step points before their run's "
                                "end are left out and counted: `python -m figures budget` reads them).")
    p.add_argument("--results", required=True, help="results store folder (holding records/)")
    p.add_argument("--format", choices=("markdown", "text"), default="markdown",
                   help="markdown table or aligned plain text (default markdown)")
    p.add_argument("--aligned", default="project", help="alignment mode compared with standard (default project)")
    p.add_argument("--compare", metavar="DIR_B", help="a second results store: print both claims tables side by "
                   "side (per claim and setting: each store's verdict, steps and key numbers, and each store's "
                   "budget line)")
    return p


def _table_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m figures table",
                                description="Mean ± std over seeds of the main metrics, one row per group.")
    p.add_argument("--results", required=True, help="results store folder (holding records/)")
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    p.add_argument("--saebench", action="store_true", help="the SAEBench metrics (core, SCR, TPP, sparse probing, "
                   "autointerp) of the records with results under DIR/saebench/")
    p.add_argument("--format", choices=("markdown", "text"), default="markdown",
                   help="markdown table or aligned plain text (default markdown)")
    return p


def _extra_parser(name: str) -> argparse.ArgumentParser:
    """The command line of ``ablations`` and ``budget``: a table printed, a figure written with ``--out``."""
    what = {"ablations": "the referee's ablations (experiment 'ablations'): FVE, L0, CE loss recovered, dead "
                         "fraction, MCS and mean alignment score per alignment mode and architecture",
            "budget": "the claims against the training budget (experiment 'budget'): one column per step point, "
                      "and a figure of L0, FVE, CE loss recovered, dead fraction and MCS against steps"}[name]
    p = argparse.ArgumentParser(prog=f"python -m figures {name}", description=f"Print {what}; with --out also "
                                f"draw {name}.pdf / {name}.png.")
    p.add_argument("--results", required=True, help="results store folder (holding records/)")
    p.add_argument("--out", help="output folder for the figure (default: print the table only)")
    p.add_argument("--experiment", default=name, help=f"the experiment's name in the records (default {name})")
    p.add_argument("--format", choices=("markdown", "text"), default="markdown",
                   help="markdown table or plain text (default markdown)")
    if name == "budget":
        p.add_argument("--aligned", default="project", help="alignment mode compared with standard (default "
                       "project)")
        p.add_argument("--reference", metavar="STORE", help="another results store whose 'main' records of the "
                       "same model, architecture, dict_size and sparsity are drawn and tabulated as one more point, "
                       "labelled with their own budget (e.g. results/reproduce_small: its main records, 2,441 steps "
                       "at batch 8192)")
    return p


def _extra(name: str, argv: list[str]) -> int:
    """``ablations`` / ``budget``: print the table, draw the figure into ``--out``; 2 when the store is missing or
    holds no records of the experiment, or ``--out`` is a file, 1 when the figure could not be drawn."""
    from .ablations import ablation_figure, ablation_report
    from .budget import budget_figure, budget_report

    args = _extra_parser(name).parse_args(argv)
    try:
        if args.out:
            check_out_folder(args.out)
        records = load_records(args.results)
        if name == "ablations":
            print(ablation_report(records, args.experiment, args.format))
            draw = lambda out: ablation_figure(records, out, args.experiment)  # noqa: E731
        else:
            reference = load_records(args.reference) if args.reference else None
            print(budget_report(records, reference, args.aligned, args.experiment, args.format))
            draw = lambda out: budget_figure(records, out, reference, args.aligned, args.experiment)  # noqa: E731
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        result = draw(args.out)
        print(result.report())
        return 0 if result.written else 1
    return 0


def _store_labels(a: str, b: str) -> tuple[str, str]:
    """Names of two stores in a comparison: their folder names, else the paths as given, else ``A: path`` and
    ``B: path`` (one store compared with itself)."""
    na, nb = Path(a).resolve().name, Path(b).resolve().name
    if na != nb:
        return na, nb
    return (a, b) if a != b else (f"A: {a}", f"B: {b}")


def _claims(args) -> int:
    """``claims``: print the claims report of one store, or (``--compare``) two stores side by side."""
    try:
        records = load_records(args.results)
        other = load_records(args.compare) if args.compare else None
        for store, recs in ((args.results, records), (args.compare, other)):
            if recs is not None and not recs:
                raise ValueError(f"{store} holds no records (its records/ folder is empty): nothing to check")
            if recs and not at_full_budget(recs)[0]:
                raise ValueError(f"{store} holds only records evaluated at step points before their run's end "
                                 f"({len(recs)}, experiment {', '.join(sorted({str(r['experiment']) for r in recs}))}):"
                                 f" no dictionary at its full training budget to check; `python -m figures budget "
                                 f"--results {store}` reads them")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if other is None:
        print(claims_report(records, aligned=args.aligned, fmt=args.format))
    else:
        print(compare_claims(records, other, _store_labels(args.results, args.compare), aligned=args.aligned,
                             fmt=args.format))
    return 0


def _table(args) -> int:
    """``table``: the metrics (or ``--saebench`` metrics) per group, after a line saying what the records were
    trained on (:func:`.training_budget.budget_line`; none for a SAEBench folder without records) and, for smoke
    records, that they test the pipeline; 2 when the store is missing or holds nothing to tabulate."""
    try:
        try:
            records = load_records(args.results)
        except (FileNotFoundError, ValueError):
            if not args.saebench:
                raise
            records = []  # a SAEBench output folder of dictionaries evaluated without a results store
        body = (saebench_table(args.results, args.experiment, args.format) if args.saebench
                else results_table(records, args.experiment, args.format))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = [r for r in records if args.experiment in (None, r.get("experiment"))]
    if any(r.get("scale") == "smoke" for r in shown):
        print(SMOKE_NOTE)
    if shown:
        print(f"records: {len(shown)} · {budget_line(shown)}\n")
    print(body)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        return _table(_table_parser().parse_args(argv[1:]))
    if argv[:1] == ["claims"]:
        return _claims(_claims_parser().parse_args(argv[1:]))
    if argv[:1] in (["ablations"], ["budget"]):
        return _extra(argv[0], argv[1:])
    parser = _figures_parser()
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if only:
        unknown = [n for n in only if n not in FIGURES]
        if unknown:
            parser.error(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    try:
        results = render_all(args.results, args.out, only)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(r.report())
    n = sum(r.written for r in results)
    print(f"{n} of {len(results)} figures written to {args.out}")
    return 0 if n else 1


#: the exit code when the reader of stdout went away early: 128 + SIGPIPE, the status a shell reports for a
#: writer cut short by a closed pipe (``cat``, ``grep``), and apart from this command's own 1 and 2
EXIT_BROKEN_PIPE = 141


def run() -> int | str | None:
    """:func:`main` as ``python -m figures`` runs it: when the reader of stdout closes it before the output is
    written (``python -m figures claims ... | head -3``), exit quietly with :data:`EXIT_BROKEN_PIPE` instead of
    a ``BrokenPipeError`` traceback. Returns what :func:`sys.exit` takes (argparse's exits included)."""
    try:
        try:
            code = main()
        except SystemExit as e:  # argparse's --help and usage errors, whose text may not be flushed yet
            code = e.code
        sys.stdout.flush()  # the last buffered output: a closed pipe may show only here
    except BrokenPipeError:
        # Python flushes stdout once more at exit; pointed at devnull, that flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(run())
