"""The cohort's one progress line on stderr (a :class:`wsi_nuc.progress.Display`, as ``run``'s): slides done of
the total, tiles done of the tiles planned so far, the rate and an estimate of the time left.

>>> import io
>>> p = Progress(3, io.StringIO())
>>> a, b = p.slide_progress(), p.slide_progress()
>>> a.start_tiles(20); b.start_tiles(10); a.update(15)
>>> p.line().split(" | ")[1].split(",")[0]
'15/30 tiles of 2 slides started'
"""
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
        self.tiles_total = 0             # tiles of the slides started so far
        self.slides_started = 0          # slides whose tiles are planned
        self._t_first = None             # when the first tile finished (the rate is taken from there)
        self._last = 0.0
        self._width = 0
        self._text = ""

    def add_tiles(self, n: int) -> None:
        with self.lock:
            if self._t_first is None:
                self._t_first = self.clock()
            self.tiles += int(n)

    def slide_progress(self) -> "_SlideTiles":
        """What one slide's run reports into (``run_slide(progress=...)``): its tile count, then tiles done."""
        return _SlideTiles(self)

    def line(self) -> str:
        with self.lock:
            c, tiles, running = dict(self.counts), self.tiles, self.running
            planned, started, t_first = self.tiles_total, self.slides_started, self._t_first
        now = self.clock()
        dt = max(now - self.t0, 1e-9)
        done = c[DONE] + c[SKIPPED]
        s = (f"wsi-nuc batch: {done}/{self.total} slides done" + (f" ({c[SKIPPED]} skipped)" if c[SKIPPED] else "")
             + f", {c[FAILED]} failed, {running} running | ")
        s += (f"{tiles}/{planned} tiles of {started} slides started" if planned else f"{tiles} tiles")
        s += f", {tiles / dt:.1f} tiles/s"
        left = self._time_left(tiles, planned, started, done + c[FAILED], running, now - t_first if t_first is not None else 0.0)
        if left is not None:
            s += f", about {_duration(left)} left"
        return s + (f" | dashboard {self.dashboard}" if self.dashboard else "")

    def _time_left(self, tiles: int, planned: int, started: int, finished: int, running: int,
                   since_first: float) -> float | None:
        """Seconds left at the tile rate since the first tile, the slides not started yet counted at the mean
        tile count of those started; None until a rate is known."""
        if tiles < 2 or since_first <= 0 or not started:
            return None
        waiting = max(self.total - finished - running, 0)
        todo = max(planned - tiles, 0) + waiting * planned / started
        return todo / (tiles / since_first) if todo > 0 else None

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


class _SlideTiles:
    """One slide's tile counter inside the cohort's line: :meth:`start_tiles` adds its tiles to the total
    (the pipeline calls it once the slide's tiles are planned); calling it or :meth:`update` counts tiles done."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def start_tiles(self, total: int, starting: str | None = None) -> None:
        with self.progress.lock:
            self.progress.tiles_total += int(total)
            self.progress.slides_started += 1

    def update(self, n: int = 1) -> None:
        self.progress.add_tiles(n)

    __call__ = update


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``.

    >>> _duration(44.6), _duration(725), _duration(12600)
    ('45 s', '12 min', '3.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
