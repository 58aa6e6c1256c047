"""Command-line value parsers, and the parser class that turns their `ArgumentTypeError`
into one usage line.

Shared by the robot's `retrain` command and every `tinypolicy` command (tinypolicy.config
derives its flags' parsing, and the range checks of presets and stored configs, from
these), so a bad number reads the same everywhere.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, as every other refusal is:
    "PROG: error: MESSAGE (see PROG --help)" and exit status 2. Its subcommands' parsers
    are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _convert(kind: type, text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None


def _integer(text: str) -> int:
    return _convert(int, text)


def positive_int(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """Zero or more (a warm-up that may be skipped)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {value}")
    return value


SEEDS = 2**32  # seeds 0 .. 2**32 - 1, with the offsets the stages add, are what NumPy, torch and Gymnasium all take


def random_seed(text: str) -> int:
    """A seed every random generator takes: NumPy refuses negative ones, torch overflows on huge ones."""
    value = _integer(text)
    if not 0 <= value < SEEDS:
        raise argparse.ArgumentTypeError(f"must be in [0, {SEEDS - 1}], got {value}")
    return value


def _number(text: str) -> float:
    return _convert(float, text)


def positive_float(text: str) -> float:
    """A finite number above zero (learning rates, noise scales): nan and inf are refused here
    rather than discovered as a diverged run."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def float_in(low: float, high: float = math.inf, ends: str = "[)") -> Callable[[str], float]:
    """A parser of finite numbers from `low` to `high`; `ends` says which of them belong to the
    interval, as in interval notation: float_in(0, 1, "(]") for a discount factor."""
    def parse(text: str) -> float:
        value = _number(text)
        above = low <= value if ends[0] == "[" else low < value
        below = value <= high if ends[1] == "]" else value < high
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {text!r}")
        return value

    return parse


def layer_sizes(text: str) -> tuple[int, ...]:
    """Comma-separated positive sizes, e.g. hidden widths "256,256"."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,256, got {text!r}") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values
