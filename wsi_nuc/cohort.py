"""Many slides on one Dask cluster: cohort input, manifest, resume, failure isolation.

    run_cohort("cohort.csv", "out/", RunSettings())  ->  out/<slide stem>/...      (exactly `wsi-nuc run`)
                                                         out/cohort.csv             (manifest, one row a slide)
                                                         out/cohort_summary.csv     (per-slide morphometry)

A cohort is a CSV with a ``path`` column (every other column is carried into both outputs; relative paths
resolve against the CSV's folder; an optional ``mpp`` column overrides the resolution per slide), a folder
(its slide files, not recursive), a glob (``'slides/**/*.svs'``; ``**`` recurses) or one slide file.

Slides run concurrently on one shared ``distributed.Client``: a few slides at once (driver threads, each
calling :func:`wsi_nuc.pipeline.run_slide`, which streams its tiles with a bounded number of tasks in
flight), so driver memory is bounded by the slides in flight, not by the cohort. A slide that fails is
recorded with its reason and the others go on. The manifest is rewritten atomically as slides finish, so
an interrupted cohort resumes: finished slides (manifest says done *and* their output folder is
complete) are skipped, unfinished ones restart from their finished tiles (the pipeline's tile spool).
"""
from __future__ import annotations

import csv
import glob as _glob
import importlib.util
import json
import math
import os
import sys
import threading
import time
import warnings
from array import array
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .errors import InputError, one_line

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                    ".dcm", ".png", ".jpg", ".jpeg")
MANIFEST = "cohort.csv"
SUMMARY = "cohort_summary.csv"
LOCK = ".cohort.lock"

DONE, FAILED, SKIPPED, PENDING = "done", "failed", "skipped", "pending"
MANIFEST_COLUMNS = ["slide", "path", "status", "reason", "nucleus_count", "tissue_area_mm2", "nuclei_per_mm2",
                    "seconds", "tiles", "output", "finished_at"]
MEASURES = ("area_um2", "circularity", "mean_h_od")
STATS = ("median", "q1", "q3", "iqr")
SUMMARY_COLUMNS = (["slide", "nucleus_count", "tissue_area_mm2", "nuclei_per_mm2"]
                   + [f"{m}_{s}" for m in MEASURES for s in STATS])
# Run settings that change the nuclei: a finished slide made with other values is redone, not skipped.
RESULT_SETTINGS = ("tile", "halo", "tissue_detection", "margin", "geojson_gz", "simplify", "table",
                   "zarr_image", "min_area_um2")


@dataclass(frozen=True)
class CohortSlide:
    path: Path                  # absolute
    stem: str                   # output folder name, DIR/<stem>/
    mpp: float | None = None    # per-slide override (CSV ``mpp`` column); else --mpp applies
    extra: dict = field(default_factory=dict)   # carried columns (CSV), manifest names


@dataclass
class Cohort:
    source: str
    slides: list[CohortSlide]
    extra_columns: list[str] = field(default_factory=list)


@dataclass
class CohortResult:
    rows: list[dict]
    manifest: Path
    summary: Path
    seconds: float

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def exit_code(self) -> int:
        return 1 if self.count(FAILED) or self.count(PENDING) else 0


# ---------------------------------------------------------------------------------------------- input

def _is_slide_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_EXTENSIONS


