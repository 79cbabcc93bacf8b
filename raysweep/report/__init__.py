"""The report of a store: fit every curve, write report.md (summary first), fits.csv/parquet/json, plots.

    report.write(results_dir, out_dir, n_boot=1000, holdout=False, target_eu=0.01, workers=1)

    curves.py   the curves of a store and their fits (laws, selection, bootstraps, holdouts)
    tables.py   rows for fits.csv, the summary, holdout coverage, what was left out
    plots.py    small multiples: one panel per (split, method), sizes as colours
    members.py  the sub-ensemble section: EU(m) against the (m-1)/m of i.i.d. draws (grid.members rows)
    writing.py  report.md: summary, figures, fitting checklist, appendix; the terminal table

No task registry, no torch: N's unit comes from the store's n_unit column.
"""

from raysweep.report.curves import CURVE_ID, Curve, curves, fit_all, fit_curves
from raysweep.report.plots import x_label
from raysweep.report.tables import fits_frame, summary
from raysweep.report.writing import table, write

__all__ = ["CURVE_ID", "Curve", "curves", "fit_all", "fit_curves", "fits_frame", "summary", "table", "write", "x_label"]
