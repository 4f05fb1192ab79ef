"""Charts of the reports, drawn with matplotlib (Agg, no display): grouped bars of rates per run
(`benchmarks compare`) and lines of a metric against training steps (`make exp-rl`). Both return PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def bar_chart(title: str, labels: Sequence[str], metrics: Mapping[str, Sequence[float | None]]) -> bytes:
    """Grouped bars: one group per metric, one bar per run (`labels`), values in [0, 1]; None draws no bar."""
    names = list(metrics)
    width = 0.8 / max(len(labels), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.3 * len(names) * max(len(labels), 1) + 2), 4.5))
    for index, label in enumerate(labels):
        positions = [group + (index - (len(labels) - 1) / 2) * width for group in range(len(names))]
        values = [metrics[name][index] for name in names]
        shown = [(x, v) for x, v in zip(positions, values, strict=True) if v is not None]
        axes.bar([x for x, _ in shown], [v for _, v in shown], width=width, label=label)
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("rate")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)


def line_chart(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    title: str,
    *,
    xlabel: str = "GRPO step",
    ylabel: str = "",
    colour_of: Mapping[str, str] | None = None,
) -> bytes:
    """One line (with markers) per curve of (step, value); curves sharing an entry of `colour_of` (e.g. the seeds of
    one configuration) share a colour and one legend entry."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    groups = sorted({(colour_of or {}).get(name, name) for name in curves})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled: set[str] = set()
    for name, points in sorted(curves.items()):
        group = (colour_of or {}).get(name, name)
        label = None if group in labelled else group
        labelled.add(group)
        axes.plot(
            [step for step, _ in points],
            [value for _, value in points],
            marker="o",
            markersize=3,
            color=palette[groups.index(group) % len(palette)],
            label=label,
        )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)
