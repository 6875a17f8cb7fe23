"""The cohort table of a Snakemake run: one row a slide, as `wsi-nuc batch` writes cohort_summary.csv
(count, tissue, density, median/quartiles/IQR of area, circularity and haematoxylin OD from nuclei.csv or
nuclei.parquet, per-type counts/densities/fractions when typed), plus the sheet's other columns.

Run by Snakemake (``snakemake.input``: the slides' summary copies), or by hand:
``python cohort_table.py SHEET.csv OUT`` (every slide of the sheet that has OUT/<stem>/summary.json).
"""

import csv
import json
import sys
from pathlib import Path

from wsi_nuc.cohort.manifest import SUMMARY_COLUMNS, TYPE_COLUMNS, slide_morphometry, slide_table, type_columns
from wsi_nuc.ownership import slide_stem
from wsi_nuc.writers.table import write_csv


def cohort_rows(sheet, out):
    with open(sheet, newline="", encoding="utf-8") as fh:
        sheet_rows = [r for r in csv.DictReader(fh) if (r.get("path") or "").strip()]
    rows, typed = [], False
    for r in sheet_rows:
        stem = slide_stem(r["path"].strip())
        folder = out / stem
        summary = json.loads((folder / "summary.json").read_text())
        row = {"slide": stem, "nucleus_count": summary.get("nucleus_count"),
               "tissue_area_mm2": summary.get("tissue_area_mm2"), "nuclei_per_mm2": summary.get("nuclei_per_mm2")}
        row.update(slide_morphometry(slide_table(folder)))
        types = type_columns(summary)
        typed = typed or bool(types)
        row.update(types)
        row.update({k: v for k, v in r.items() if k not in ("path", "mpp", "roi", "roi_class") and k not in row})
        rows.append(row)
    carried = [k for k in (sheet_rows[0] if sheet_rows else {}) if k not in ("path", "mpp", "roi", "roi_class")]
    columns = list(SUMMARY_COLUMNS) + (TYPE_COLUMNS if typed else []) + [c for c in carried if c not in SUMMARY_COLUMNS]
    return columns, rows


def main(sheet: str, out: str, target: str) -> None:
    columns, rows = cohort_rows(Path(sheet), Path(out))
    write_csv(Path(target), columns, rows)


if __name__ == "__main__":
    if "snakemake" in globals():
        main(snakemake.params.sheet, snakemake.params.out, snakemake.output[0])  # noqa: F821
    else:
        main(sys.argv[1], sys.argv[2], str(Path(sys.argv[2]) / "cohort_summary.csv"))
