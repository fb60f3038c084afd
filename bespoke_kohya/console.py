"""The two consoles every command prints to (stdout for results, stderr for warnings and errors), and `warn`."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.text import Text

# Piped output (logs, CI, tests) gets wide tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


def warn(lines: list[str]) -> None:
    """Each line as `warning: …` on stderr."""
    for line in lines:
        err_console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)