def read_cohort(spec: str | os.PathLike) -> Cohort:
    """A CSV, a folder, a glob or one slide file -> a :class:`Cohort`; InputError on bad usage."""
    from .ownership import check_stem
    from .pipeline import slide_stem

    spec_s = os.fspath(spec)
    p = Path(os.path.expanduser(spec_s))
    extra_cols: list[str] = []
    if p.is_dir():
        items = [(f, None, {}) for f in sorted(p.iterdir()) if _is_slide_file(f)]
        where = f"{spec_s}: no slide files in this folder (searched non-recursively for " \
                f"{', '.join(e[1:] for e in SLIDE_EXTENSIONS)})"
    elif p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
        items, extra_cols = _read_csv(p)
        where = f"{spec_s}: the CSV lists no slides"
    elif p.is_file():
        if p.suffix.lower() not in SLIDE_EXTENSIONS:
            raise InputError(f"{spec_s}: not a cohort CSV, a folder, a glob or a slide file "
                             f"(extension {p.suffix or 'none'})")
        items = [(p, None, {})]
        where = ""
    elif any(c in spec_s for c in "*?["):
        hits = sorted(Path(h) for h in _glob.glob(os.path.expanduser(spec_s), recursive=True))
        items = [(h, None, {}) for h in hits if _is_slide_file(h)]
        where = f"{spec_s}: the pattern matches no slide files ({len(hits)} paths matched, none a slide file)"
    else:
        raise InputError(f"{spec_s}: no such file or folder")
    if not items:
        raise InputError(where)
    slides = [CohortSlide(Path(os.path.abspath(f)), slide_stem(f), mpp, extra) for f, mpp, extra in items]
    for s in slides:
        check_stem(s.path, s.stem)     # e.g. "cohort.csv.svs" would replace the manifest
    _check_unique(spec_s, slides)
    return Cohort(spec_s, slides, extra_cols)


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _read_csv(path: Path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the cohort CSV ({getattr(e, 'strerror', None) or e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: empty CSV (needs a header line with a 'path' column)")
    rows = list(csv.reader(lines, delimiter=_delimiter(lines[0])))
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if "path" not in lower:
        raise InputError(f"{path}: no 'path' column (columns: {', '.join(h or '(blank)' for h in header)})")
    if len(set(lower)) != len(lower):
        dup = sorted({h for h in header if lower.count(h.lower()) > 1})
        raise InputError(f"{path}: duplicate column name(s): {', '.join(dup)}")
    ip = lower.index("path")
    im = lower.index("mpp") if "mpp" in lower else None
    reserved = set(MANIFEST_COLUMNS) | set(SUMMARY_COLUMNS)
    carried = [(i, f"input_{h}" if h in reserved else h) for i, h in enumerate(header) if i != ip and h]
    items = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in row):
            continue
        row = row + [""] * (len(header) - len(row))
        raw = row[ip].strip()
        if not raw:
            raise InputError(f"{path}: line {n}: empty path")
        f = Path(os.path.expanduser(raw))
        if not f.is_absolute():
            f = path.parent / f
        mpp = None
        if im is not None and row[im].strip():
            try:
                mpp = float(row[im])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise InputError(f"{path}: line {n}: mpp {row[im].strip()!r} is not a positive number")
        extra = {name: row[i] for i, name in carried}
        if (extra.get("roi") or "").strip():       # a region per slide; relative to the CSV like path
            r = Path(os.path.expanduser(extra["roi"].strip()))
            extra["roi"] = str(r if r.is_absolute() else path.parent / r)
        items.append((f, mpp, extra))
    return items, [name for _, name in carried]


def _check_unique(spec: str, slides: list[CohortSlide]) -> None:
    """Two slides with one stem would write the same DIR/<stem>/: refuse before starting (exit 2)."""
    seen: dict[str, CohortSlide] = {}
    for s in slides:
        key = s.stem.lower()  # case-insensitive file systems (macOS, Windows shares) would collide too
        if key in seen:
            other = seen[key]
            what = "is listed twice" if other.path == s.path else f"and {s.path} share the output name {s.stem!r}"
            raise InputError(f"{spec}: {other.path} {what} (outputs go to DIR/<slide stem>/; rename one "
                             f"slide or run them as separate cohorts)")
        seen[key] = s


# ------------------------------------------------------------------------------------------ manifest

def read_rows(path: Path) -> dict[str, dict]:
    """Rows of an earlier manifest or summary, by slide; empty when absent or unreadable."""
    from .writers.table import restore_cell

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{restore_cell(k) if isinstance(k, str) else k: restore_cell(v) if isinstance(v, str) else v
                     for k, v in r.items()}
                    for r in csv.DictReader(fh)]
            return {r["slide"]: r for r in rows if r.get("slide")}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}


def _write_table(path: Path, columns: list[str], rows: list[dict]) -> None:
    from .writers.table import write_csv

    write_csv(path, columns, rows)


