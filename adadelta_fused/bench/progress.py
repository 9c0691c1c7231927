"""A progress bar over the sweep on stderr, so stdout holds only the results.

On a terminal it redraws one line; in a log (not a tty) it writes one line per item instead of a stream
of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 24


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self.interactive = self.stream.isatty()

    def working_on(self, label: str) -> None:
        """Show the item now running (it counts as done at the next call or at ``finish``)."""
        self._draw(label)
        self.done = min(self.done + 1, self.total)

    def finish(self) -> None:
        self.done = self.total
        self._draw("done")
        if self.interactive:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, label: str) -> None:
        filled = _WIDTH * self.done // self.total
        bar = "#" * filled + "." * (_WIDTH - filled)
        elapsed = time.perf_counter() - self.started
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
