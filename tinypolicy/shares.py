"""A return as a share of a reference return (the expert's, the teacher's), and as a table shows it.

A share means something only against a positive reference: on Pendulum every return is
negative, and a share of a negative or zero return would flip sign or divide by zero.
"""
from __future__ import annotations

import math

NOT_APPLICABLE = "n/a"  # a table's cell for a share that means nothing


def positive_reference(reference: float | None) -> bool:
    """Whether shares of `reference` mean anything: it is a positive finite number."""
    return reference is not None and math.isfinite(reference) and reference > 0


def share_of(value: float, reference: float | None) -> float | None:
    """`value / reference`; None unless `reference` is a positive finite number."""
    return float(value / reference) if positive_reference(reference) else None


def percent(share: float | None) -> str:
    """A share as a table cell: "57%", or "n/a" for None."""
    return NOT_APPLICABLE if share is None else f"{share:.0%}"
