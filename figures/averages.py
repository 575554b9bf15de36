"""Records averaged over their seeds: one :class:`Point` per record group (means and population stds of two
fields), and the mean, std and count of a list of values with their text form."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from .records import L0, Getter, finite, mode_name


@dataclass
class Point:
    """One configuration (record group) averaged over its seeds: ``x``/``y`` means, ``*_std`` population std
    (ddof 0; 0 for one seed), ``n`` seeds with both values."""

    group: str
    arch: str
    alignment: Optional[str]
    dict_size: int
    sparsity: float
    n: int
    x: float
    x_std: float
    y: float
    y_std: float
    records: list = field(default_factory=list, repr=False)


def aggregate(records: Iterable[dict], y: Getter, x: Getter = L0) -> list[Point]:
    """Average ``x(record)`` and ``y(record)`` over the seeds of each record group.

    Records where either value is missing or non-finite are left out. Points are sorted by (arch, alignment,
    dict_size, x).
    """
    groups = defaultdict(list)
    for r in records:
        if finite(x(r)) and finite(y(r)):
            groups[r["group"]].append(r)
    pts = []
    for g, rs in groups.items():
        xs, ys = np.array([x(r) for r in rs], float), np.array([y(r) for r in rs], float)
        r0 = rs[0]
        pts.append(Point(g, r0["arch"], r0["alignment"], r0["dict_size"], float(r0["sparsity"]["value"]), len(rs),
                         float(xs.mean()), float(xs.std()), float(ys.mean()), float(ys.std()), rs))
    return sorted(pts, key=lambda p: (p.arch, mode_name(p.alignment), p.dict_size, p.x))


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, population std, n) of the finite values; (nan, nan, 0) when there are none."""
    v = np.array([x for x in values if finite(x)], float)
    return (float(v.mean()), float(v.std()), len(v)) if len(v) else (math.nan, math.nan, 0)


def fmt_ms(m: float, s: float, n: int, digits: int = 3) -> str:
    """``"m ± s (n)"`` (just ``"m"`` for n == 1, ``"n/a"`` for n == 0)."""
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"
