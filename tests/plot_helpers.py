"""What a saved figure shows, for tests that check a plot's content rather than its file size.

:func:`saved_figures` records every ``Figure.savefig`` made inside it, by file name; the Figure stays
inspectable after ``plt.close``. The plotting code is run unchanged (the CLI included).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@contextlib.contextmanager
def saved_figures():
    """Yields ``{file name: Figure}``, filled as the code inside the block saves figures."""
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        figures[Path(fname).name] = self
        return original(self, fname, *args, **kwargs)

    Figure.savefig = savefig
    try:
        yield figures
    finally:
        Figure.savefig = original


def visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.axison]


def legend_labels(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def scatters(ax) -> list[PathCollection]:
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def shaded_bands(ax) -> list[PolyCollection]:
    """``fill_between`` areas (PolyCollection; FillBetweenPolyCollection in newer matplotlib)."""
    return [c for c in ax.collections if isinstance(c, PolyCollection)]