def slide_morphometry(nuclei_csv: Path) -> dict:
    """Median, quartiles and IQR of :data:`MEASURES`, streaming the slide's ``nuclei.csv``.

    Only the three measured columns are held (8 bytes a value), never the table.
    """
    import numpy as np

    vals = {m: array("d") for m in MEASURES}
    with open(nuclei_csv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        idx = {m: header.index(m) for m in MEASURES if m in header}
        for row in reader:
            for m, i in idx.items():
                v = row[i] if i < len(row) else ""
                if v:
                    x = float(v)
                    if math.isfinite(x):
                        vals[m].append(x)
    out = {}
    for m in MEASURES:
        a = np.frombuffer(vals[m], dtype=np.float64) if len(vals[m]) else None
        if a is None:
            out.update({f"{m}_{s}": None for s in STATS})
            continue
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        out.update({f"{m}_median": float(med), f"{m}_q1": float(q1), f"{m}_q3": float(q3),
                    f"{m}_iqr": float(q3 - q1)})
    return out


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _one_line(text: str, limit: int = 500) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _reason(e: BaseException) -> str:
    if isinstance(e, InputError):
        return _one_line(str(e))
    msg = str(e)
    return _one_line(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)


def _row_from_summary(slide: CohortSlide, out: Path, status: str, summary: dict, reason: str = "") -> dict:
    return {
        "slide": slide.stem, "path": str(slide.path), "status": status, "reason": reason,
        "nucleus_count": summary.get("nucleus_count"),
        "tissue_area_mm2": summary.get("tissue_area_mm2"),
        "nuclei_per_mm2": summary.get("nuclei_per_mm2"),
        "seconds": (summary.get("seconds") or {}).get("total"),
        "tiles": (summary.get("tiles") or {}).get("count"),
        "output": str(out / slide.stem), "finished_at": _now(), **slide.extra,
    }


def _pending_row(slide: CohortSlide, out: Path) -> dict:
    return {"slide": slide.stem, "path": str(slide.path), "status": PENDING, "reason": "",
            "output": str(out / slide.stem), **slide.extra}


def finished_summary(slide: CohortSlide, out: Path, prev: dict | None, settings, model_dir: Path,
                     ) -> tuple[dict | None, str]:
    """(summary, "") when the slide is verifiably finished with these settings, else (None, why not)."""
    from .pipeline import is_complete

    if prev is None or prev.get("status") not in (DONE, SKIPPED):
        return None, ""
    if os.path.normpath(prev.get("path") or "") != os.path.normpath(str(slide.path)):
        return None, "redone: the cohort points this slide name at another file"
    folder = out / slide.stem
    if not is_complete(folder):
        return None, "redone: its outputs were incomplete"
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None, "redone: its summary.json was unreadable"
    from .ownership import read_marker, same_slide, slide_identity

    m = read_marker(folder)
    if m is not None and m.get("version", 0) >= 1:
        try:
            ident = slide_identity(slide.path)
        except InputError:
            return None, ""          # unreadable now: the run reports it
        if not same_slide(m["slide"], ident):
            return None, "redone: the slide file changed"
    changed = _changed_settings(summary, settings, slide, model_dir)
    if changed:
        return None, f"redone: settings changed ({', '.join(changed)})"
    return summary, ""


def _slide_roi(slide: CohortSlide, settings) -> str | None:
    """The slide's region: its CSV ``roi`` cell when filled, else the batch-wide setting."""
    return ((getattr(slide, "extra", None) or {}).get("roi") or "").strip() or getattr(settings, "roi", None)


def _changed_settings(summary: dict, settings, slide: CohortSlide, model_dir: Path) -> list[str]:
    old = summary.get("settings") or {}
    changed = [k for k in RESULT_SETTINGS if k in old and old[k] != getattr(settings, k)]
    mpp = slide.mpp if slide.mpp is not None else settings.mpp
    if "mpp" in old and not (old["mpp"] == mpp or (old["mpp"] is not None and mpp is not None
                                                  and math.isclose(old["mpp"], mpp, rel_tol=1e-9))):
        changed.append("mpp")
    if (old.get("roi") or None) != _slide_roi(slide, settings):
        changed.append("roi")
    old_model = (summary.get("model") or {}).get("path")
    if old_model and os.path.abspath(old_model) != os.path.abspath(model_dir):
        changed.append("model")
    return changed


@contextmanager
def cohort_lock(out: Path, wait: bool = False):
    """One batch at a time per output folder (two would overwrite each other's manifest)."""
    from .lock import hold

    with hold(out / LOCK, str(out), "batch", wait=wait,
              on_wait=lambda m: print(f"wsi-nuc: {m}", file=sys.stderr, flush=True)):
        yield


# ------------------------------------------------------------------------------------------ progress

class Progress:
    """The cohort's one progress line on stderr: slides done/failed of total, tiles per second."""

    def __init__(self, total: int, stream=None, enabled: bool = True, dashboard: str | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.dashboard = dashboard
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lock = threading.Lock()
        self.counts = {DONE: 0, SKIPPED: 0, FAILED: 0}
        self.running = 0
        self.tiles = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._width = 0
        self._text = ""

    def add_tiles(self, n: int) -> None:
        with self.lock:
            self.tiles += int(n)

    def line(self) -> str:
        with self.lock:
            c, tiles, running = dict(self.counts), self.tiles, self.running
        dt = max(time.perf_counter() - self.t0, 1e-9)
        done = c[DONE] + c[SKIPPED]
        s = (f"wsi-nuc batch: {done}/{self.total} slides done" + (f" ({c[SKIPPED]} skipped)" if c[SKIPPED] else "")
             + f", {c[FAILED]} failed, {running} running | {tiles} tiles, {tiles / dt:.1f} tiles/s")
        return s + (f" | dashboard {self.dashboard}" if self.dashboard else "")

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
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


def _dashboard(client, local: bool) -> str | None:
    """The dashboard link, when the scheduler serves one (a LocalCluster here needs bokeh for it)."""
    if local and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        if (client.scheduler_info().get("services") or {}).get("dashboard"):
            return client.dashboard_link
    except Exception:
        pass
    return None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _check_cuda_workers(client) -> None:
    """--device cuda on a cluster whose workers have no GPU would fail every slide: say so once."""
    workers = client.scheduler_info().get("workers", {})
    if not workers or any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return  # none yet (an adaptive cluster) or GPU workers advertised: inference goes there
    if not any(client.run(_cuda_available).values()):
        raise InputError("--device cuda: no worker of this cluster has a CUDA device (start GPU workers "
                         "with `dask worker ... --resources GPU=1`, or use --device cpu)")


def default_parallel_slides(client) -> int:
    """Slides in flight: 2 (one stitches and writes on the driver while the next keeps the workers busy),
    up to 8 on large clusters (one more per 4 worker threads)."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:
        threads = 0
    return min(8, max(2, threads // 4))


# -------------------------------------------------------------------------------------------- driver

def run_cohort(cohort, out, settings=None, *, force: bool = False, client=None,
               parallel_slides: int | None = None, run_slide_fn: Callable | None = None,
               stream=None, debug: bool = False) -> CohortResult:
    """Run every slide of ``cohort`` (a :class:`Cohort` or anything :func:`read_cohort` takes) into
    ``out/<stem>/``; write ``out/cohort.csv`` and ``out/cohort_summary.csv``.

    ``client``: a ``distributed.Client`` to use (else one is made from ``settings.scheduler`` /
    ``settings.workers``, only when some slide needs running). ``run_slide_fn``: stands in for
    :func:`wsi_nuc.pipeline.run_slide` (tests). Raises InputError for bad usage before any slide starts;
    slide failures are recorded, never raised.
    """
    from .cluster import dask_client
    from .model.io import check_model_dir, resolve_model_dir
    from .pipeline import RunSettings, run_slide
    from .validate import check_output_dir, validate_settings

    settings, _ = validate_settings(settings or RunSettings())
    run_fn = run_slide_fn or run_slide
    stream = stream or sys.stderr
    t0 = time.perf_counter()
    if not isinstance(cohort, Cohort):
        cohort = read_cohort(cohort)
    out = Path(os.path.abspath(out))
    check_output_dir(out)
    model_dir = resolve_model_dir(settings.model, settings.device)   # a bad --model is a usage error, before any slide
    check_model_dir(model_dir)
    manifest, summary_path = out / MANIFEST, out / SUMMARY
    columns = MANIFEST_COLUMNS + cohort.extra_columns
    scolumns = SUMMARY_COLUMNS + cohort.extra_columns

    with cohort_lock(out, wait=settings.wait):
        prev = read_rows(manifest)
        prev_morph = read_rows(summary_path)
        rows: dict[str, dict] = {}
        morph: dict[str, dict] = {}
        todo: list[tuple[CohortSlide, str]] = []
        for s in cohort.slides:
            summ, why = (None, "") if force else finished_summary(s, out, prev.get(s.stem), settings, model_dir)
            if summ is None:
                rows[s.stem] = _pending_row(s, out)
                todo.append((s, why))
                continue
            rows[s.stem] = _row_from_summary(s, out, SKIPPED, summ, "already done")
            rows[s.stem]["finished_at"] = prev[s.stem].get("finished_at", "")
            old = prev_morph.get(s.stem)
            if old and str(old.get("nucleus_count")) == str(summ.get("nucleus_count")):
                morph[s.stem] = {k: old.get(k) for k in SUMMARY_COLUMNS}
            else:
                morph[s.stem] = _morph_row(s, out, summ, stream)

        lock = threading.Lock()
        state = {"written": 0.0, "dirty": False}

        def flush(force_write: bool = False) -> None:
            """Rewrite both tables (atomically); at most once a second unless forced."""
            with lock:
                now = time.perf_counter()
                if not force_write and (not state["dirty"] or now - state["written"] < 1.0):
                    return
                state["written"], state["dirty"] = now, False
                _write_table(manifest, columns, [rows[s.stem] for s in cohort.slides])
                _write_table(summary_path, scolumns, [{**morph[s.stem], **s.extra} for s in cohort.slides
                                                      if s.stem in morph])

        flush(True)
        quiet = settings.quiet
        progress = Progress(len(cohort.slides), stream, enabled=not quiet)
        progress.counts[SKIPPED] = len(cohort.slides) - len(todo)
        if not todo:
            progress.close()
            return CohortResult([rows[s.stem] for s in cohort.slides], manifest, summary_path,
                                time.perf_counter() - t0)

        local = client is None and not settings.scheduler
        dashboard = not quiet and importlib.util.find_spec("bokeh") is not None  # no bokeh, no dashboard
        ctx = nullcontext(client) if client is not None else dask_client(settings.scheduler, settings.workers,
                                                                           dashboard=dashboard)
        stop = threading.Event()
        with ExitStack() as stack:
            with warnings.catch_warnings():  # "port 8787 in use, using another": not the user's concern
                warnings.filterwarnings("ignore", message=".*already in use")
                cl = stack.enter_context(ctx)
            if settings.device == "cuda" and run_slide_fn is None:
                _check_cuda_workers(cl)
            if not quiet:
                progress.dashboard = _dashboard(cl, local)
            k = parallel_slides or default_parallel_slides(cl)

            def one(slide: CohortSlide, why: str) -> None:
                with progress.lock:
                    progress.running += 1
                st = replace(settings, mpp=slide.mpp if slide.mpp is not None else settings.mpp,
                             roi=_slide_roi(slide, settings), quiet=True)
                try:
                    summ = run_fn(slide.path, out, st, client=cl, progress=progress.add_tiles)
                    row = _row_from_summary(slide, out, DONE, summ, why)
                    m = _morph_row(slide, out, summ, progress)
                    err = None
                except Exception as e:  # noqa: BLE001 - a broken slide fails alone
                    err = e
                if stop.is_set():
                    return  # interrupted: the slide stays pending, its finished tiles stay spooled
                with progress.lock:
                    progress.running -= 1
                    progress.counts[FAILED if err else DONE] += 1
                if err is not None:
                    row = {**_pending_row(slide, out), "status": FAILED, "reason": _reason(err),
                           "finished_at": _now()}
                    where = "" if str(slide.path) in row["reason"] else f"{slide.path}: "
                    progress.message(f"wsi-nuc batch: failed: {where}{row['reason']}")
                    if debug and not isinstance(err, InputError):
                        import traceback

                        traceback.print_exception(err, file=stream)
                with lock:
                    rows[slide.stem] = row
                    if err is None:
                        morph[slide.stem] = m
                    else:
                        morph.pop(slide.stem, None)
                    state["dirty"] = True
                flush()

            pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="wsi-nuc-slide")
            futures = [pool.submit(one, s, why) for s, why in todo]
            try:
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()  # `one` records slide errors itself; anything here is a bug
                    flush()
                    progress.show(force=bool(done))
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                flush(True)
                progress.close()
                raise
            pool.shutdown(wait=True)
        flush(True)
        progress.close()
    return CohortResult([rows[s.stem] for s in cohort.slides], manifest, summary_path, time.perf_counter() - t0)


def _morph_row(slide: CohortSlide, out: Path, summary: dict, log) -> dict:
    row = {"slide": slide.stem, "nucleus_count": summary.get("nucleus_count"),
           "tissue_area_mm2": summary.get("tissue_area_mm2"), "nuclei_per_mm2": summary.get("nuclei_per_mm2")}
    try:
        row.update(slide_morphometry(out / slide.stem / "nuclei.csv"))
    except (OSError, ValueError, csv.Error) as e:
        msg = f"wsi-nuc batch: {slide.stem}: morphometry summary skipped ({_reason(e)})"
        (log.message(msg) if hasattr(log, "message") else print(msg, file=log))
    return row
