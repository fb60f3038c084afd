"""The one progress display: a live rich bar on a terminal, plain periodic lines elsewhere (logs, CI, pipes)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Off a terminal, one line at most this often (and always at the end), so a log stays readable.
PLAIN_EVERY_S = 10.0


class _Plain:
    """Prints ``text()`` when enough time has passed since the last line."""

    def __init__(self, console: Console, every: float = PLAIN_EVERY_S) -> None:
        self.console, self.every, self.last = console, every, 0.0

    def maybe(self, text: Callable[[], str], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self.console.print(text(), markup=False, highlight=False, soft_wrap=True)


class TrainProgress:
    """Training progress fed by step events (from sd-scripts' output or pixel24)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.fields: dict[str, Any] = {"epoch": "-", "loss": "-", "avg": "-", "speed": "", "completed": 0, "total": None}
        self.live = console.is_terminal
        self.plain = _Plain(console)
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]} avg {task.fields[avg]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = self.progress.add_task("train", total=None, epoch="-", loss="-", avg="-", speed="")

    def __enter__(self) -> "TrainProgress":
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()
        elif self.fields["completed"]:
            self.plain.maybe(self._line, force=True)

    def _line(self) -> str:
        f = self.fields
        total = f"/{f['total']}" if f["total"] else ""
        return f"epoch {f['epoch']} step {f['completed']}{total} loss {f['loss']} avg {f['avg']} {f['speed']}".rstrip()

    def update(self, data: dict[str, Any]) -> None:
        if "note" in data:  # a line worth reading (an estimate, a warning): printed above the bar, never overwritten
            self.console.print(data["note"], markup=False, highlight=False, soft_wrap=True)
            return
        fields: dict[str, Any] = {}
        if "epoch" in data:
            fields["epoch"] = f"{data['epoch']}/{data['epochs']}" if data.get("epochs") else str(data["epoch"])
        if data.get("loss") is not None:
            fields["loss"] = f"{data['loss']:.4f}"
        avg = data.get("avg_loss", data.get("avr_loss"))
        if avg is not None:
            fields["avg"] = f"{avg:.4f}"
        if data.get("images_per_s"):
            fields["speed"] = f"{data['images_per_s']:.0f} img/s"
        elif data.get("it_per_s"):
            fields["speed"] = f"{data['it_per_s']:.2f} it/s"
        total = data.get("total") or data.get("total_steps")
        if "step" in data:  # an epoch event carries no step: keep the bar where it is
            fields["completed"] = data["step"]
        self.fields.update(fields, **({"total": total} if total else {}))
        if self.live:
            self.progress.update(self.task, total=total, **fields)
        else:
            self.plain.maybe(self._line)


@contextmanager
def counter(label: str, total: int, enabled: bool = True, console: Console | None = None,
            status: Callable[[], str] | None = None) -> Iterator[Callable[[], None]]:
    """Yields a function to call per item done: a bar on a terminal, a line every few seconds elsewhere (stderr).

    ``status``: a short text shown after the count (e.g. what was left out so far), read at each item.
    """
    if not enabled:
        yield lambda: None
        return
    console = console or Console(stderr=True)
    said = status or (lambda: "")
    if not console.is_terminal:
        plain, done, started = _Plain(console), [0], time.monotonic()
        previous = [started]  # when the item before this one was done

        def line() -> str:
            now = time.monotonic()
            extra = f"; {said()}" if said() else ""
            if done[0] >= total:
                return f"{label} {done[0]}/{total} in {(now - started) / 60:.1f} min" + extra
            # Items often come in bursts (a batch drawn, then its images written in a blink): the rate is the items
            # before this one over the time they took, so the first of a burst does not stand for all of it.
            before = done[0] - 1
            if before < 1:
                return f"{label} {done[0]}/{total}" + extra
            left = max((previous[0] - started) / before * (total - before) - (now - previous[0]), 0.0)
            return f"{label} {done[0]}/{total}, about {left / 60:.1f} min left" + extra

        def tick() -> None:
            done[0] += 1
            plain.maybe(line, force=done[0] == total)
            previous[0] = time.monotonic()

        yield tick
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console) as bar:
        task = bar.add_task(label, total=total, status=said())
        yield lambda: bar.update(task, advance=1, status=said())
