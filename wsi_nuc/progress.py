"""Progress of one slide that a person and a log can both read.

On a terminal: a status line from the first second (opening, tissue, loading the model, or starting workers
and loading the model there, ...), then one tqdm bar over the tiles that stays up, its label naming the
stage, through stitching and writing. Not a terminal (a log file, a pipe, a cluster job): plain lines, one per stage
and one every 10 % of the tiles or every 30 s, whichever comes first (also while no tile has finished
yet), each with the elapsed time (a slide of a handful of tiles runs in this process: a "loading the model"
line, then "segmenting 0/N tiles" without the note)::

    [   0.0 s] CMU-1-Small-Region: opening
    [   1.2 s] CMU-1-Small-Region: segmenting 0/30 tiles (starting workers, loading the model)
    [   9.8 s] CMU-1-Small-Region: segmenting 3/30 tiles (10 %)
    ...
    [  31.0 s] CMU-1-Small-Region: writing nuclei.geojson

>>> import io
>>> buf = io.StringIO()
>>> p = SlideProgress("s", stream=buf, tty=False, clock=iter(range(0, 100, 5)).__next__)
>>> p.stage("tissue"); p.start_tiles(10); p.update(5); p.close()
>>> print(buf.getvalue().strip())
[   5.0 s] s: opening
[  10.0 s] s: finding tissue
[  15.0 s] s: segmenting 0/10 tiles (starting workers, loading the model)
[  30.0 s] s: segmenting 5/10 tiles (50 %)
[  35.0 s] s: done
"""
from __future__ import annotations

import sys
import threading
import time

STAGES = {
    "open": "opening",
    "tissue": "finding tissue",
    "stain": "stain statistics",
    "model": "loading the model",
    "segment": "segmenting",
    "stitch": "stitching",
    "write_geojson": "writing nuclei.geojson",
    "write_csv": "writing nuclei.csv",
    "write_parquet": "writing nuclei.parquet",
    "write_zarr": "writing nuclei.ome.zarr",
    "write_qc": "writing qc.png",
}


class Display:
    """What every progress display of wsi-nuc shares (this module's :class:`SlideProgress` for ``run``,
    :class:`wsi_nuc.cohort.progress.Progress` for ``batch``): the stream (stderr), whether it is a terminal
    (a status line rewritten in place) or a log (plain lines), the clock and start time, and one lock for the
    threads that report into it."""

    def __init__(self, stream=None, tty: bool | None = None, clock=time.perf_counter):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.t0 = clock()
        self.lock = threading.RLock()

    def write(self, text: str) -> None:
        """``text`` in one write (a line is never split by another thread's; callers hold :attr:`lock`)."""
        self.stream.write(text)
        self.stream.flush()


class SlideProgress(Display):
    """Stage messages and a tile counter for one slide; see the module docstring."""

    def __init__(self, name: str, stream=None, tty: bool | None = None, every_s: float = 30.0,
                 every_frac: float = 0.1, clock=time.perf_counter):
        super().__init__(stream, tty, clock)
        self.name = name
        self.every_s, self.every_frac = every_s, every_frac
        self.total = 0
        self.done = 0
        self.bar = None
        self._last_t = self.t0
        self._last_frac = 0.0
        self._stage = None
        self._said = set()                     # stage labels announced: each once a run
        self._stop = threading.Event()
        self._beat = None
        self.stage("open")

    def _heartbeat(self) -> None:
        """While the tiles run: a line (log) or a bar refresh (terminal) when nothing was said for
        ``every_s`` seconds (start-up, a slow first tile)."""
        while not self._stop.wait(min(self.every_s, 5.0)):
            with self.lock:
                if self.bar is not None:
                    self.bar.refresh()
                elif self.clock() - self._last_t >= self.every_s:
                    self._last_t = self.clock()
                    self._line(f"segmenting {self.done}/{self.total} tiles (still working)")

    def _line(self, msg: str) -> None:
        """One whole line (callers hold :attr:`lock`, so the writer threads' lines never interleave)."""
        t = self.clock()
        text = f"[{t - self.t0:6.1f} s] {self.name}: {msg}"
        if self.bar is not None:
            self.bar.clear()
            self.write(text + "\n")
            self.bar.refresh()
        else:
            self.write(text + "\n")

    def stage(self, key: str) -> None:
        """Announce a stage (a ``Timer`` stage name or free text), once: a stage entered again (the OME-Zarr
        writer's levels) or from another writer thread is not repeated."""
        with self.lock:
            self._stage_locked(key)

    def _stage_locked(self, key: str) -> None:
        if key == "stitch":
            self._stop.set()                       # the tiles are done: no more heartbeat
        label = STAGES.get(key, key)
        if label in self._said or key == "segment":
            return
        self._said.add(label)
        self._stage = label
        if self.bar is not None:
            self.bar.set_description_str(f"{self.name}: {label}", refresh=True)
        elif not self.tty or self.total == 0:
            if self.tty:
                self.write(f"\r{self.name}: {label}...\033[K")
            else:
                self._line(label)

    def start_tiles(self, total: int, starting: str | None = "starting workers, loading the model") -> None:
        """The tile count is known: a bar on a terminal, a first line otherwise; ``starting``: what happens
        before the first tile can finish (None: nothing slow, e.g. the model is loaded already)."""
        with self.lock:
            self._start_tiles(total, starting)

    def _start_tiles(self, total: int, starting: str | None) -> None:
        self.total = int(total)
        self._stage = "segmenting"
        note = f" ({starting})" if starting else ""
        if self.tty:
            from tqdm import tqdm

            self.stream.write("\r\033[K")
            self.bar = tqdm(total=self.total, unit="tile", file=self.stream, leave=True,
                            desc=f"{self.name}: segmenting{note}")
        else:
            self._line(f"segmenting 0/{self.total} tiles{note}")
        self._last_t = self.clock()
        if self.clock is time.perf_counter:
            self._beat = threading.Thread(target=self._heartbeat, name="wsi-nuc-progress", daemon=True)
            self._beat.start()

    def update(self, n: int = 1) -> None:
        """``n`` more tiles done."""
        with self.lock:
            self._update(n)

    def _update(self, n: int) -> None:
        self.done += int(n)
        if self.bar is not None:
            if self.bar.n == 0:
                self.bar.set_description_str(f"{self.name}: segmenting", refresh=False)
            self.bar.update(n)
            return
        t = self.clock()
        frac = self.done / self.total if self.total else 1.0
        if frac - self._last_frac >= self.every_frac - 1e-9 or t - self._last_t >= self.every_s \
                or self.done == self.total:
            self._last_t, self._last_frac = t, frac
            self._line(f"segmenting {self.done}/{self.total} tiles ({100 * frac:.0f} %)")

    def close(self, msg: str = "done") -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        with self.lock:
            self._close(msg)

    def _close(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{self.name}: {msg}", refresh=True)
            self.bar.close()
            self.bar = None
        elif self.tty:
            self.write("\r\033[K")
        else:
            self._line(msg)
