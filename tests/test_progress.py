"""The plain (not a terminal) progress lines: what a log or a pipe shows."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from bespoke_kohya import progress
from bespoke_kohya.progress import counter


def _lines(monkeypatch: pytest.MonkeyPatch, bursts: int, size: int, every_s: float) -> list[str]:
    """``bursts`` batches of ``size`` items, each batch done ``every_s`` after the last and its items ticked at once."""
    clock = [1000.0]  # a monotonic clock does not start at 0: the first item's line is due at once
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with counter("sampling", bursts * size, console=console) as tick:
        for b in range(bursts):
            clock[0] = 1000.0 + (b + 1) * every_s
            for _ in range(size):
                tick()
    return out.getvalue().splitlines()


def test_a_burst_is_not_estimated_from_its_first_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 batches of 20, one every 12 s: the CLI's sampler drew 160 this way and said "about 30.5 min left" at 1/160.
    lines = _lines(monkeypatch, bursts=8, size=20, every_s=12.0)
    assert lines[0] == "sampling 1/160"
    # At 21/160 (t = 24 s), 20 items took 12 s and 140 are left: 84 s from 12 s, so 72 s from now.
    assert lines[1] == "sampling 21/160, about 1.2 min left"
    assert lines[-1] == "sampling 160/160 in 1.6 min"


def test_even_items_get_the_even_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _lines(monkeypatch, bursts=30, size=1, every_s=6.0)
    # Lines every 10 s or more: at 3/30 (18 s), 2 items in 12 s, 28 left: 168 s from 12 s, 162 s from now.
    assert lines[:2] == ["sampling 1/30", "sampling 3/30, about 2.7 min left"]
    assert lines[-1] == "sampling 30/30 in 3.0 min"
