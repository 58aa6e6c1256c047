"""Command-line value parsers: argparse turns their `ArgumentTypeError` into one usage line.

Shared by the robot's `retrain` command and every `tinypolicy` command (tinypolicy.config
derives its flags' parsing from these), so a bad number reads the same everywhere.
"""
from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above zero (learning rates, noise scales): nan and inf are refused here
    rather than discovered as a diverged run."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def layer_sizes(text: str) -> tuple[int, ...]:
    """Comma-separated positive sizes, e.g. hidden widths "256,256"."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,256, got {text!r}") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values
