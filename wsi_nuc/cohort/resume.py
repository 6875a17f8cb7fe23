"""Resume: which slides of an earlier run of this cohort are finished with these settings (and are skipped), and
the tables a run starts from."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .inputs import Cohort, CohortSlide
from .manifest import DONE, MANIFEST, SKIPPED, SUMMARY, SUMMARY_COLUMNS, TYPE_COLUMNS, Tables, _morph_row, _pending_row, _row_from_summary, read_rows

from ..run_context import changed_settings


def finished_summary(slide: CohortSlide, out: Path, prev: dict | None, settings, model_dir: Path,
                     ) -> tuple[dict | None, str]:
    """(summary, "") when the slide is verifiably finished with these settings, else (None, why not)."""
    from ..pipeline import is_complete

    if prev is None or prev.get("status") not in (DONE, SKIPPED):
        return None, ""
    if os.path.normpath(prev.get("path") or "") != os.path.normpath(str(slide.path)):
        return None, "redone: the cohort points this slide name at another file"
    folder = out / slide.stem
    if not is_complete(folder):
        return None, "redone: its outputs were incomplete"
    from ..json_in import read_json_or_none

    summary = read_json_or_none(folder / "summary.json")
    if not isinstance(summary, dict):
        return None, "redone: its summary.json was unreadable"
    from ..ownership import read_marker, same_slide, slide_identity

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


def slide_settings(slide: CohortSlide, settings):
    """The settings one slide of the cohort runs with: its own mpp (CSV column) and region, quiet."""
    from dataclasses import replace

    return replace(settings, mpp=slide.mpp if slide.mpp is not None else settings.mpp,
                   roi=_slide_roi(slide, settings), quiet=True)


def _changed_settings(summary: dict, settings, slide: CohortSlide, model_dir: Path) -> list[str]:
    changed = changed_settings(summary.get("settings") or {}, slide_settings(slide, settings))
    old_model = (summary.get("model") or {}).get("path")
    if old_model and os.path.abspath(old_model) != os.path.abspath(model_dir):
        changed.append("model")
    return changed


def plan(cohort: Cohort, out: Path, settings, model_dir: Path, force: bool, log,
         ) -> tuple[Tables, list[tuple[CohortSlide, str]]]:
    """The tables this run starts from (finished slides skipped, the rest pending) and the slides to run, each
    with why it is redone ("" when it simply was not finished)."""
    prev, prev_morph = read_rows(out / MANIFEST), read_rows(out / SUMMARY)
    tables = Tables(cohort, out / MANIFEST, out / SUMMARY)
    todo = []
    for s in cohort.slides:
        summ, why = (None, "") if force else finished_summary(s, out, prev.get(s.stem), settings, model_dir)
        if summ is None:
            tables.rows[s.stem] = _pending_row(s, out)
            todo.append((s, why))
            continue
        tables.rows[s.stem] = {**_row_from_summary(s, out, SKIPPED, summ, "already done"),
                               "finished_at": prev[s.stem].get("finished_at", "")}
        old = prev_morph.get(s.stem)
        if old and str(old.get("nucleus_count")) == str(summ.get("nucleus_count")):
            tables.morph[s.stem] = {k: old.get(k) for k in SUMMARY_COLUMNS + TYPE_COLUMNS}
        else:
            tables.morph[s.stem] = _morph_row(s, out, summ, log)
    return tables, todo
