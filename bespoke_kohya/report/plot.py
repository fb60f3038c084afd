"""The report's loss plots as PNG bytes: training loss by step (epoch boundaries, learning rate), and the held-out loss per epoch."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _png(fig: "Figure") -> bytes:
    """The figure as PNG bytes without a software tag (the same data gives the same file)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _epoch_starts(rows: list[dict[str, float | None]]) -> list[tuple[float, int]]:
    """(step, epoch) where each epoch after the first begins, from the epoch column."""
    starts, previous = [], None
    for row in rows:
        epoch = row["epoch"]
        if epoch is None:
            continue
        if previous is not None and int(epoch) != previous:
            starts.append((float(row["step"]), int(epoch)))  # type: ignore[arg-type]
        previous = int(epoch)
    return starts


def loss_plot_png(rows: list[dict[str, float | None]]) -> bytes | None:
    """The loss curve (per-step and running average), epoch boundaries and learning rate, as PNG bytes.

    None when no row has a loss value. Agg backend: no display is needed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]  # type: ignore[misc]

    loss, avg, lr = series("loss"), series("avg_loss"), series("lr")
    if not loss[0] and not avg[0]:
        return None
    fig = Figure(figsize=(11, 3.4), dpi=100)
    ax = fig.add_subplot()
    if loss[0]:
        ax.plot(*loss, color="#9db4d3", linewidth=0.8, label="loss (per step)")
    if avg[0]:
        ax.plot(*avg, color="#1f4e8c", linewidth=1.8, label="average loss")
    for step, epoch in _epoch_starts(rows):
        ax.axvline(step, color="#888888", linestyle="--", linewidth=0.8)
        ax.annotate(f"epoch {epoch}", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8, color="#555555")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    if lr[0]:
        ax2 = ax.twinx()
        ax2.plot(*lr, color="#c77d1a", linewidth=1.0, alpha=0.8, label="learning rate")
        ax2.set_ylabel("learning rate", color="#c77d1a")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.9)
    return _png(fig)


def _epoch_means(rows: list[dict[str, float | None]]) -> dict[int, float]:
    """Mean training loss per epoch, from the per-step rows (for comparison with the held-out loss)."""
    sums: dict[int, list[float]] = {}
    for row in rows:
        if row["epoch"] is not None and row["loss"] is not None:
            sums.setdefault(int(row["epoch"]), []).append(float(row["loss"]))
    return {e: sum(v) / len(v) for e, v in sorted(sums.items())}


def heldout_plot_png(validation: list[dict[str, float | None]], rows: list[dict[str, float | None]]) -> bytes | None:
    """Held-out loss per epoch beside the mean training loss per epoch, as PNG bytes; None without a held-out value.

    The two apart tell the story: training loss falling while the held-out loss rises is overfitting.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    points = [(int(r["epoch"]), float(r["loss"])) for r in validation if r["epoch"] is not None and r["loss"] is not None]  # type: ignore[arg-type]
    if not points:
        return None
    fig = Figure(figsize=(6, 3.4), dpi=100)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#b3261e", marker="o", linewidth=1.8, label="held-out loss")
    means = _epoch_means(rows)
    if means:
        ax.plot(list(means), list(means.values()), color="#1f4e8c", marker="s", markersize=4, linestyle="--", linewidth=1.2, label="training loss (epoch mean)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.25)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    return _png(fig)
