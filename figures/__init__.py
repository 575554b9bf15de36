"""Figures and claims table of arXiv 2605.18629 ("Aligned Training"), drawn only from the records of a results
store (:mod:`dictionary_learning_aligned.records`); no trainer is imported.

Command line::

    python -m figures --results DIR --out DIR [--only fig2,fig10]   # one PDF + PNG per figure
    python -m figures claims --results DIR [--format markdown|text]  # the claims table
    python -m figures claims --results DIR --compare DIR_B           # two claims tables side by side
    python -m figures ablations --results DIR [--out DIR]            # the referee's ablations (not in the paper)
    python -m figures budget --results DIR [--out DIR] [--reference STORE]  # claims against steps (not in the paper)

Python::

    from figures import FIGURES, render_all, claims_table, format_claims
    results = render_all("results_store", "figs_out")        # list of FigureResult
    print(format_claims(claims_table(load_records("results_store"))))
"""

from .records import load_records
from .saebench_results import load_saebench
from .claims import claims_report, claims_table, format_claims
from .compare import compare_claims
from .paper import FIGURES, FigureResult, FigureSpec, render_all

__all__ = ["FIGURES", "FigureResult", "FigureSpec", "render_all", "claims_table", "claims_report", "compare_claims",
           "format_claims", "load_records", "load_saebench"]
