"""The study report's document model (sections of blocks: headings, paragraphs, notes, tables, figures), which
both outputs (HTML and Markdown) are rendered from, and the text forms of its numbers."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Table:
    """One table for both outputs: header and rows of plain text. ``strong``: rows in bold (the best arm);
    ``bold``: single cells (row, column) in bold; ``text_cols``: left-aligned columns (numbers align right)."""
    id: str
    header: list[str]
    rows: list[list[str]]
    strong: list[bool] = field(default_factory=list)
    first_attr: str = "arm"  # data attribute naming the first cell (for tools and tests)
    bold: set = field(default_factory=set)
    text_cols: tuple = (0,)

    def is_bold(self, i: int, j: int) -> bool:
        return (i < len(self.strong) and self.strong[i]) or (i, j) in self.bold


@dataclass
class Block:
    """A piece of a section: a heading, a paragraph, a note, a table or a figure (figures: HTML only)."""
    kind: str
    text: str = ""
    table: Table | None = None
    figure: Any = None
    name: str = ""


# ---- numbers as text ----

def num(v: Any, digits: int = 3) -> str:
    """A value: n/a for None / NaN, yes / no for bools, ints as they are, floats with ``digits`` decimals."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def mean_pm(st: dict | None) -> str:
    """``mean ± std`` of a :func:`~medbench.study.stats.mean_std` dict (the mean alone without a std)."""
    st = st or {}
    if st.get("mean") is None:
        return "n/a"
    return num(st["mean"]) if st.get("std") is None else f"{num(st['mean'])} ± {num(st['std'])}"


def ci_text(ci: Sequence[float] | None) -> str:
    """A CI as ``lo–hi``, or ``lo to hi`` when it reaches below zero (an en dash beside a minus reads badly)."""
    if not ci:
        return "n/a"
    return f"{num(ci[0])} to {num(ci[1])}" if min(ci) < 0 else f"{num(ci[0])}–{num(ci[1])}"


def p_text(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def params_text(n: int | None) -> str:
    """A parameter count in k or M."""
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def slug(text: str) -> str:
    """``text`` as an HTML id part."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
