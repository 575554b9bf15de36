"""What records were trained on, for captions and tables: each record's training budget (scale, model, recipe,
steps, batch size, tokens; derived for records that predate those fields), their summary over many records and
the one line that states it. (The ``budget`` experiment's figure, claims against steps, is :mod:`figures.budget`.)"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

from .records import finite

#: what a record that predates the ``recipe`` field says about its recipe
UNRECORDED = "unrecorded"


def fmt_tokens(n: float) -> str:
    """A token count in short form: ``24.6k``, ``20M``, ``2B`` (three significant digits)."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _derived_batch(train_tokens, steps) -> Optional[int]:
    """``train_tokens / steps`` rounded to the power of two within 0.5% of it (a run whose last batch was cut short
    reads 8,190 for 8,192), else to the nearest integer; None when either is missing or steps is not positive."""
    if not (finite(train_tokens) and finite(steps)) or steps <= 0 or train_tokens <= 0:
        return None
    b = train_tokens / steps
    p2 = 2 ** round(math.log2(b))
    return int(p2) if abs(b - p2) <= 0.005 * p2 else int(round(b))


def record_budget(record: dict) -> dict:
    """The training budget of one record, from its own fields where it has them.

    Records written before the budget fields (``recipe``, ``steps``, ``batch_size``) existed get them derived:
    ``steps`` from the trainer config's ``steps``, ``batch_size`` from ``train_tokens / steps``
    (:func:`_derived_batch`), ``recipe`` :data:`UNRECORDED`.

    Returns:
        ``{"scale", "model", "recipe", "steps", "batch_size", "train_tokens", "unique_tokens", "epochs",
        "derived"}``; numbers are None when neither recorded nor derivable, ``derived`` lists the fields that were
        derived (e.g. ``["steps", "batch_size"]``).
    """
    derived = []
    steps = record.get("steps")
    if not finite(steps):
        steps = (record.get("trainer") or {}).get("steps") if isinstance(record.get("trainer"), dict) else None
        steps = steps if finite(steps) else None
        derived += ["steps"] if steps is not None else []
    batch = record.get("batch_size")
    if not finite(batch):
        batch = _derived_batch(record.get("train_tokens"), steps)
        derived += ["batch_size"] if batch is not None else []
    tokens = record.get("train_tokens")
    return {"scale": record.get("scale"), "model": record.get("model"), "recipe": record.get("recipe") or UNRECORDED,
            "steps": steps, "batch_size": batch, "train_tokens": tokens if finite(tokens) else None,
            "unique_tokens": record.get("unique_tokens") if finite(record.get("unique_tokens")) else None,
            "epochs": record.get("epochs") if finite(record.get("epochs")) else None, "derived": derived}


def _span(values, fmt: Callable[[float], str]) -> Optional[str]:
    """``"a"`` when the values print alike (``fmt`` formats one number), ``"lo-hi"`` otherwise, None for none."""
    v = sorted({x for x in values if x is not None})
    if not v:
        return None
    lo, hi = fmt(v[0]), fmt(v[-1])
    return lo if lo == hi else f"{lo}-{hi}"


def budget_summary(records: Iterable[dict]) -> dict:
    """The budgets (:func:`record_budget`) of ``records`` summarized: ``{"scales", "models", "recipes"}`` (sorted
    distinct names), ``{"steps", "batch_size", "train_tokens", "unique_tokens", "epochs"}`` (``"a"`` or ``"lo-hi"``
    text, None when no record has the value), ``"mixed"`` (whether the steps, batch sizes, token counts or recipes
    differ between records, counts by more than 0.1%), ``"derived"`` (fields derived for some record) and ``"n"`` (records)."""
    budgets = [record_budget(r) for r in records]
    col = lambda k: [b[k] for b in budgets]  # noqa: E731
    names = lambda k: sorted({str(x) for x in col(k)})  # noqa: E731
    out = {"scales": names("scale"), "models": names("model"), "recipes": names("recipe"), "n": len(budgets),
           "steps": _span(col("steps"), lambda x: f"{x:,.0f}"),
           "batch_size": _span(col("batch_size"), lambda x: f"{x:,.0f}"),
           "train_tokens": _span(col("train_tokens"), fmt_tokens),
           "unique_tokens": _span(col("unique_tokens"), fmt_tokens),
           "epochs": _span(col("epochs"), lambda x: f"{x:g}"),
           "derived": sorted({d for b in budgets for d in b["derived"]})}
    out["mixed"] = len(out["recipes"]) > 1 or any(_differ(col(k)) for k in ("steps", "batch_size", "train_tokens"))
    return out


#: budgets closer than this (relative) are one budget: the faithful store's 48,828 and 48,829 steps (one 64-row
#: epoch-end batch dropped from the ninth session on) are not a mixture
SAME_BUDGET_RTOL = 1e-3


def _differ(values: list) -> bool:
    """Whether the known (not None) ``values`` differ by more than :data:`SAME_BUDGET_RTOL` of the largest."""
    known = [float(v) for v in values if v is not None]
    return bool(known) and max(known) - min(known) > SAME_BUDGET_RTOL * max(abs(v) for v in known)


def same_budget(a: dict, b: dict) -> bool:
    """Whether records ``a`` and ``b`` were trained on one budget (:func:`record_budget`, so steps and batch size
    are derived for old records): the same scale and recipe, steps, batch size and training tokens within
    :data:`SAME_BUDGET_RTOL`. Each field is compared only where both records state it (a recipe :data:`UNRECORDED`
    or a number None is not compared), so two records that predate the ``recipe`` field are one budget when their
    steps agree, and two without steps when their training tokens do."""
    ba, bb = record_budget(a), record_budget(b)
    numbers = ("steps", "batch_size", "train_tokens")
    known = [k for k in ("scale", "recipe", *numbers) if None not in (ba[k], bb[k])
             and UNRECORDED not in (ba[k], bb[k])]
    return not any(_differ([ba[k], bb[k]]) if k in numbers else ba[k] != bb[k] for k in known)


def budget_line(records: Iterable[dict], *, model: bool = True) -> str:
    """One line stating what the records were trained on, for a figure's caption or a table's caption, e.g.
    ``scale small · model smollm2-135m-instruct · recipe unrecorded · steps 2,442 · batch 8,192 (derived from
    tokens/steps) · 20M training tokens (20M unique, 1 epoch)``; records of different budgets give ranges and
    start with ``mixed budgets:`` (``mixed budgets: ... steps 2,442-48,829 ...``). ``model=False`` leaves the
    model out (figures name it in their title). Empty for no records."""
    s = budget_summary(records)
    if not s["n"]:
        return ""
    parts = [f"scale {', '.join(s['scales'])}"]
    if model:
        parts.append(f"model {', '.join(s['models'])}")
    parts.append(f"recipe {', '.join(s['recipes'])}")
    parts.append(f"steps {s['steps'] or UNRECORDED}")
    parts.append(f"batch {s['batch_size'] or UNRECORDED}"
                 + (" (derived from tokens/steps)" if "batch_size" in s["derived"] else ""))
    tokens = f"{s['train_tokens'] or UNRECORDED} training tokens"
    if s["unique_tokens"] or s["epochs"]:
        epochs = s["epochs"] or UNRECORDED
        tokens += (f" ({s['unique_tokens'] or UNRECORDED} unique, {epochs} epoch"
                   + ("" if epochs == "1" else "s") + ")")
    parts.append(tokens)
    return ("mixed budgets: " if s["mixed"] else "") + " · ".join(parts)
