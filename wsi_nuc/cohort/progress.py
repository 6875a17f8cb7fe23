"""The cohort's one progress line on stderr (a :class:`wsi_nuc.progress.Display`, as ``run``'s)."""
from __future__ import annotations

from ..errors import one_line
from ..progress import Display
from .manifest import DONE, FAILED, SKIPPED


class Progress(Display):
    """The cohort's one progress line on stderr: slides done/failed of total, tiles per second."""

    def __init__(self, total: int, stream=None, enabled: bool = True, dashboard: str | None = None):
        super().__init__(stream)
        self.total = total
        self.enabled = enabled
        self.dashboard = dashboard
        self.counts = {DONE: 0, SKIPPED: 0, FAILED: 0}
        self.running = 0
        self.tiles = 0
        self._last = 0.0
        self._width = 0
        self._text = ""

    def add_tiles(self, n: int) -> None:
        with self.lock:
            self.tiles += int(n)

    def line(self) -> str:
        with self.lock:
            c, tiles, running = dict(self.counts), self.tiles, self.running
        dt = max(self.clock() - self.t0, 1e-9)
        done = c[DONE] + c[SKIPPED]
        s = (f"wsi-nuc batch: {done}/{self.total} slides done" + (f" ({c[SKIPPED]} skipped)" if c[SKIPPED] else "")
             + f", {c[FAILED]} failed, {running} running | {tiles} tiles, {tiles / dt:.1f} tiles/s")
        return s + (f" | dashboard {self.dashboard}" if self.dashboard else "")

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self._last < (0.5 if self.tty else 30.0):
            return
        if not force and not self.tty:
            self._text = ""  # the 30 s heartbeat
        self._last = now
        text = self.line()
        if not self.tty and text.split(" | ")[0] == self._text:
            return  # a log file gets a line when a slide finishes (or every 30 s), not repeats
        self._text = text.split(" | ")[0]
        if self.tty:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.show(force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a failed slide), above the progress line."""
        if self.tty and self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(one_line(text) + "\n")
        self.stream.flush()
