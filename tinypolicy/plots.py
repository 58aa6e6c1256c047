"""Figures of the stages' reports: drawn off-screen and written atomically.

Figures are `matplotlib.figure.Figure`s on an Agg canvas, not pyplot's: making one selects
no backend for the process (a notebook that imports tinypolicy keeps its own) and registers
nothing in pyplot's list of open figures, so there is nothing to close after saving.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinypolicy.ondevice.artefact import atomic_write


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A new off-screen figure and its axes, as `pyplot.subplots(nrows, ncols, **kwargs)`
    returns them; the figure is laid out tightly when it is saved."""
    fig = Figure(figsize=figsize, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Write `fig` to `path` atomically, in the format its suffix names (.png, .svg, ...)."""
    path = Path(path)
    # The temporary name ends in ".tmp", so the format cannot be left to matplotlib to guess.
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".")))
