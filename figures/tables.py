"""The results tables: one row per group of a results store (records that differ only by seed), with mean ± std
over seeds of the main metrics (``python -m figures table --results DIR [--experiment main] [--format ...]``) or of
the SAEBench metrics found under ``DIR/saebench/`` (the same command with ``--saebench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from .averages import mean_std
from .labels import ARCH_LABEL, ARCH_ORDER, SPARSITY_LABEL
from .records import alignment_key, field_getter, load_records, mode_name, point_steps
from .saebench_results import load_saebench, load_saebench_dictionaries, saebench_bos_caveat
from .training_budget import fmt_tokens

#: (column title, getter, digits) of the table
COLUMNS = (
    ("L0", field_getter("metrics", "l0"), 1),
    ("FVE", field_getter("metrics", "frac_variance_explained"), 3),
    ("CE loss recovered", field_getter("metrics", "frac_recovered"), 3),
    ("alive", field_getter("metrics", "frac_alive"), 3),
    ("mean a_i", field_getter("alignment_scores", "mean"), 3),
    ("a_i < 0.5", field_getter("alignment_scores", "frac_below_0.5"), 3),
    ("MCS", field_getter("stability", "mcs"), 3),
    ("max cos > 0.7", field_getter("stability", "frac_above_0.7"), 3),
)


#: SAEBench columns of ``table --saebench``: (title, name in :data:`figures.saebench_results.SAEBENCH_METRICS`, digits)
SAEBENCH_COLUMNS = (
    ("core FVE", "core_fve", 3), ("core FVE per token", "core_fve_per_token", 3), ("core CE score", "core_ce_score", 3), ("SCR@20", "scr", 3), ("TPP@20", "tpp", 3),
    ("LLM probe", "probe_llm", 3), ("SAE probe", "probe_sae", 3), ("SAE top-1", "probe_top1", 3),
    ("SAE top-5", "probe_top5", 3), ("autointerp", "autointerp", 3),
    ("autointerp if 'none'", "autointerp_all_inactive", 3),  # the score of a judge that always answers "none"
)


def _cell(values: list, digits: int) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    cell = f"{m:.{digits}f}" if n == 1 or s < 0.5 * 10 ** -digits else f"{m:.{digits}f} ± {s:.{digits}f}"
    return cell if n == len(values) else f"{cell} (n={n})"  # some seeds lack this value


def results_table(records: Iterable[dict], experiment: Optional[str] = None, fmt: str = "markdown",
                  columns: Optional[Iterable[tuple[str, Callable[[dict], Optional[float]], int]]] = None) -> str:
    """Mean (± population std over seeds, omitted when it rounds to 0) of L0, FVE, CE loss recovered, alive
    fraction, alignment-score mean and fraction below 0.5, and the group's MCS / fraction of features with max
    cosine > 0.7 to the other seeds, per group (experiment, architecture, alignment with the penalty's
    coefficient, dict_size, sparsity, and the step point of records evaluated from checkpoints of a longer run:
    ``ReLU project @ step 2,500``). A cell whose value some of the group's records lack says over how many it was
    taken, ``(n=2)``.

    Args:
        records: results-store records (:mod:`dictionary_learning_aligned.records`).
        experiment: keep only this experiment's records.
        fmt: ``"markdown"`` or ``"text"`` (tab-separated).
        columns: ``(title, getter(record) -> value or None, digits)`` per column instead of :data:`COLUMNS`.

    Raises:
        ValueError: an unknown ``fmt``, or no records left to show.
    """
    columns = COLUMNS if columns is None else tuple(columns)
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt must be 'markdown' or 'text', got {fmt!r}")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if experiment is None or r["experiment"] == experiment:
            key = (r["experiment"], ARCH_ORDER.index(r["arch"]) if r["arch"] in ARCH_ORDER else 99, r["arch"],
                   r["dict_size"], r["sparsity"]["name"], r["sparsity"]["value"], point_steps(r) or 0,
                   alignment_key(r))
            groups.setdefault(key, []).append(r)
    if not groups:
        raise ValueError(f"no records{f' of experiment {experiment!r}' if experiment else ''} to tabulate")
    head = ["experiment", "SAE", "dict_size", "sparsity", "seeds", "train tokens"] + [c[0] for c in columns]
    rows = []
    for (exp, _, arch, d, sname, sval, step, mode), recs in sorted(groups.items(), key=lambda kv: kv[0][:7] + (
            kv[0][7] != "standard", kv[0][7])):
        toks = sorted({r.get("train_tokens") for r in recs})
        rows.append([exp, f"{ARCH_LABEL.get(arch, arch)} {mode}" + (f" @ step {step:,}" if step else ""), str(d),
                     f"{SPARSITY_LABEL.get(sname, sname)} {sval:g}",
                     str(len(recs)), "/".join(fmt_tokens(t) for t in toks if t)]
                    + [_cell([get(r) for r in recs], digits) for _, get, digits in columns])
    if fmt == "text":
        return "\n".join("\t".join(r) for r in [head] + rows)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def saebench_table(results, experiment: Optional[str] = None, fmt: str = "markdown") -> str:
    """:func:`results_table` of the SAEBench metrics (:data:`SAEBENCH_COLUMNS`: core FVE, pooled and per token, and
    CE score, SCR and TPP at 20 latents, sparse-probing accuracy of the LLM probe, the SAE probe on all latents and
    on its top 1 / 5 latents, autointerp score and the score of answering "none" to every autointerp example,
    :func:`figures.saebench_results.autointerp_chance_levels`) for the records of the store ``results`` that have
    SAEBench results under ``results/saebench/`` (matched by record id, :func:`figures.saebench_results.load_saebench`).

    When ``results`` is not a results store (no ``records/``) but the output folder of ``python -m benchmarks run
    --dictionaries ... --out DIR``, the table has one row per dictionary instead (:func:`dictionaries_saebench_table`).

    Raises:
        FileNotFoundError: ``results`` is neither a results store nor a folder.
        ValueError: no record (of ``experiment``) has SAEBench results (the message says where they were looked
            for), two SAEBench files give the same metric for one record, or a bad ``fmt``.
    """
    if not (Path(results) / "records").is_dir() and Path(results).is_dir():
        if experiment is not None:
            raise ValueError(f"{results} is an output folder of `benchmarks run --dictionaries`, not a results store: "
                             f"it has no experiments (drop --experiment)")
        return dictionaries_saebench_table(results, fmt)
    sb, n_files = load_saebench(results)
    records = [r for r in load_records(results) if r["id"] in sb and experiment in (None, r["experiment"])]
    if not records:
        raise ValueError(f"no record{f' of experiment {experiment!r}' if experiment else ''} of {results} has "
                         f"SAEBench results in {Path(results) / 'saebench'} ({n_files} JSON files there); run "
                         f"`python -m benchmarks run --results-store {results}` (after `bash scripts/install.sh "
                         f"--saebench`)")
    cols = [(title, (lambda r, name=name: sb[r["id"]].get(name)), digits) for title, name, digits in SAEBENCH_COLUMNS]
    table = results_table(records, experiment, fmt, columns=cols)
    caveat = saebench_bos_caveat(results)
    return table if caveat is None else table + ("\n\n" if fmt == "markdown" else "\n# ") + f"Caveat: {caveat}."


def _sae_label(desc: dict) -> str:
    """``"<architecture label> <alignment>"`` of a dictionary described by ``benchmarks run`` (its trainer class's
    registered architecture; the trainer or dictionary class name when none is registered)."""
    from dictionary_learning_aligned import registry

    tc = desc.get("trainer_class")
    arch = registry.for_trainer(tc) if isinstance(tc, str) else None
    name = ARCH_LABEL.get(arch.name, arch.label) if arch is not None else (tc or desc.get("dict_class") or "?")
    return f"{name} {mode_name(desc.get('alignment'))}"


def dictionaries_saebench_table(folder, fmt: str = "markdown") -> str:
    """The SAEBench metrics (:data:`SAEBENCH_COLUMNS`) of every dictionary evaluated by ``python -m benchmarks run
    --dictionaries ... --out folder``: one row per dictionary (name, architecture and alignment from its trainer
    class, dict_size, trainer class), read by :func:`figures.saebench_results.load_saebench_dictionaries`. Built-in,
    extension and users' plug-in trainers alike.

    Raises:
        ValueError: no SAEBench result under ``folder`` (the message says what to run), two files give the same
            metric for one dictionary, or a bad ``fmt``.
    """
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt must be 'markdown' or 'text', got {fmt!r}")
    sb, n_files = load_saebench_dictionaries(folder)
    if not sb:
        raise ValueError(f"no SAEBench results of dictionaries in {folder} ({n_files} JSON files there); run "
                         f"`python -m benchmarks run --dictionaries DIR --out {folder}`, or pass a results store")
    head = ["dictionary", "SAE", "dict_size", "trainer"] + [title for title, _, _ in SAEBENCH_COLUMNS]
    rows = []
    for name in sorted(sb):
        desc = sb[name].get("dictionary", {})
        rows.append([name, _sae_label(desc), str(desc.get("d_sae", "?")), str(desc.get("trainer_class", "?"))]
                    + [_cell([sb[name].get(key)], digits) for _, key, digits in SAEBENCH_COLUMNS])
    if fmt == "text":
        return "\n".join("\t".join(r) for r in [head] + rows)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])
