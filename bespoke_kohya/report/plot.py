"""The report's loss plot: training loss by step, epoch boundaries and learning rate, as PNG bytes."""

from __future__ import annotations

import io


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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
