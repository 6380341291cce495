"""The demo's live view: on a terminal a rich Live table with each new task printed above it; in
a log or a pipe, a summary line every few seconds and each task as a plain line.

rich measures wide (Chinese) characters and redraws in place, so nothing here counts columns.
"""

from __future__ import annotations

import math
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from patrol.devtools.demo.report import DemoSnapshot, summary_line, summary_rows, summary_title

LABEL_COLUMNS = 12


def summary_table(snapshot: DemoSnapshot) -> Panel:
    """The live summary as a framed two-column table; a row too long for the terminal ends in …
    instead of wrapping, so the table keeps its height while it is redrawn."""
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(min_width=LABEL_COLUMNS, no_wrap=True, style="bold")
    # The value column may shrink (a wrapable column), and each cell is cut, not wrapped.
    grid.add_column()
    for label, value in summary_rows(snapshot):
        grid.add_row(label, Text(value, no_wrap=True, overflow="ellipsis"))
    return Panel(grid, title=summary_title(snapshot), title_align="left", expand=False)


class LiveDisplay:
    """The live view: a redrawn table on a terminal, a summary line every few seconds otherwise.
    New tasks are printed as they arrive, above the table."""

    def __init__(
        self,
        stream: TextIO,
        *,
        is_tty: bool,
        plain_every_seconds: float = 5.0,
        width: int | None = None,
    ) -> None:
        self.stream = stream
        self.is_tty = is_tty
        self.plain_every_seconds = plain_every_seconds
        # force_terminal from the stream, not rich's guess: FORCE_COLOR must not make a log redraw.
        self.console = Console(file=stream, force_terminal=is_tty, width=width)
        self._live: Live | None = None
        self._last_plain = -math.inf

    def say(self, line: str) -> None:
        """A line that stays: a new task, a note, an URL."""
        if self.is_tty:
            # Text, not markup: "[urgent]" in a task line is not a rich style tag. Soft wrap:
            # the terminal folds a long Chinese summary, rich would break it at the last space.
            self.console.print(Text(line), soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def refresh(self, snapshot: DemoSnapshot, now: float) -> None:
        if self.is_tty:
            table = summary_table(snapshot)
            if self._live is None:
                self._live = Live(table, console=self.console, auto_refresh=False)
                self._live.start(refresh=True)
            else:
                self._live.update(table, refresh=True)
        elif now - self._last_plain >= self.plain_every_seconds:
            self._last_plain = now
            self.stream.write(summary_line(snapshot) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Leave the last table on screen; later output goes below it."""
        if self._live is not None:
            self._live.stop()
            self._live = None
