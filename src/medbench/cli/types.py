"""argparse value types: whole numbers and finite numbers in a range, devices, names and comma-separated lists.

Each refuses a bad value with one line naming the flag (argparse adds ``argument --flag:``)."""
from __future__ import annotations

import argparse
import math
import re

from medbench.config import SEED_LIMIT


def _whole(text: str) -> int:
    """A whole number; '1e3' is read as 1000 (so '1e8' meets the range check, not a parse error)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not v.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(v)


def int_in(lo: int, hi: int):
    """argparse type: a whole number in [lo, hi] (hi bounds what memory or the libraries can take)."""
    def parse(text: str) -> int:
        v = _whole(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {v}")
        return v
    return parse


def float_in(lo: float, hi: float, lo_open: bool = False):
    """argparse type: a finite number in [lo, hi] ((lo, hi] with ``lo_open``); NaN and inf are refused."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(f"must be a finite number {'above' if lo_open else 'from'} {lo} "
                                             f"{'and at most' if lo_open else 'to'} {hi}, got {text}")
        return v
    return parse


SEED = int_in(0, SEED_LIMIT - 1)


def device(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (torch's own error lists every device type it was built for)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def nonempty(text: str) -> str:
    """argparse type: a non-empty name."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def names(text: str) -> list[str]:
    """argparse type: ``a,b`` -> ``["a", "b"]`` (blanks dropped; the config says when none is left)."""
    return [c.strip() for c in text.split(",") if c.strip()]


def numbers(text: str) -> list[float]:
    """argparse type: ``0.5,0.75`` -> ``[0.5, 0.75]`` (ranges are checked by the config)."""
    try:
        return [float(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0.5,0.75, got {text!r}") from None


def number_or_numbers(text: str) -> float | list[float]:
    """argparse type: ``0.5`` -> ``0.5`` (every channel), ``0.485,0.456,0.406`` -> one per channel."""
    try:
        values = [float(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, or one per channel separated by commas, e.g. "
                                         f"0.485,0.456,0.406, got {text!r}") from None
    return values[0] if len(values) == 1 else values
